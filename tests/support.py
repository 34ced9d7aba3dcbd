"""Test helpers shared by every test module (test modules never import each other)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import pytest
from conftest import TINY_TRAINING, NnunetEnv, nnslurm

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll `probe` until it returns something truthy (returned); fail naming `what` after `timeout` s.

    Tests wait for events, never for durations: a slower, busier machine only takes longer."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Output:
    """A child process's output, read as it comes (a thread), so a test can wait for what it printed."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in iter(stream.readline, ""):
            with self._lock:
                self._lines.append(line)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def rest(self, timeout: float = 30) -> str:
        """Everything, once the stream has closed (the process ended)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the output did not end within {timeout:.0f} s"
        return self.text


# --- SLURM at the subprocess seam -------------------------------------------------------------------


@dataclass
class FakeCluster:
    """A runner (nnslurm.slurm.commands.use_runner) that answers SLURM commands from a script
    and records every command line. A command is answered by the longest key it starts with."""

    answers: dict[str, list[str]] = field(default_factory=dict)  # "scontrol show" -> stdout per call
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)  # "scontrol requeue" -> (rc, stderr)
    missing: bool = False  # SLURM not installed: every command is "not found"
    calls: list[list[str]] = field(default_factory=list)

    @classmethod
    def queue(cls, squeue: str = "", sacct: str = "") -> FakeCluster:
        """squeue and sacct answer the same each time (`nnslurm status`); scancel succeeds."""
        return cls(answers={"squeue": [squeue], "sacct": [sacct]})

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        assert timeout > 0
        self.calls.append(argv)
        if self.missing:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        line = " ".join(argv)
        failure = self._match(self.fail, line)
        if failure is not None:
            rc, stderr = failure
            return subprocess.CompletedProcess(argv, rc, "", stderr)
        queue = self._match(self.answers, line) or [""]
        stdout = queue.pop(0) if len(queue) > 1 else queue[0]  # the last answer repeats
        return subprocess.CompletedProcess(argv, 0, stdout, "")

    def ran(self, prefix: str) -> list[list[str]]:
        return [call for call in self.calls if " ".join(call).startswith(prefix)]

    @staticmethod
    def _match(table: dict[str, T], line: str) -> T | None:
        keys = [key for key in table if line == key or line.startswith(key + " ")]
        return table[max(keys, key=len)] if keys else None


# --- event logs as jobs on other nodes would have written them ---------------------------------------


def write_log(folder: Path, records: list[dict]) -> Path:
    """An event log as jobs on other nodes would have written it (times relative to now)."""
    now = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"host": "node7", "pid": 100, **record, "time": now + record["time"]})
        for record in records
    ]
    (folder / "nnslurm_events.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def started(job: str | None, t: float, epoch: int = 0, iteration: int = 0, pid: int = 100) -> list[dict]:
    fields = {"job_id": job, "pid": pid, "epoch": epoch, "iteration": iteration}
    records = [{"event": "resumed", "time": t, **fields}] if (epoch, iteration) != (0, 0) else []
    return [
        *records,
        {"event": "started", "time": t, **fields, "num_epochs": 10, "iterations_per_epoch": 100},
    ]


def stop(
    job: str, t: float, epoch: int, iteration: int, kind: str, pid: int = 100, **decision: object
) -> list[dict]:
    at = {"job_id": job, "pid": pid, "epoch": epoch, "iteration": iteration}
    return [
        {"event": "signal", "time": t, "signal": "USR1", **at},
        {"event": "checkpoint", "time": t, "path": "checkpoint_latest.pth", "reason": "stop", **at},
        {"event": "stopped", "time": t, "signal": "USR1", **at},
        {"event": "decision", "time": t, "kind": kind, "reason": f"evidence for {kind}", **at, **decision},
    ]


# --- one real interrupted run per session -------------------------------------------------------------

SIGNAL_TRAINER = ["-tr", "signal_trainers:nnUNetTrainerSignals"]
INTERRUPTED_ARGS = ["train", *TINY_TRAINING, *SIGNAL_TRAINER, "--no-final-validation"]
# One start per entry: (NNSLURM_TEST_SIGNALS, NNSLURM_TEST_SIGNAL, expected exit status).
STARTS = [("0:2", "USR1", 75), ("1:3", "KILL", -signal.SIGKILL), ("", "USR1", 0)]
_BUILT: dict[str, tuple[NnunetEnv, Path]] = {}


def build_interrupted_run(
    synthetic_dataset: tuple[Path, Path], factory: pytest.TempPathFactory
) -> tuple[NnunetEnv, Path]:
    """A real tiny run: stopped by USR1, killed by SIGKILL mid-epoch, finished.

    Built once per test session (test_status.py and test_report.py read it)."""
    if "run" in _BUILT:
        return _BUILT["run"]
    raw, preprocessed = synthetic_dataset
    base = factory.mktemp("interrupted")
    env = NnunetEnv(raw, preprocessed, base / "results")
    env.results.mkdir()
    for number, (points, name, expected) in enumerate(STARTS):
        extra = {
            "NNSLURM_TEST_SIGNALS": points,
            "NNSLURM_TEST_SIGNAL": name,
            "NNSLURM_TEST_SIGNAL_STATE": str(base / f"fired-{number}"),
            "nnUNet_n_proc_DA": "0",
        }
        result = nnslurm(INTERRUPTED_ARGS, env.env(**extra))
        assert result.returncode == expected, result.stderr[-3000:]
    _BUILT["run"] = (env, env.run_folder("nnUNetTrainerSignals"))
    return _BUILT["run"]


# --- runs of the real CLI (test_resume, test_faults) ---------------------------------------------

SIGNAL_TRAINER = ["-tr", "signal_trainers:nnUNetTrainerSignals"]


def train_until_finished(env: dict[str, str], args: list[str], max_starts: int = 8) -> list[int]:
    """Start `nnslurm train` again after every exit 75, like a requeue; returns the exit codes."""
    import pytest
    from conftest import nnslurm

    codes = []
    for _ in range(max_starts):
        result = nnslurm(["train", *args], env)
        codes.append(result.returncode)
        assert result.returncode in (0, 75), result.stderr[-4000:]
        if result.returncode == 0:
            return codes
    pytest.fail(f"not finished after {max_starts} starts: {codes}")


def stops_and_resumes(run_folder: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    from conftest import read_events

    events = read_events(run_folder)
    stopped = [(e["epoch"], e["iteration"]) for e in events if e["event"] == "stopped"]
    resumed = [(e["epoch"], e["iteration"]) for e in events if e["event"] == "resumed"]
    return stopped, resumed


def processes_with_marker(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (a trainer and its workers, found after a stop)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def folder_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`: "nothing written, nothing changed" is equality of two."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
