"""Fixtures and hooks: one real synthetic nnU-Net dataset per test session, a run folder per test,
a SLURM job's environment, the worker pinning of scripts/run-tests, and CI's rule that a skipped
test is a failure. Plain helpers live in tests/support.py: test modules import that, not this."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

# TINY_PLANS, last_event, nnslurm, skip_unless_required, the_only_run_status: tests/slurm/ still
# import them from here; support.py is their home (no test module imports conftest).
from support import (  # noqa: F401
    CI_ENV,
    TINY_PLANS,
    NnunetEnv,
    build_interrupted_run,
    last_event,
    nnslurm,
    patience,
    skip_unless_required,
    the_only_run_status,
)

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


# --- CI: a skipped test is a failed one -----------------------------------------------------------


def _skip_reason(longrepr: object) -> str:
    """The reason of a skip report (pytest keeps (path, line, "Skipped: reason"))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_if_skipped_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under NNSLURM_CI=1 (.ci/run) a skip is made a failure that names the test and the reason: CI
    installs or starts what every test needs (root, wandb, setuptools, the cluster), so a skip
    there means a test that did not run, and a green CI that did not check it."""
    if os.environ.get(CI_ENV) != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{CI_ENV}=1: {report.nodeid} was skipped ({reason}); under CI no test may skip"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    _fail_if_skipped_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None]:
    outcome = yield
    _fail_if_skipped_under_ci(outcome.get_result())


# --- the synthetic dataset and a run folder per test ---------------------------------------------


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
        timeout=patience(100),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return raw, preprocessed


@pytest.fixture
def nnunet_env(synthetic_dataset: tuple[Path, Path], tmp_path: Path) -> NnunetEnv:
    raw, preprocessed = synthetic_dataset
    results = tmp_path / "results"
    results.mkdir()
    return NnunetEnv(raw=raw, preprocessed=preprocessed, results=results)


@pytest.fixture
def interrupted_run(
    synthetic_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[NnunetEnv, Path]:
    """A real tiny run stopped by USR1, killed by SIGKILL mid-epoch, then finished (built once per
    session: support.build_interrupted_run)."""
    return build_interrupted_run(synthetic_dataset, tmp_path_factory)


# --- the process's environment ----------------------------------------------------------------------


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


@pytest.fixture
def in_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process is SLURM job 15 (not an array task, first start), submitted without nnslurm's
    --signal (no NNSLURM_WARNING_SIGNAL)."""
    for name in (
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "SUBMITIT_LOCAL_JOB_ID",
        "NNSLURM_WARNING_SIGNAL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "15")


@pytest.fixture
def in_nnslurm_job(in_job: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM job 15 as nnslurm submits it: its sbatch exports the --signal it asked for (USR1)."""
    monkeypatch.setenv("NNSLURM_WARNING_SIGNAL", "USR1")
