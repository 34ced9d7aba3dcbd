"""A node that goes down during training: SLURM requeues the job; the restart learns from sacct -D
that its previous start ended NODE_FAIL and the log and status say "node failure" (issue 12 item 3).
SLURM is the FakeCluster at the subprocess seam."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import FakeCluster, events_of, started, write_log

from nnslurm.core.config import TrainingOptions
from nnslurm.runs.interruptions import Kind
from nnslurm.runs.outcome import Stopped
from nnslurm.runs.status import run_status
from nnslurm.scheduler.after_stop import after_stop
from nnslurm.scheduler.restart import note_previous_end
from nnslurm.slurm import commands
from nnslurm.slurm.commands import parse_sacct_runs
from nnslurm.slurm.environment import SlurmEnvironment

RESTARTED = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "SLURM_RESTART_COUNT": "1"})
SACCT_D = "15|NODE_FAIL\n15|RUNNING\n"


def test_sacct_keeps_one_record_per_start() -> None:
    assert parse_sacct_runs(SACCT_D + "16|COMPLETED\n", "15") == ["NODE_FAIL", "RUNNING"]
    assert parse_sacct_runs("15|CANCELLED by 0\n", "15") == ["CANCELLED"]


def test_a_restart_after_a_node_failure_says_so(tmp_path: Path) -> None:
    log = [
        *started("15", -100),
        {"event": "checkpoint", "time": -60, "job_id": "15", "epoch": 1, "iteration": 0},
    ]
    folder = write_log(tmp_path / "run", log)
    fake = FakeCluster(answers={"sacct -D": [SACCT_D]})
    with commands.use_runner(fake):
        assert note_previous_end(folder, RESTARTED) == "NODE_FAIL"
    (told,) = events_of(folder, "interrupted")
    assert (told["kind"], told["accounting"], told["previous_restart_count"]) == (
        "node failure",
        "NODE_FAIL",
        0,
    )
    # The restart resumes from the checkpoint; status counts one node failure, not a kill.
    write_log(folder, [*log, {**told, "time": -5}, *started("15", -4, epoch=1, pid=200)])
    row = run_status(folder, scheduler={})
    assert row.interruptions[Kind.NODE_FAILURE] == 1 and row.interruptions[Kind.KILL] == 0


def test_a_kill_sacct_does_not_explain_stays_a_kill(tmp_path: Path) -> None:
    folder = write_log(tmp_path / "run", started("15", -100))
    with commands.use_runner(FakeCluster(answers={"sacct -D": ["15|REQUEUED\n15|RUNNING\n"]})):
        note_previous_end(folder, RESTARTED)
    (told,) = events_of(folder, "interrupted")
    assert told["kind"] == "kill" and "REQUEUED" in told["reason"]


def test_nothing_is_noted_after_a_recorded_stop_or_on_a_first_start(tmp_path: Path) -> None:
    folder = write_log(
        tmp_path / "run",
        [*started("15", -100), {"event": "stopped", "time": -50, "job_id": "15", "epoch": 0, "iteration": 3}],
    )
    fake = FakeCluster(answers={"sacct -D": [SACCT_D]})
    with commands.use_runner(fake):
        assert note_previous_end(folder, RESTARTED) is None
        assert note_previous_end(folder, SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15"})) is None
    assert fake.calls == [] and events_of(folder, "interrupted") == []


@pytest.mark.usefixtures("in_job")
def test_a_stop_on_a_failing_node_is_requeued_by_slurm_for_node_failure(tmp_path: Path) -> None:
    """The process got TERM and checkpointed; SLURM already requeued the job (Restarts=1) and sacct -D
    says this start ended NODE_FAIL: no requeue by nnslurm, the record says node failure."""
    line = "JobId=15 JobState=PENDING Reason=BeginTime Requeue=1 Restarts=1 Partition=low ExitCode=0:0\n"
    fake = FakeCluster(answers={"scontrol show job": [line], "sacct -D": ["15|NODE_FAIL\n15|PENDING\n"]})
    stopped = Stopped(folder=tmp_path, signal="TERM", epoch=1, iteration=9)
    with commands.use_runner(fake):
        decision = after_stop(stopped, TrainingOptions.max_requeues)
    assert decision.kind == "requeued" and fake.ran("scontrol requeue") == []
    (requeued,) = events_of(tmp_path, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("slurm", "node failure")
    assert events_of(tmp_path, "decision")[0]["accounting"] == "NODE_FAIL"
    row = run_status(tmp_path, scheduler={})
    assert row.interruptions[Kind.NODE_FAILURE] == 1 and "node failure" in row.detail
