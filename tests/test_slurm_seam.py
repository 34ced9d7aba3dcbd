"""The subprocess seam, scontrol parsing, and what a stop means — with scontrol lines recorded on
Slurm 22.05.8 at the moment each signal arrived (see the table in nnslurm/scheduler/policy.py)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pytest
from support import FakeCluster, events_of

from nnslurm.core.config import TrainingOptions
from nnslurm.core.errors import CommandError, RequeueLimitReached, SchedulerError
from nnslurm.runs.events import read_events
from nnslurm.runs.outcome import Stopped
from nnslurm.scheduler.after_stop import Clock, after_stop, wait_for_requeue
from nnslurm.scheduler.policy import StopEvidence, decide, self_requeues
from nnslurm.slurm import commands
from nnslurm.slurm.commands import JobInfo, parse_job_info
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.job_ids import submitted_event_id
from nnslurm.slurm.stop_kinds import StopKind

NOW = datetime(2026, 11, 30, 5, 6, 20)


def scontrol_line(**changes: str) -> str:
    """A real `scontrol show job -o` record (job 15 of the measurements), with fields changed."""
    fields = {
        "JobId": "15",
        "JobName": "nnslurm-501-3d_fullres-f0",
        "UserId": "root(0)",
        "GroupId": "root(0)",
        "MCS_label": "N/A",
        "Priority": "4294901745",
        "Nice": "0",
        "Account": "root",
        "QOS": "normal",
        "JobState": "RUNNING",
        "Reason": "None",
        "Dependency": "(null)",
        "Requeue": "1",
        "Restarts": "0",
        "BatchFlag": "1",
        "Reboot": "0",
        "ExitCode": "0:0",
        "RunTime": "00:00:11",
        "TimeLimit": "00:01:00",
        "TimeMin": "N/A",
        "SubmitTime": "2026-11-30T05:06:32",
        "EligibleTime": "2026-11-30T05:06:32",
        "AccrueTime": "2026-11-30T05:06:32",
        "StartTime": "2026-11-30T05:06:09",
        "EndTime": "2026-11-30T05:07:09",
        "Deadline": "N/A",
        "PreemptEligibleTime": "2026-11-30T05:06:33",
        "PreemptTime": "None",
        "SuspendTime": "None",
        "SecsPreSuspend": "0",
        "Partition": "low",
        "AllocNode:Sid": "localhost:4930",
        "NodeList": "vm",
        "BatchHost": "vm",
        "NumNodes": "1",
        "NumCPUs": "1",
        "CPUs/Task": "1",
        "ReqB:S:C:T": "0:0:*:*",
        "TRES": "cpu=1,node=1,billing=1",
        "Command": "/tmp/probe/srun.sbatch 200 TERM 2",
        "WorkDir": "/tmp/probe",
        "StdOut": "/tmp/x.out",
        "Power": "",
    }
    fields.update(changes)
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None) + "\n"


# The scontrol view at the moment of each signal, as measured (srun step; B:exec differs only in who gets it).
WALLTIME_WARNING = scontrol_line(RunTime="00:00:11")  # USR1 49 s before the limit
TIME_LIMIT = scontrol_line(JobState="COMPLETING", Reason="TimeLimit", ExitCode="0:15", RunTime="00:01:14")
PREEMPTED = scontrol_line(
    PreemptTime="2026-11-30T05:06:12", EndTime="2026-11-30T05:06:32", TimeLimit="00:05:00"
)
GRACE_END = scontrol_line(
    JobState="COMPLETING", Restarts="1", PreemptTime=None, StartTime="Unknown", EndTime="Unknown"
)
SCANCEL = scontrol_line(JobState="COMPLETING", ExitCode="0:15", EndTime="2026-11-30T05:06:19")
EXTERNAL_REQUEUE = scontrol_line(JobState="COMPLETING", Restarts="1", PreemptTime=None)


# --- the seam ----------------------------------------------------------------------------------


def test_command_not_found_says_what_to_install() -> None:
    with pytest.raises(CommandError) as caught:
        commands.run_command(["nnslurm-no-such-command-xyz", "show"])
    error = caught.value
    assert error.returncode == 127
    assert error.argv == ["nnslurm-no-such-command-xyz", "show"]
    assert "command not found" in str(error)
    assert "--executor local" in str(error) and "slurm-dev-cluster up" in str(error)


def test_non_zero_exit_keeps_command_status_and_output() -> None:
    argv = [
        sys.executable,
        "-c",
        "import sys; print('out'); print('slurm_load_jobs error: Invalid job id', file=sys.stderr); exit(1)",
    ]
    with pytest.raises(CommandError) as caught:
        commands.run_command(argv)
    error = caught.value
    assert (error.returncode, error.stdout.strip()) == (1, "out")
    assert "Invalid job id" in error.stderr
    assert "exited with status 1: slurm_load_jobs error: Invalid job id" in str(error)


def test_timeout_is_an_error_not_a_hang() -> None:
    with pytest.raises(CommandError) as caught:
        commands.run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.3)
    assert caught.value.returncode is None
    assert "timed out" in str(caught.value)
    assert "scontrol ping" in str(caught.value)


def test_unparsable_scontrol_output_shows_the_text() -> None:
    fake = FakeCluster(answers={"scontrol show": ["slurm_load_jobs: garbage\n"]})
    with commands.use_runner(fake), pytest.raises(SchedulerError) as caught:
        commands.job_info("15")
    assert "no JobId=/JobState=" in str(caught.value)
    assert "slurm_load_jobs: garbage" in str(caught.value)
    assert fake.calls == [["scontrol", "show", "job", "-o", "15"]]


def test_empty_scontrol_output() -> None:
    with pytest.raises(SchedulerError, match="empty output"):
        parse_job_info("")


def test_failed_requeue_explains() -> None:
    fake = FakeCluster(
        fail={"scontrol requeue": (1, "scontrol: error: Requested operation is presently disabled")}
    )
    with commands.use_runner(fake), pytest.raises(CommandError) as caught:
        commands.requeue("15")
    assert "presently disabled" in str(caught.value)
    assert "JobRequeue=0" in str(caught.value)


def test_sacct_missing_means_no_accounting() -> None:
    fake = FakeCluster(fail={"sacct -X": (1, "sacct: error: Problem talking to the database")})
    with commands.use_runner(fake):
        assert commands.accounting_state("15") is None
    fake = FakeCluster(answers={"sacct -X": ["15|REQUEUED\n15|PREEMPTED\n"]})
    with commands.use_runner(fake):
        assert commands.accounting_state("15") == "PREEMPTED"


# --- parsing -----------------------------------------------------------------------------------


def test_parse_job_info_fields() -> None:
    info = parse_job_info(PREEMPTED)
    assert (info.job_id, info.state, info.reason, info.restarts, info.requeue) == (
        "15",
        "RUNNING",
        "None",
        0,
        True,
    )
    assert info.time_limit_s == 300 and info.run_time_s == 11
    assert info.preempt_time == datetime(2026, 11, 30, 5, 6, 12)
    assert info.time_left(NOW) == 12.0  # EndTime = PreemptTime + GraceTime (20 s)
    assert info.fields["Command"] == "/tmp/probe/srun.sbatch 200 TERM 2"  # values with spaces stay whole
    assert info.fields["AllocNode:Sid"] == "localhost:4930"


def test_unknown_times_and_unlimited() -> None:
    info = parse_job_info(scontrol_line(TimeLimit="UNLIMITED", EndTime="Unknown"))
    assert info.time_limit_s is None and info.end_time is None
    assert info.time_left(NOW) is None


# --- the decision ------------------------------------------------------------------------------

IN_JOB = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "SLURM_PROCID": "0"})
RESTARTED = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "SLURM_RESTART_COUNT": "1"})


def evidence(
    line: str | None, sig: str, env: SlurmEnvironment = IN_JOB, accounting: str | None = None
) -> StopEvidence:
    return StopEvidence(sig, env, parse_job_info(line) if line else None, accounting, NOW)


@pytest.mark.parametrize(
    ("line", "sig", "accounting", "kind", "requeue_self"),
    [
        (WALLTIME_WARNING, "USR1", None, StopKind.WALLTIME, True),
        (TIME_LIMIT, "TERM", None, StopKind.TIMELIMIT, True),
        (PREEMPTED, "TERM", None, StopKind.PREEMPTION, False),  # no preempt_send_user_signal
        (PREEMPTED, "USR1", None, StopKind.PREEMPTION, False),  # with preempt_send_user_signal
        (GRACE_END, "TERM", "PREEMPTED", StopKind.REQUEUED, False),  # B:exec, no user signal: TERM only now
        (SCANCEL, "TERM", None, StopKind.CANCEL, False),
        (EXTERNAL_REQUEUE, "TERM", "REQUEUED", StopKind.REQUEUED, False),
        (WALLTIME_WARNING, "TERM", None, StopKind.SIGNAL, False),  # kill -TERM / scancel --signal TERM
    ],
)
def test_decision_table(line: str, sig: str, accounting: str | None, kind: str, requeue_self: bool) -> None:
    decision = decide(evidence(line, sig, accounting=accounting))
    assert (decision.kind, decision.requeue_self) == (kind, requeue_self), decision.reason
    assert decision.wait_for_scheduler == (kind == StopKind.PREEMPTION)


def test_requeue_is_judged_against_this_run() -> None:
    # Second run (SLURM_RESTART_COUNT=1): Restarts=1 is this run, not a new requeue.
    line = scontrol_line(Restarts="1")
    assert decide(evidence(line, "USR1", env=RESTARTED)).kind == StopKind.WALLTIME
    assert (
        decide(evidence(scontrol_line(Restarts="2", JobState="COMPLETING"), "TERM", RESTARTED)).kind
        == StopKind.REQUEUED
    )


def test_warning_signal_from_the_environment() -> None:
    env = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "NNSLURM_WARNING_SIGNAL": "SIGTERM"})
    assert decide(evidence(WALLTIME_WARNING, "TERM", env=env)).kind == StopKind.WALLTIME
    env = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "NNSLURM_WARNING_SIGNAL": "USR2"})
    assert decide(evidence(WALLTIME_WARNING, "USR1", env=env)).kind == StopKind.SIGNAL


def test_without_scontrol_never_requeue_on_term() -> None:
    assert decide(evidence(None, "TERM")).requeue_self is False
    assert decide(evidence(None, "USR1")).requeue_self is True


def test_local_executor() -> None:
    env = SlurmEnvironment.from_environ({"SUBMITIT_LOCAL_JOB_ID": "4242", "NNSLURM_WARNING_SIGNAL": "USR1"})
    assert env.event_job_id == "local-4242"
    assert decide(evidence(None, "USR1", env=env)).kind == StopKind.WALLTIME
    assert decide(evidence(None, "TERM", env=env)).kind == StopKind.SIGNAL


def test_array_task_ids() -> None:
    env = SlurmEnvironment.from_environ(
        {
            "SLURM_JOB_ID": "41",
            "SLURM_ARRAY_JOB_ID": "40",
            "SLURM_ARRAY_TASK_ID": "1",
            "SLURM_RESTART_COUNT": "2",
        }
    )
    assert (env.qualified_id, env.event_job_id, env.restart_count) == ("40_1", "40_1", 2)


def test_the_environment_is_read_in_one_place() -> None:
    local = SlurmEnvironment.from_environ({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "77"})
    assert local.local and not local.in_slurm and local.qualified_id is None
    assert local.record_fields() == {"job_id": "local-77"}
    first = SlurmEnvironment.from_environ(
        {"SLURM_JOB_ID": "15", "SUBMITIT_EXECUTOR": "slurm", "SLURM_CPUS_PER_TASK": "4"}
    )
    assert not first.local and first.cpus_per_task == 4
    assert first.record_fields() == {"job_id": "15"}  # no restart count before the first requeue
    again = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "SLURM_RESTART_COUNT": "2"})
    assert again.record_fields() == {"job_id": "15", "restart_count": 2}
    assert SlurmEnvironment.from_environ({}).record_fields() == {}
    assert submitted_event_id(77, "local") == "local-77" and submitted_event_id("15", "slurm") == "15"


# --- after_stop: the whole decision with a fake cluster ----------------------------------------


def outcome(folder: Path, sig: str = "USR1") -> Stopped:
    return Stopped(folder=folder, signal=sig, epoch=2, iteration=7)


class FakeClock:
    """A clock whose sleeps advance it at once, recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    @property
    def clock(self) -> Clock:
        return Clock(monotonic=self.monotonic, sleep=self.sleep)


@pytest.mark.usefixtures("in_nnslurm_job")
def test_walltime_requeues_and_records(tmp_path: Path) -> None:
    fake = FakeCluster(answers={"scontrol show": [WALLTIME_WARNING]})
    with commands.use_runner(fake):
        decision = after_stop(outcome(tmp_path), 3)
    assert decision.kind == StopKind.WALLTIME
    assert fake.ran("scontrol requeue") == [["scontrol", "requeue", "15"]]
    (record,) = events_of(tmp_path, "decision")
    assert (record["kind"], record["job_id"], record["signal"], record["requeues_left"]) == (
        "walltime",
        "15",
        "USR1",
        2,
    )
    (requeued,) = events_of(tmp_path, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("nnslurm", "walltime")


@pytest.mark.usefixtures("in_nnslurm_job")
def test_requeue_cap(tmp_path: Path) -> None:
    fake = FakeCluster(answers={"scontrol show": [WALLTIME_WARNING]})
    max_requeues = 2
    with commands.use_runner(fake):
        after_stop(outcome(tmp_path), max_requeues)
        after_stop(outcome(tmp_path), max_requeues)
        with pytest.raises(RequeueLimitReached) as caught:
            after_stop(outcome(tmp_path), max_requeues)
    assert len(fake.ran("scontrol requeue")) == 2
    message = str(caught.value)
    assert "requeued itself 2 time(s)" in message and "epoch 2 iteration 7" in message
    assert "--max-requeues" in message
    assert events_of(tmp_path, "decision")[-1]["kind"] == StopKind.LIMIT


@pytest.mark.usefixtures("in_nnslurm_job")
def test_preemption_waits_for_slurm_and_does_not_requeue(tmp_path: Path) -> None:
    # scontrol: preempted (evidence), still running twice while waiting, then requeued by SLURM.
    fake = FakeCluster(answers={"scontrol show job": [PREEMPTED, PREEMPTED, PREEMPTED, GRACE_END]})
    time = FakeClock()
    with commands.use_runner(fake):
        decision = after_stop(outcome(tmp_path, "TERM"), TrainingOptions.max_requeues, clock=time.clock)
    assert decision.kind == StopKind.PREEMPTION
    assert fake.ran("scontrol requeue") == []
    (requeued,) = events_of(tmp_path, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("slurm", "preemption")
    assert len(fake.ran("scontrol show job")) == 4 and time.sleeps == [1.0, 1.0]  # asked each second
    assert requeued["waited_s"] == 2.0


@pytest.mark.usefixtures("in_nnslurm_job")
def test_preemption_fallback_requeues_once_if_slurm_does_not(tmp_path: Path) -> None:
    fake = FakeCluster(answers={"scontrol show": [PREEMPTED]})
    with commands.use_runner(fake):
        after_stop(outcome(tmp_path, "TERM"), TrainingOptions.max_requeues, clock=FakeClock().clock)
    assert fake.ran("scontrol requeue") == [["scontrol", "requeue", "15"]]
    (requeued,) = events_of(tmp_path, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("nnslurm", "preemption")
    assert self_requeues(read_events(tmp_path), "15") == 0  # not counted against --max-requeues


@pytest.mark.usefixtures("in_nnslurm_job")
@pytest.mark.parametrize(
    ("line", "kind"), [(SCANCEL, StopKind.CANCEL), (EXTERNAL_REQUEUE, StopKind.REQUEUED)]
)
def test_cancel_and_outside_requeue_never_requeue(tmp_path: Path, line: str, kind: str) -> None:
    fake = FakeCluster(answers={"scontrol show": [line], "sacct -X": ["15|REQUEUED\n"]})
    with commands.use_runner(fake):
        decision = after_stop(outcome(tmp_path, "TERM"), TrainingOptions.max_requeues)
    assert decision.kind == kind
    assert fake.ran("scontrol requeue") == []


@pytest.mark.usefixtures("in_nnslurm_job")
def test_requeue_through_a_given_function(tmp_path: Path) -> None:
    done: list[str] = []
    fake = FakeCluster(answers={"scontrol show": [WALLTIME_WARNING]})
    with commands.use_runner(fake):
        after_stop(outcome(tmp_path), TrainingOptions.max_requeues, requeue_job=done.append)
    assert done == ["15"] and fake.ran("scontrol requeue") == []


def test_wait_for_requeue_gives_up_at_the_deadline() -> None:
    fake = FakeCluster(answers={"scontrol show": [PREEMPTED]})
    time = FakeClock()
    with commands.use_runner(fake):
        info = wait_for_requeue("15", 0, seconds=5, clock=time.clock)
    assert isinstance(info, JobInfo) and info.state == "RUNNING"
    assert len(fake.calls) == 6  # at 0, 1, ..., 5 s: once a second, the last at the deadline
    assert time.sleeps == [1.0] * 5 and time.now == 1005.0
