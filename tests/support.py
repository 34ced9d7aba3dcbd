"""Test helpers shared by every test module: plain functions and constants. Fixtures live in
tests/conftest.py, the real cluster's helpers in tests/slurm/tools.py; test modules import this
module, never conftest, and never each other."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn, TypeVar

import pytest

from nnslurm.commands.synthetic import PACED_TRAINER, TINY_PLANS

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# A few seconds of real nnU-Net training on a CPU: 3 epochs x 5 iterations, 2 validation steps.
TINY_TRAINING = [
    "-d", "501", "-f", "0", "-p", TINY_PLANS,
    "--epochs", "3", "--iterations-per-epoch", "5", "--val-iterations-per-epoch", "2",
    "--device", "cpu",
]  # fmt: skip
# nnU-Net's trainer with a floor per training iteration (NNSLURM_MIN_ITERATION_S, default 0.15 s):
# a training a test must interrupt mid-run, however fast the machine (nnslurm/commands/synthetic.py).
PACED = ["-tr", PACED_TRAINER]
# nnU-Net's trainer raising real signals at chosen points of its loop (tests/signal_trainers.py).
SIGNAL_TRAINER = ["-tr", "signal_trainers:nnUNetTrainerSignals"]

# Every limit on time in the tests is this many times what an idle machine needs (a busier one, such
# as CI's with the SLURM jobs beside the other tests, only takes longer); a run that goes well never
# waits longer for it. NNSLURM_TEST_PATIENCE=10 on a slow machine.
PATIENCE_ENV = "NNSLURM_TEST_PATIENCE"
DEFAULT_PATIENCE = 3.0


def patience(seconds: float) -> float:
    """A limit of `seconds` on an idle machine, scaled by the patience factor (NNSLURM_TEST_PATIENCE)."""
    return seconds * float(os.environ.get(PATIENCE_ENV) or DEFAULT_PATIENCE)


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


# --- the real CLI and its run folders ---------------------------------------------------------------


def _caller_path() -> list[str]:
    return [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []


@dataclass(frozen=True)
class NnunetEnv:
    """nnUNet_raw/_preprocessed with dataset 501 built; each test gets its own nnUNet_results."""

    raw: Path
    preprocessed: Path
    results: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(self.raw),
            nnUNet_preprocessed=str(self.preprocessed),
            nnUNet_results=str(self.results),
            nnUNet_def_n_proc="1",  # final validation of tiny cases: 9 s instead of 38 s
            nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "2"),
            # what the caller put on the path stays (make test-oldest: nnU-Net 2.6 over .venv's)
            PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO), *_caller_path()]),
        )
        env.update(extra)
        return env

    def run_folder(self, trainer: str = "nnUNetTrainer", fold: str = "0", plans: str = TINY_PLANS) -> Path:
        return self.results / "Dataset501_Synthetic" / f"{trainer}__{plans}__3d_fullres" / f"fold_{fold}"


def nnslurm(
    args: list[str], env: dict[str, str], timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process, as a user (or an sbatch script) would (default limit:
    patience(100) s)."""
    return subprocess.run(
        [sys.executable, "-m", "nnslurm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=patience(100) if timeout is None else timeout,
    )


def read_events(run_folder: Path) -> list[dict]:
    """The event log as the test reads it (its own reading, not nnslurm's)."""
    path = run_folder / "nnslurm_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events_of(run_folder: Path, kind: str) -> list[dict]:
    """Every record of this kind in the run's event log, oldest first."""
    return [record for record in read_events(run_folder) if record["event"] == kind]


def last_event(run_folder: Path, kind: str) -> dict | None:
    """The newest record of this kind in the run's event log; None before there is one."""
    if not (run_folder / "nnslurm_events.jsonl").is_file():
        return None
    found = events_of(run_folder, kind)
    return found[-1] if found else None


def the_only_run_status(env: dict[str, str]) -> dict:
    """`nnslurm status --json`'s one run."""
    result = nnslurm(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    return run


def ctrl_c_as_at_a_terminal() -> None:
    """SIGINT back to its default: a shell without job control (`cmd &` in a script, nohup) starts
    commands with SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_on_a_terminal(
    args: list[str],
    env: dict[str, str],
    *,
    stderr_too: bool = True,
    interrupt_when: Callable[[str], bool] | None = None,
    timeout: float | None = None,
) -> tuple[int, str]:
    """The real CLI with stdout (and stderr) on a pseudo-terminal, as a user at a shell sees it,
    Ctrl-C (SIGINT) once what it printed satisfies `interrupt_when` (an event, not a duration);
    returns (exit status, what it printed)."""
    limit = patience(100) if timeout is None else timeout
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "nnslurm", *args],
        env=env,
        stdout=follower,
        stderr=follower if stderr_too else subprocess.DEVNULL,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    os.close(follower)
    started, chunks = time.monotonic(), []
    while time.monotonic() - started < limit:
        if interrupt_when is not None and interrupt_when(b"".join(chunks).decode(errors="replace")):
            process.send_signal(signal.SIGINT)
            interrupt_when = None
        ready, _, _ = select.select([leader], [], [], 0.2)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout=patience(20)), b"".join(chunks).decode(errors="replace")


CI_ENV = "NNSLURM_CI"  # .ci/run: every skipped test is a failure (tests/conftest.py)
REQUIRE_SLURM_ENV = "NNSLURM_REQUIRE_SLURM"  # .ci/run: the SLURM tests are mandatory


def skip_unless_required(reason: str) -> NoReturn:
    """Skip with `reason`, or fail where NNSLURM_REQUIRE_SLURM=1 (CI): the SLURM tests are mandatory there."""
    if os.environ.get(REQUIRE_SLURM_ENV) == "1":
        pytest.fail(f"{REQUIRE_SLURM_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason=reason)


# --- one real interrupted run per session -------------------------------------------------------------

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


def train_until_finished(env: dict[str, str], args: list[str], max_starts: int = 8) -> list[int]:
    """Start `nnslurm train` again after every exit 75, like a requeue; returns the exit codes."""
    codes = []
    for _ in range(max_starts):
        result = nnslurm(["train", *args], env)
        codes.append(result.returncode)
        assert result.returncode in (0, 75), result.stderr[-4000:]
        if result.returncode == 0:
            return codes
    pytest.fail(f"not finished after {max_starts} starts: {codes}")


def stops_and_resumes(run_folder: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    events = read_events(run_folder)
    stopped = [(e["epoch"], e["iteration"]) for e in events if e["event"] == "stopped"]
    resumed = [(e["epoch"], e["iteration"]) for e in events if e["event"] == "resumed"]
    return stopped, resumed


def final_weights(run_folder: Path) -> dict:
    """checkpoint_final.pth's network weights (tensors), for a bitwise comparison of two runs."""
    import torch  # here: most test modules never need it

    checkpoint = torch.load(run_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return checkpoint["network_weights"]


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


# --- nnU-Net's own trainer variants stopped and resumed (tests/test_trainer_variants*.py) -------------

VARIANT_ITERATIONS = 4
VARIANT_RUN = [
    "-d", "501", "-f", "0", "-p", TINY_PLANS, "--device", "cpu",
    "--iterations-per-epoch", str(VARIANT_ITERATIONS), "--val-iterations-per-epoch", "1",
    "--deterministic", "--no-final-validation",
]  # fmt: skip
# mid-epoch in epoch 0, and in epoch 1 (after an epoch end: its schedule step, its checkpoints);
# a signal lands at an iteration and the stop comes at the next boundary
VARIANT_POINTS = "0:2,1:1"
VARIANT_STOPPED_AT = [(0, 3), (1, 2)]


def variant_stopped_twice_ends_bitwise_equal(
    variant: str, epochs: int | None, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """nnU-Net's trainer `variant` (with tests/signal_trainers.py's signal points laid over it) trained
    never stopped, and stopped twice by real signals and resumed: the same final weights, bitwise."""
    from signal_trainers import VARIANT_PREFIX  # here: it imports torch and nnU-Net

    trainer = VARIANT_PREFIX + variant
    args = [*VARIANT_RUN, "-tr", f"signal_trainers:{trainer}", *(["--epochs", str(epochs)] if epochs else [])]
    reference = NnunetEnv(nnunet_env.raw, nnunet_env.preprocessed, tmp_path / "reference")
    reference.results.mkdir()
    assert train_until_finished(reference.env(nnUNet_n_proc_DA="0"), args) == [0]

    env = nnunet_env.env(
        nnUNet_n_proc_DA="0",
        NNSLURM_TEST_SIGNALS=VARIANT_POINTS,
        NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"),
    )
    assert train_until_finished(env, args) == [75, 75, 0]  # a variant that cannot resume exits 1 here
    run_folder = nnunet_env.run_folder(trainer)
    stopped, resumed = stops_and_resumes(run_folder)
    assert stopped == VARIANT_STOPPED_AT
    assert resumed == stopped  # no iteration redone
    expected, actual = final_weights(reference.run_folder(trainer)), final_weights(run_folder)
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not expected[key].equal(actual[key])]
    assert not different, f"{variant}: weights differ after two stops: {different[:5]}"
