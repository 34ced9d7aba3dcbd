"""submitit's insides that nnslurm relies on (nnslurm/jobs/submitit_insides.py), each checked against
the installed submitit: a release that changes one fails here, naming the release and what moved."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import submitit
import submitit.core.submission
import submitit.slurm.slurm
from submitit.core import job_environment
from submitit.local import local as submitit_local

from nnslurm.jobs import submitit_insides
from nnslurm.jobs.submitit_insides import (
    CHECKED_WITH,
    LOCAL_REQUEUE_EXIT,
    PREEMPT_SIGNAL_ENV,
    submitit_command,
    submitit_sbatch_text,
)
from nnslurm.scheduler.policy import LOCAL_MAX_REQUEUES

# What nnslurm passes to _make_sbatch_string (nnslurm.jobs.submission.sbatch_parameters' keys).
SBATCH_PARAMETERS = {
    "command",
    "folder",
    "map_count",
    "job_name",
    "time",
    "signal_delay_s",
    "setup",
    "partition",
    "account",
    "qos",
    "gpus_per_node",
    "cpus_per_task",
    "mem",
    "constraint",
    "additional_parameters",
}


def moved(what: str) -> str:
    """The failure message: which submitit, what changed, where nnslurm says why it needs it."""
    return (
        f"submitit {submitit.__version__} (nnslurm was checked with {CHECKED_WITH}): {what}. "
        "nnslurm/jobs/submitit_insides.py says why nnslurm needs it: adapt it there, or pin "
        f"submitit=={CHECKED_WITH}."
    )


def test_the_sbatch_script_renders_without_submitting() -> None:
    """1. `_make_sbatch_string`: --dry-run's script, with the parameters nnslurm gives it."""
    make = getattr(submitit.slurm.slurm, "_make_sbatch_string", None)
    assert callable(make), moved("submitit.slurm.slurm._make_sbatch_string is gone")
    missing = SBATCH_PARAMETERS - set(inspect.signature(make).parameters)
    assert not missing, moved(f"_make_sbatch_string no longer takes {sorted(missing)}")
    text = make(command="python -m x", folder="/logs/%j", signal_delay_s=90)
    assert "#SBATCH --signal=USR2@90\n" in text, moved(
        "_make_sbatch_string no longer writes `#SBATCH --signal=USR2@<signal_delay_s>`, the line "
        "without_submitit_signal drops with --no-signal"
    )
    plain = submitit_sbatch_text("python -m x", Path("/logs/%j"), None, {"signal_delay_s": 90})
    assert "--signal" not in plain and "python -m x" in plain


def test_the_script_hook_is_where_nnslurm_overrides_it() -> None:
    """2. `SlurmExecutor._make_submission_file_text(command, uid)`: the override in SlurmExecutor."""
    hook = getattr(submitit.SlurmExecutor, "_make_submission_file_text", None)
    assert callable(hook), moved("SlurmExecutor._make_submission_file_text is gone")
    names = list(inspect.signature(hook).parameters)
    assert names == ["self", "command", "uid"], moved(
        f"SlurmExecutor._make_submission_file_text takes {names}, not (self, command, uid)"
    )
    assert "_make_sbatch_string" in inspect.getsource(hook), moved(
        "SlurmExecutor._make_submission_file_text no longer renders with _make_sbatch_string"
    )
    assert submitit_insides.SlurmExecutor._make_submission_file_text is not hook


def test_the_command_the_job_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """3. `SlurmExecutor._submitit_command_str`: what the dry-run script says the job runs."""
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # SlurmExecutor insists on srun
    executor = submitit.SlurmExecutor(folder=tmp_path / "%j", python="/opt/venv/bin/python")
    actual = getattr(executor, "_submitit_command_str", None)
    assert actual == submitit_command(tmp_path / "%j", "/opt/venv/bin/python"), moved(
        f"SlurmExecutor._submitit_command_str is {actual!r}"
    )


def test_the_variable_submitit_reads_its_signal_from() -> None:
    """4. `_PREEMPT_SIG_ENV`: nnslurm exports its warning signal there."""
    actual = getattr(job_environment, "_PREEMPT_SIG_ENV", None)
    assert actual == PREEMPT_SIGNAL_ENV, moved(
        f"submitit.core.job_environment._PREEMPT_SIG_ENV is {actual!r}, not {PREEMPT_SIGNAL_ENV!r}"
    )
    assert isinstance(getattr(submitit.JobEnvironment, "USR_SIG", None), str), moved(
        "JobEnvironment.USR_SIG (the checkpoint signal's name) is gone"
    )


def test_the_local_controller_restarts_on_144_at_most_6_times() -> None:
    """5. and 6.: the local controller restarts a job that exits 144, at most 6 starts in all
    (the first and LOCAL_MAX_REQUEUES restarts)."""
    code = getattr(submitit_local, "LOCAL_REQUEUE_RETURN_CODE", None)
    assert code == LOCAL_REQUEUE_EXIT == 144, moved(
        f"submitit.local.local.LOCAL_REQUEUE_RETURN_CODE is {code!r}, not {LOCAL_REQUEUE_EXIT}"
    )
    run = submitit_local.Controller.run
    max_retry = inspect.signature(run).parameters["max_retry"].default
    assert max_retry == LOCAL_MAX_REQUEUES + 1, moved(
        f"Controller.run(max_retry={max_retry}): a job starts at most {max_retry} times, but "
        f"nnslurm.scheduler.policy.LOCAL_MAX_REQUEUES is {LOCAL_MAX_REQUEUES}"
    )
    source = inspect.getsource(run)
    assert "LOCAL_REQUEUE_RETURN_CODE" in source and "range(max_retry)" in source, moved(
        "Controller.run no longer restarts a job on LOCAL_REQUEUE_RETURN_CODE, max_retry times"
    )


def test_a_job_that_leaves_with_system_exit_has_no_result() -> None:
    """7. process_job catches Exception only: a stopped job (SystemExit) writes no result pickle."""
    source = inspect.getsource(submitit.core.submission.process_job)
    assert "except Exception" in source and "except BaseException" not in source, moved(
        "submitit.core.submission.process_job no longer catches Exception only"
    )
