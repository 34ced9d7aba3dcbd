"""Every benchmark runs end to end with --quick (tiny sizes, one repetition): a smoke test, not a timing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, NnunetEnv

pytestmark = pytest.mark.nnunet

BENCHMARKS = (
    "throughput",
    "checkpoint_stall",
    "signal_latency",
    "resume_startup",
    "interruptions",
    "write_throughput",
)


def test_every_benchmark_runs_quick(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    # All at once: each is mostly interpreter start-up and imports, so together they take about
    # as long as the slowest.
    started = time.monotonic()
    processes = {}
    for name in BENCHMARKS:
        log = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115  # closed below
        command = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--quick", "--workdir"]
        processes[name] = (
            subprocess.Popen(
                [*command, str(tmp_path / name)],
                env=nnunet_env.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    failures = []
    for name, (process, log) in processes.items():
        try:
            code = process.wait(timeout=max(1.0, 240 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            code = "timeout"
        log.close()
        output = (tmp_path / f"{name}.out").read_text()
        if code != 0 or "goal" not in output:
            failures.append(f"{name}: exit {code}\n{output[-3000:]}")
    assert not failures, "\n\n".join(failures)
