"""The one stop path (training/stoppable.py, jobs/base.py): how a stopped process leaves, the import-
time exit, submitit's handler handing over, and the one requeue authority. Real processes and signals,
no nnU-Net training."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import submitit
from submitit.core.job_environment import SignalHandler
from submitit.local.local import LocalJobEnvironment
from support import REPO, read_events

from nnslurm import EXIT_RESUMABLE
from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.core.errors import RequeueLimitReached
from nnslurm.core.executor import Executor
from nnslurm.jobs.submitit_insides import LOCAL_REQUEUE_EXIT
from nnslurm.jobs.training_job import TrainingJob
from nnslurm.scheduler.policy import LOCAL_MAX_REQUEUES, requeue_cap
from nnslurm.training.stoppable import exit_process, run_stoppable


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_exit_in_the_main_thread_is_system_exit() -> None:
    """finally blocks run, and submitit's process_job (which catches Exception) writes no result."""
    with pytest.raises(SystemExit) as caught:
        exit_process(LOCAL_REQUEUE_EXIT)
    assert caught.value.code == 144
    assert not isinstance(caught.value, Exception)


def test_exit_from_another_thread_ends_the_process() -> None:
    """The watchdog's exit: SystemExit would end only its thread; the process must go, at once."""
    result = run_python(
        """
        import threading, time
        from nnslurm.training.stoppable import exit_process, run_stoppable
        threading.Thread(target=exit_process, args=(144,)).start()
        time.sleep(30)
        print("still alive")
        """
    )
    assert result.returncode == 144, result.stderr
    assert "still alive" not in result.stdout


def test_signal_while_importing_exits_resumable_without_deciding() -> None:
    """A stop whose deadline passes while the main thread still imports torch and nnU-Net (here: an
    import of nnslurm.training.process that takes 60 s) exits 75 at the deadline, saying so."""
    result = run_python(
        """
        import logging, os, signal, sys, time
        logging.basicConfig(level=logging.INFO)

        class SlowTraining:  # stands in for the seconds that torch and nnU-Net take to import
            def find_spec(self, name, path=None, target=None):
                if name == "nnslurm.training.process":
                    os.kill(os.getpid(), signal.SIGUSR1)  # the handlers are in: we are inside them
                    time.sleep(60)
                return None

        sys.meta_path.insert(0, SlowTraining())
        from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
        from nnslurm.training.stoppable import run_stoppable
        run_stoppable(TrainJob(RunSpec("501"), TrainingOptions(stop_deadline_s=0.5)))
        """
    )
    assert result.returncode == EXIT_RESUMABLE, result.stderr
    assert "SIGUSR1 during start-up (imports): nothing to save yet; exiting resumable" in result.stderr


@dataclass(frozen=True)
class FakeOutcome:
    status: str
    output_folder: Path = Path("run")

    def stopped(self) -> FakeOutcome:  # TrainingOutcome.stopped: what after_stop is given
        return self


def fake_training(monkeypatch: pytest.MonkeyPatch, status: str) -> None:
    """nnslurm.training.process without nnU-Net: run_training returns at once with `status`."""
    module = types.ModuleType("nnslurm.training.process")
    module.run_training = lambda job, monitor, on_run_folder=None: FakeOutcome(status)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nnslurm.training.process", module)


def test_a_stop_leaves_with_the_status_after_stop_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_training(monkeypatch, "stopped")
    seen: list[object] = []
    with pytest.raises(SystemExit) as caught:
        run_stoppable(TrainJob(RunSpec("501")), after_stop=lambda outcome: seen.append(outcome) or 144)
    assert caught.value.code == 144 and seen == [FakeOutcome("stopped")]
    with pytest.raises(SystemExit) as caught:
        run_stoppable(TrainJob(RunSpec("501")))
    assert caught.value.code == EXIT_RESUMABLE


def test_an_error_after_the_stop_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """RequeueLimitReached in the main thread: the CLI prints it (exit 1), submitit records it."""
    fake_training(monkeypatch, "stopped")

    def limit_reached(outcome: object) -> int:
        raise RequeueLimitReached("used up")

    with pytest.raises(RequeueLimitReached):
        run_stoppable(TrainJob(RunSpec("501")), after_stop=limit_reached)


def test_a_stop_signal_after_training_finished_is_ignored() -> None:
    """The walltime warning a second after the last iteration must not kill a finished process."""
    result = run_python(
        """
        import os, signal, sys, types
        from nnslurm.core.config import RunSpec, TrainJob
        from nnslurm.training.stoppable import run_stoppable

        class Finished:
            status, output_folder = "finished", "run"

        training = types.ModuleType("nnslurm.training.process")
        training.run_training = lambda job, monitor, on_run_folder=None: Finished()
        sys.modules["nnslurm.training.process"] = training
        run_stoppable(TrainJob(RunSpec("501")))
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
            os.kill(os.getpid(), sig)
        print("alive")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "alive"


@pytest.fixture
def run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the run's events go; submitit's local executor as far as the job can tell."""
    results = tmp_path / "results"
    (results / "Dataset501_Synthetic").mkdir(parents=True)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_results", str(results))
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "NNSLURM_WARNING_SIGNAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4711")
    return results / "Dataset501_Synthetic" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"


def test_submitit_handler_hands_over_and_the_event_log_counts(run_folder: Path) -> None:
    """submitit's own handler (a signal just before or after training) calls checkpoint(): nnslurm's
    stop path decides by evidence, requeues through the local exit status, and counts the requeue
    in the event log, so its cap, not submitit's countdown, ends the job."""
    job = TrainingJob(TrainJob(RunSpec("Dataset501_Synthetic"), TrainingOptions(max_requeues=2)))
    for _ in range(2):
        with pytest.raises(SystemExit) as caught:
            job.checkpoint()
        assert caught.value.code == LOCAL_REQUEUE_EXIT
    with pytest.raises(RequeueLimitReached):
        job.checkpoint()
    events = read_events(run_folder)
    requeues = [e for e in events if e["event"] == "requeued"]
    assert [(r["by"], r["reason"], r["job_id"]) for r in requeues] == [
        ("nnslurm", "walltime", "local-4711")
    ] * 2
    assert [e["kind"] for e in events if e["event"] == "decision"] == [
        "walltime",
        "walltime",
        "requeue-limit",
    ]


def test_submitits_countdown_never_decides(run_folder: Path, tmp_path: Path) -> None:
    """submitit's real handler, with its countdown used up (it would refuse to requeue): the job's
    checkpoint() takes over, and the event log's cap (2 left) requeues it."""
    job = TrainingJob(TrainJob(RunSpec("Dataset501_Synthetic"), TrainingOptions(max_requeues=2)))
    delayed = submitit.helpers.DelayedSubmission(job)
    delayed.set_timeout(timeout_min=60, max_num_timeout=-1)  # submitit: "timed-out too many times"
    paths = submitit.core.utils.JobPaths(tmp_path / "submitit", job_id="4711")
    paths.folder.mkdir()
    handler = SignalHandler(LocalJobEnvironment(), paths, delayed)
    with pytest.raises(SystemExit) as caught:
        handler.checkpoint_and_try_requeue(signal.SIGUSR2)
    assert caught.value.code == LOCAL_REQUEUE_EXIT
    assert [e["by"] for e in read_events(run_folder) if e["event"] == "requeued"] == ["nnslurm"]


def test_local_executor_clamps_the_cap_to_its_controller(run_folder: Path) -> None:
    """--max-requeues 20 on the local executor: its controller starts a job 6 times, so 5 requeues."""
    job = TrainingJob(TrainJob(RunSpec("Dataset501_Synthetic"), TrainingOptions(max_requeues=20)))
    for _ in range(LOCAL_MAX_REQUEUES):
        with pytest.raises(SystemExit):
            job.checkpoint()
    with pytest.raises(RequeueLimitReached):
        job.checkpoint()
    assert requeue_cap(20, Executor.LOCAL) == 5 and requeue_cap(20, Executor.SLURM) == 20
    assert requeue_cap(3, Executor.LOCAL) == 3
    assert requeue_cap(20, None) == 20  # started by hand: nothing restarts it, nothing clamps


# The submitit facts the requeue relies on (144, at most 6 starts): tests/test_submitit_insides.py.
