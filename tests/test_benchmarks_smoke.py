"""Every benchmark runs end to end with --quick (tiny sizes, one repetition) and prints its goal table.

A smoke test, not a measurement: the numbers of a --quick run mean nothing (docs/benchmarks.md has
the real ones). One after the other: each is mostly start-up, about a minute and a half for all seven.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, NnunetEnv

pytestmark = pytest.mark.nnunet

BENCHMARKS = (
    "write_throughput",
    "checkpoint_stall",
    "signal_latency",
    "resume_startup",
    "interruptions",
    "throughput",
    "cpu_sharing",
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_quick(name: str, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--quick", "--workdir", str(tmp_path)],
        env=nnunet_env.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "goal" in result.stdout and "|---" in result.stdout, result.stdout[-3000:]  # the goal table
