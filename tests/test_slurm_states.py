"""One SLURM vocabulary (nnslurm.slurm.states): every job state has one phase, the predicates say
what SLURM's documentation says; and a job's accounting record is matched to the job we submitted,
not only by its id (after a controller's state is reset, ids start again and sacct also returns an
older job's record under the same id). SLURM is faked at the subprocess seam."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from support import FakeCluster, events_of, started, write_log

from nnslurm.jobs import waiting
from nnslurm.runs.history import submission_time
from nnslurm.runs.interruptions import Kind
from nnslurm.runs.state import RunState, Slurm, slurm_kind
from nnslurm.runs.status import statuses
from nnslurm.scheduler.restart import note_previous_end
from nnslurm.slurm import commands, states
from nnslurm.slurm.commands import (
    SUBMIT_SLACK_S,
    accounting_runs,
    parse_sacct,
    parse_sacct_runs,
    query_scheduler,
    use_runner,
)
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.states import JobState, Phase
from nnslurm.workflow.chain_status import _BY_PHASE as STAGE_BY_PHASE
from nnslurm.workflow.chain_status import StageState

# squeue(1), JOB STATE CODES (Slurm 20-24): every code and its state.
SQUEUE_CODES = {
    "BF": "BOOT_FAIL",
    "CA": "CANCELLED",
    "CD": "COMPLETED",
    "CF": "CONFIGURING",
    "CG": "COMPLETING",
    "DL": "DEADLINE",
    "F": "FAILED",
    "NF": "NODE_FAIL",
    "OOM": "OUT_OF_MEMORY",
    "PD": "PENDING",
    "PR": "PREEMPTED",
    "R": "RUNNING",
    "RD": "RESV_DEL_HOLD",
    "RF": "REQUEUE_FED",
    "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED",
    "RS": "RESIZING",
    "RV": "REVOKED",
    "SI": "SIGNALING",
    "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT",
    "ST": "STOPPED",
    "S": "SUSPENDED",
    "TO": "TIMEOUT",
}


# --- the table ---------------------------------------------------------------------------------------


def test_every_documented_state_has_exactly_one_phase() -> None:
    assert {state.value for state in JobState} == set(SQUEUE_CODES.values())
    assert set(states.TABLE) == set(JobState)  # one row per state: a dict cannot hold two
    for state in JobState:
        assert isinstance(states.TABLE[state].phase, Phase), state
        assert states.phase(state) == states.TABLE[state].phase
    assert {meaning.phase for meaning in states.TABLE.values()} == set(Phase)  # no phase is empty


# (state, queued, running, on its nodes, failed, requeue follows) as squeue(1) and sacct(1) describe them
DOCUMENTED = [
    ("PENDING", True, False, False, False, False),  # awaiting resource allocation
    ("REQUEUED", True, False, False, False, True),  # completing job being requeued
    ("REQUEUE_HOLD", True, False, False, False, False),  # held job being requeued
    ("REQUEUE_FED", True, False, False, False, False),  # being requeued by a federation
    ("SPECIAL_EXIT", True, False, False, False, False),  # requeued in a special (held) state
    ("RESV_DEL_HOLD", True, False, False, False, False),  # held: its reservation was deleted
    ("CONFIGURING", False, True, True, False, False),  # allocated, nodes booting
    ("RUNNING", False, True, True, False, False),  # has an allocation
    ("RESIZING", False, True, True, False, False),  # about to change size
    ("SIGNALING", False, True, True, False, False),  # being signaled
    ("SUSPENDED", False, True, True, False, False),  # allocation kept, execution suspended
    ("STOPPED", False, True, True, False, False),  # SIGSTOP, CPUs retained
    ("COMPLETING", False, False, True, False, False),  # processes may still be active
    ("STAGE_OUT", False, False, True, False, False),  # staging out files
    ("COMPLETED", False, False, False, False, False),  # exit code zero
    ("CANCELLED", False, False, False, False, False),  # by the user or an administrator
    ("PREEMPTED", False, False, False, False, True),  # terminated by preemption
    ("NODE_FAIL", False, False, False, True, True),  # one of its nodes failed
    ("FAILED", False, False, False, True, False),  # non-zero exit code
    ("TIMEOUT", False, False, False, True, False),  # reached its time limit
    ("OUT_OF_MEMORY", False, False, False, True, False),
    ("BOOT_FAIL", False, False, False, True, False),  # launch failure
    ("DEADLINE", False, False, False, True, False),  # terminated on deadline
    ("REVOKED", False, False, False, False, False),  # a federation sibling removed here
]


@pytest.mark.parametrize(("state", "queued", "running", "on_nodes", "failed", "requeue"), DOCUMENTED)
def test_the_predicates_say_what_slurm_documents(
    state: str, queued: bool, running: bool, on_nodes: bool, failed: bool, requeue: bool
) -> None:
    assert states.is_queued(state) is queued
    assert states.is_running(state) is running
    assert states.on_nodes(state) is on_nodes
    assert states.is_failed(state) is failed
    assert states.requeue_follows(state) is requeue
    # live and ended split every known state in two
    assert states.is_live(state) is (queued or on_nodes)
    assert states.is_ended(state) is not states.is_live(state)


def test_every_state_is_in_the_documented_list() -> None:
    assert sorted(state for state, *_ in DOCUMENTED) == sorted(SQUEUE_CODES.values())


def test_states_are_read_as_slurm_prints_them() -> None:
    assert states.state_of("CANCELLED by 1000") == JobState.CANCELLED  # sacct's State
    assert states.is_ended("CANCELLED by 0") and not states.is_live("CANCELLED by 0")
    for unknown in (None, "", "  ", "gone from SLURM", "INTERRUPTED", "SOMETHING_NEW"):
        assert states.state_of(unknown) is None and states.phase(unknown) is None
        # a state the table does not know is taken for nothing: not live, not running, not ended
        assert not (states.is_live(unknown) or states.on_nodes(unknown) or states.is_ended(unknown))


def test_a_requeue_by_slurm_is_named_as_the_interruption_it_was() -> None:
    assert states.requeue_cause("PREEMPTED") == Kind.PREEMPTION
    assert states.requeue_cause("NODE_FAIL") == Kind.NODE_FAILURE
    assert states.requeue_cause("REQUEUED") is None  # scontrol requeue from outside
    assert {states.requeue_cause(state) for state in JobState} <= {None, *Kind}


def test_the_consumers_read_every_phase() -> None:
    """Status's rules and the chain's stages name a reading of every phase; only a job that runs
    on another cluster of a federation is left to the event log."""
    for state in JobState:
        kind = slurm_kind(state)
        assert (kind == Slurm.OTHER) is (states.phase(state) == Phase.ELSEWHERE), state
        stage = STAGE_BY_PHASE.get(states.TABLE[state].phase, StageState.UNKNOWN)
        assert (stage == StageState.UNKNOWN) is (states.phase(state) == Phase.ELSEWHERE), state
    assert slurm_kind("SOMETHING_NEW") == Slurm.OTHER


# --- the accounting record of the job we submitted ------------------------------------------------------


def stamp(when: float) -> str:
    """sacct's Submit as it prints it (local time, no zone)."""
    return datetime.fromtimestamp(when).strftime("%Y-%m-%dT%H:%M:%S")


NOW = time.time()
OLD = NOW - 2 * 24 * 3600  # submitted before the controller's state was reset
# Recorded on a cluster whose controller started again at job id 1 while slurmdbd kept its records:
# `sacct -X -n -P -o JobID,State,Submit -j 5` right after our job 5 was submitted.
SACCT_OLD_ONLY = f"5|COMPLETED|{stamp(OLD)}\n"
SACCT_BOTH = f"5|COMPLETED|{stamp(OLD)}\n5|PENDING|{stamp(NOW - 1)}\n"


def test_sacct_asks_for_the_submit_time() -> None:
    fake = FakeCluster.queue(squeue="", sacct=SACCT_BOTH)
    with use_runner(fake):
        assert query_scheduler(["5"], since={"5": NOW})["5"].state == "PENDING"  # type: ignore[index]
    (sacct,) = fake.ran("sacct")
    assert sacct[sacct.index("-o") + 1] == "JobID,State,Submit" and sacct[-2:] == ["-j", "5"]


def test_an_older_jobs_record_under_the_same_id_is_not_ours() -> None:
    assert parse_sacct(SACCT_OLD_ONLY, ["5"], since={"5": NOW}) == {}
    assert parse_sacct(SACCT_BOTH, ["5"], since={"5": NOW}) == {"5": "PENDING"}
    # sacct's order does not matter: the newest record that is ours
    both_reversed = "".join(reversed(SACCT_BOTH.splitlines(keepends=True)))
    assert parse_sacct(both_reversed, ["5"], since={"5": NOW}) == {"5": "PENDING"}
    # our own record is kept though SLURM stamped it a little before we recorded the submission
    assert parse_sacct(f"5|RUNNING|{stamp(NOW - SUBMIT_SLACK_S / 2)}\n", since={"5": NOW}) == {"5": "RUNNING"}
    # without a submission time, or without a Submit field, the newest record stands (as before)
    assert parse_sacct(SACCT_OLD_ONLY) == {"5": "COMPLETED"}
    assert parse_sacct("5|COMPLETED\n", since={"5": NOW}) == {"5": "COMPLETED"}


def test_squeue_wins_over_an_older_accounting_record() -> None:
    fake = FakeCluster.queue(squeue="5|PENDING|Priority\n", sacct=SACCT_OLD_ONLY)
    with use_runner(fake):
        answer = query_scheduler(["5"], since={"5": NOW})
    assert answer is not None and (answer["5"].state, answer["5"].source) == ("PENDING", "squeue")
    assert not fake.ran("sacct")  # squeue knows the job: sacct is not asked


def test_status_ignores_an_older_jobs_record(tmp_path: Path) -> None:
    record = {"event": "submitted", "time": 0, "job_id": "5", "executor": "slurm"}
    folder = write_log(tmp_path / "run", [record])
    submitted = submission_time(events_of(folder, "submitted"), "5")
    assert submitted is not None
    sacct = f"5|COMPLETED|{stamp(submitted - 3600)}\n"  # the old job 5, an hour before ours
    with use_runner(FakeCluster.queue(squeue="", sacct=sacct)):
        (row,), answered = statuses([folder])
    assert answered and (row.state, row.scheduler_state) == (RunState.PENDING, None)
    with use_runner(FakeCluster.queue(squeue="", sacct=sacct + f"5|CANCELLED by 0|{stamp(submitted)}\n")):
        (row,), _ = statuses([folder])
    assert (row.state, row.scheduler_state) == (RunState.CANCELLED, "CANCELLED")


def test_the_newest_submission_of_an_id_is_ours() -> None:
    records = [
        {"event": "submitted", "time": 10.0, "job_id": "5"},  # before the controller's reset
        {"event": "submitted", "time": 20.0, "job_id": "6"},
        {"event": "resubmitted", "time": 30.0, "job_id": "5", "old_job_id": "6"},
    ]
    assert submission_time(records, "5") == 30.0 and submission_time(records, "6") == 20.0
    assert submission_time(records, "7") is None and submission_time(records, None) is None


class StaleJob:
    """A submitit SLURM job that submitit's own sacct read took for ended (an older job's record)."""

    def __init__(self, tmp_path: Path, state: str = "COMPLETED") -> None:
        self.job_id, self.state = "5", state
        self.paths = type("Paths", (), {"result_pickle": tmp_path / "none.pkl", "stderr": tmp_path / "err"})()

    def done(self, force_check: bool = False) -> bool:
        return True


def test_wait_does_not_end_a_pending_job_on_an_older_jobs_record(tmp_path: Path) -> None:
    """Seen on another cluster: `submit --wait` reported the job it had just submitted as "failed
    [COMPLETED, ended without a result]" at 0 s while squeue showed it pending."""
    with use_runner(FakeCluster.queue(squeue="5|PENDING|Priority\n", sacct=SACCT_OLD_ONLY)):
        state, detail = waiting.job_state(StaleJob(tmp_path), since=NOW)  # type: ignore[arg-type]
    assert (state, detail) == (waiting.RUNNING, "PENDING")


def test_wait_goes_on_after_slurms_requeue_as_squeue_shows_it(tmp_path: Path) -> None:
    with use_runner(FakeCluster.queue(squeue="5|PENDING|BeginTime\n")):
        state, detail = waiting.job_state(StaleJob(tmp_path, "NODE_FAIL"), since=NOW)  # type: ignore[arg-type]
    assert (state, detail) == (waiting.RUNNING, "NODE_FAIL, requeued by SLURM")


class PendingJob(StaleJob):
    """A submitit SLURM job submitit sees pending (not done)."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, "PENDING")

    def done(self, force_check: bool = False) -> bool:
        return False


def test_wait_says_why_a_job_is_pending_and_how_to_release_a_held_one(tmp_path: Path) -> None:
    """A job SLURM held after a failed launch waits forever: `--wait` says so and what ends it."""
    with use_runner(FakeCluster.queue(squeue="5|PENDING|launch failed requeued held\n")):
        state, detail = waiting.job_state(PendingJob(tmp_path), since=NOW)  # type: ignore[arg-type]
    assert state == waiting.RUNNING
    assert detail == "PENDING: launch failed requeued held; it starts only once released: scontrol release 5"
    with use_runner(FakeCluster.queue(squeue="5|PENDING|BeginTime\n")):
        assert waiting.job_state(PendingJob(tmp_path), since=NOW)[1] == "PENDING: BeginTime"  # type: ignore[arg-type]
    with use_runner(FakeCluster.queue(squeue="5|PENDING|None\n")):
        assert waiting.job_state(PendingJob(tmp_path), since=NOW)[1] == "PENDING"  # type: ignore[arg-type]


def test_wait_takes_our_own_record_over_submitits(tmp_path: Path) -> None:
    sacct = SACCT_OLD_ONLY + f"5|CANCELLED by 0|{stamp(NOW + 5)}\n"
    with use_runner(FakeCluster.queue(squeue="", sacct=sacct)):
        state, detail = waiting.job_state(StaleJob(tmp_path), since=NOW)  # type: ignore[arg-type]
    assert (state, detail) == (waiting.CANCELLED, "CANCELLED")


# sacct -D -X -n -P -o JobID,State,Submit -j 15 inside our restarted job 15: the old job 15's start
# (a node failure), then our two starts (a requeue stamps a new Submit).
SACCT_D = f"15|NODE_FAIL|{stamp(OLD)}\n15|REQUEUED|{stamp(NOW - 600)}\n15|RUNNING|{stamp(NOW - 60)}\n"


def test_the_starts_of_our_job_only() -> None:
    assert parse_sacct_runs(SACCT_D, "15") == ["NODE_FAIL", "REQUEUED", "RUNNING"]  # no submission time
    assert parse_sacct_runs(SACCT_D, "15", since=NOW - 601) == ["REQUEUED", "RUNNING"]
    fake = FakeCluster(answers={"sacct -D": [SACCT_D]})
    with commands.use_runner(fake):
        assert accounting_runs("15", since=NOW - 601) == ["REQUEUED", "RUNNING"]
    assert fake.ran("sacct -D -X -n -P -o JobID,State,Submit -j 15")


def test_a_restart_reads_its_own_previous_start_not_an_older_jobs(tmp_path: Path) -> None:
    restarted = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "SLURM_RESTART_COUNT": "1"})
    log = [{"event": "submitted", "time": -601, "job_id": "15", "executor": "slurm"}, *started("15", -500)]
    folder = write_log(tmp_path / "run", log)
    with commands.use_runner(FakeCluster(answers={"sacct -D": [SACCT_D]})):
        assert note_previous_end(folder, restarted) == "REQUEUED"  # not the old job's NODE_FAIL
    (told,) = events_of(folder, "interrupted")
    assert told["kind"] == Kind.KILL and told["accounting"] == "REQUEUED"
