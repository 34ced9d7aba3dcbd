"""Shared fixtures: one real synthetic nnU-Net dataset per test session, and a CLI runner."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TINY_PLANS = "nnslurmTinyPlans"
# A few seconds of real nnU-Net training on a CPU: 3 epochs x 5 iterations, 2 validation steps.
TINY_TRAINING = [
    "-d", "501", "-f", "0", "-p", TINY_PLANS,
    "--epochs", "3", "--iterations-per-epoch", "5", "--val-iterations-per-epoch", "2",
    "--device", "cpu",
]  # fmt: skip


def _caller_path() -> list[str]:
    return [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []


# scripts/run-tests sets this: each pytest-xdist worker trains on its own share of the cores.
PIN_WORKERS_ENV = "NNSLURM_PIN_TEST_WORKERS"


def pytest_configure(config: pytest.Config) -> None:
    """Pin this xdist worker (gw0, gw1, ...) to its share of the CPU affinity: trainings in two
    workers with a torch thread per core each on the same cores ran 4x slower than pinned apart
    (nnslurm/slurm/cpus.py); pinned, each training's torch threads follow its worker's cores."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker:  # xdist sets an 80x24 terminal in its workers; the CLI's output follows COLUMNS
        for name in ("COLUMNS", "LINES"):
            os.environ.pop(name, None)
    if os.environ.get(PIN_WORKERS_ENV) != "1" or not worker.startswith("gw"):
        return
    index, count = int(worker[2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0))
    share = cores[index * len(cores) // count : (index + 1) * len(cores) // count]
    os.sched_setaffinity(0, share or [cores[index % len(cores)]])


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


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Dataset501_Synthetic, written and preprocessed once per session by `nnslurm synthetic-dataset`."""
    base = tmp_path_factory.mktemp("nnunet")
    raw, preprocessed = base / "raw", base / "preprocessed"
    raw.mkdir()
    env = dict(
        os.environ,
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(preprocessed),
        nnUNet_results=str(base / "results"),
    )
    env.pop("nnUNet_n_proc_DA", None)
    result = subprocess.run(
        [sys.executable, "-m", "nnslurm", "synthetic-dataset", "--id", "501"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return raw, preprocessed


@pytest.fixture
def nnunet_env(synthetic_dataset: tuple[Path, Path], tmp_path: Path) -> NnunetEnv:
    raw, preprocessed = synthetic_dataset
    results = tmp_path / "results"
    results.mkdir()
    return NnunetEnv(raw=raw, preprocessed=preprocessed, results=results)


def nnslurm(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process, as a user (or an sbatch script) would."""
    return subprocess.run(
        [sys.executable, "-m", "nnslurm", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def read_events(run_folder: Path) -> list[dict]:
    path = run_folder / "nnslurm_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_event(run_folder: Path, kind: str) -> dict | None:
    """The newest record of this kind in the run's event log; None before there is one."""
    if not (run_folder / "nnslurm_events.jsonl").is_file():
        return None
    found = [record for record in read_events(run_folder) if record["event"] == kind]
    return found[-1] if found else None


def the_only_run_status(env: dict[str, str]) -> dict:
    """`nnslurm status --json`'s one run."""
    result = nnslurm(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    return run


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SLURM commands on the PATH (only python's folder); a fresh working folder, user config and
    nnUNet_results."""
    monkeypatch.setenv("PATH", os.path.dirname(shutil.which("python3") or "/usr/bin/python3"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))


@pytest.fixture
def clean_env() -> Iterator[None]:
    """Keep tests that set nnUNet_* in-process from leaking into each other."""
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
    timeout: float = 300,
) -> tuple[int, str]:
    """The real CLI with stdout (and stderr) on a pseudo-terminal, as a user at a shell sees it,
    Ctrl-C (SIGINT) once what it printed satisfies `interrupt_when` (an event, not a duration);
    returns (exit status, what it printed)."""
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
    while time.monotonic() - started < timeout:
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
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def skip_unless_required(reason: str) -> NoReturn:
    """Skip with `reason`, or fail where NNSLURM_REQUIRE_SLURM=1 (CI): the SLURM tests are mandatory there."""
    if os.environ.get("NNSLURM_REQUIRE_SLURM") == "1":
        pytest.fail(f"NNSLURM_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason=reason)
