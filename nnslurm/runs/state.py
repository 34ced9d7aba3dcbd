"""A run's state, decided in one place: a table from (what the event log says about the newest
start, what SLURM says about the newest job, whether its process is alive) to a `RunState`.

Read `RULES` top to bottom: the first row that matches decides. Without SLURM (`Slurm.NONE`) the
log alone decides, which is why every log verdict has a state of its own (`LOG_STATE`); SLURM
then corrects it where it knows better (the job is queued, running, or ended without a requeue).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nnslurm.runs.events import Event
from nnslurm.runs.history import History, Outcome
from nnslurm.runs.interruptions import Kind, cancel_request_for, classify
from nnslurm.slurm.commands import SchedulerJob
from nnslurm.slurm.states import Phase, phase
from nnslurm.slurm.stop_kinds import StopKind


class RunState(StrEnum):
    PENDING = "pending"  # submitted, not started yet
    RUNNING = "running"  # a training process is at work
    REQUEUED = "requeued"  # interrupted and queued again (walltime, requeue from outside)
    PREEMPTED = "preempted"  # preempted; SLURM requeues it
    STOPPED = "stopped"  # stopped with a complete checkpoint, nothing will restart it: run it again
    KILLED = "killed"  # the last process died without a stop event and nothing restarts it
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # a folder with checkpoints but no event log (plain nnU-Net)


TERMINAL_STATES = (RunState.FINISHED, RunState.FAILED, RunState.CANCELLED)


class LogSays(StrEnum):
    """What the event log alone says about the run's newest start."""

    CANCELLED_BEFORE_START = "cancelled before it started"
    SUBMITTED = "submitted, never started"
    NO_LOG_FINAL = "no event log, checkpoint_final.pth"
    NO_LOG = "no event log"
    FINISHED = "finished"
    CANCEL_REQUESTED = "nnslurm cancel aimed at the newest start"
    SUBMITTED_AGAIN = "submitted again after the newest start"
    FAILED = "the trainer raised"
    NO_END_RECORD = "no closing record: training, or killed"
    WALLTIME = "walltime, requeued itself"
    REQUEUE_LIMIT = "walltime, --max-requeues used up"
    PREEMPTED_IN_GRACE = "preempted, SLURM has not requeued it yet"
    PREEMPTED = "preempted, requeued by SLURM"
    REQUEUED_FROM_OUTSIDE = "requeued from outside"
    CANCEL_DECISION = "the job's decision: cancelled"
    SIGNAL = "a stop signal, no scheduler behind it"
    RESUBMITTED = "preempted, resubmitted as a new job"
    NODE_FAILURE = "node failure, requeued by SLURM"
    RESUBMIT_ENDED = "preempted, not resubmitted (cap used up, or submitting failed)"


LOG_STATE: dict[LogSays, RunState] = {
    LogSays.CANCELLED_BEFORE_START: RunState.CANCELLED,
    LogSays.SUBMITTED: RunState.PENDING,
    LogSays.NO_LOG_FINAL: RunState.FINISHED,
    LogSays.NO_LOG: RunState.UNKNOWN,
    LogSays.FINISHED: RunState.FINISHED,
    LogSays.CANCEL_REQUESTED: RunState.CANCELLED,
    LogSays.SUBMITTED_AGAIN: RunState.PENDING,
    LogSays.FAILED: RunState.FAILED,
    # NO_END_RECORD has no state of its own: SLURM or the process decides (RULES).
    LogSays.WALLTIME: RunState.REQUEUED,
    LogSays.REQUEUE_LIMIT: RunState.STOPPED,
    LogSays.PREEMPTED_IN_GRACE: RunState.PREEMPTED,
    LogSays.PREEMPTED: RunState.PREEMPTED,
    LogSays.REQUEUED_FROM_OUTSIDE: RunState.REQUEUED,
    LogSays.CANCEL_DECISION: RunState.CANCELLED,
    LogSays.SIGNAL: RunState.STOPPED,
    LogSays.RESUBMITTED: RunState.PENDING,
    LogSays.NODE_FAILURE: RunState.REQUEUED,
    LogSays.RESUBMIT_ENDED: RunState.STOPPED,
}


class Slurm(StrEnum):
    """The scheduler's view of the run's newest job: the phase of its squeue/sacct state
    (nnslurm.slurm.states), as the rules below tell them apart."""

    NONE = "no record"  # not asked, no SLURM, not a SLURM job, or forgotten by it
    ACTIVE = "active"  # Phase.RUNNING: holds its allocation
    COMPLETING = "completing"  # Phase.COMPLETING: ending, processes may still be on the nodes
    QUEUED = "queued"  # Phase.QUEUED, Phase.REQUEUED
    PREEMPTED = "preempted"  # Phase.PREEMPTED
    CANCELLED = "cancelled"  # Phase.CANCELLED
    ENDED = "ended"  # Phase.COMPLETED, Phase.FAILED
    OTHER = "other"  # anything else (Phase.ELSEWHERE, a state SLURM's table lacks)


_BY_PHASE = {
    Phase.RUNNING: Slurm.ACTIVE,
    Phase.COMPLETING: Slurm.COMPLETING,
    Phase.QUEUED: Slurm.QUEUED,
    Phase.REQUEUED: Slurm.QUEUED,
    Phase.PREEMPTED: Slurm.PREEMPTED,
    Phase.CANCELLED: Slurm.CANCELLED,
    Phase.COMPLETED: Slurm.ENDED,
    Phase.FAILED: Slurm.ENDED,
}


def slurm_says(job: SchedulerJob | None) -> Slurm:
    return Slurm.NONE if job is None else slurm_kind(job.state)


def slurm_kind(state: str) -> Slurm:
    """The rules' name for a squeue/sacct State's phase."""
    found = phase(state)
    return _BY_PHASE.get(found, Slurm.OTHER) if found is not None else Slurm.OTHER


@dataclass(frozen=True)
class Rule:
    log: frozenset[LogSays] | None  # None: any
    slurm: frozenset[Slurm] | None  # None: any
    alive: frozenset[bool | None] | None  # the newest process: True, False, None (another host); None: any
    state: RunState | None  # None: the log's own state (LOG_STATE)
    # {log}: the log's words; {slurm}: "SLURM: STATE (reason)"; {slurm_state}; {ago}: since the last record
    detail: str

    def matches(self, log: LogSays, slurm: Slurm, alive: bool | None) -> bool:
        return (
            (self.log is None or log in self.log)
            and (self.slurm is None or slurm in self.slurm)
            and (self.alive is None or alive in self.alive)
        )


def of(*items: Any) -> frozenset[Any]:
    return frozenset(items)


L, S, R = LogSays, Slurm, RunState
ANY = None
OPEN = of(L.NO_END_RECORD)
FINISHED_LOG = of(L.FINISHED, L.NO_LOG_FINAL)
CANCELLED_LOG = of(L.CANCELLED_BEFORE_START, L.CANCEL_REQUESTED, L.CANCEL_DECISION)
PENDING_LOG = of(L.SUBMITTED, L.SUBMITTED_AGAIN, L.RESUBMITTED)
NOT_STARTED = of(L.CANCELLED_BEFORE_START, L.SUBMITTED, L.NO_LOG)
REQUEUED_LOG = of(L.WALLTIME, L.REQUEUED_FROM_OUTSIDE, L.NODE_FAILURE)
PREEMPTED_LOG = of(L.PREEMPTED_IN_GRACE, L.PREEMPTED)
WAITING = PREEMPTED_LOG | REQUEUED_LOG | PENDING_LOG  # to be started (again) by SLURM
ANSWERED = frozenset(Slurm) - {S.NONE}
STOPPING = "{log}; stopping ({slurm})"
IN_GRACE = "checkpoint written, waiting out the grace time ({slurm})"
NOT_REQUEUED = "{slurm}: not requeued; submit again to continue"
ENDED = "the job ended ({slurm}) without a stop record"
GONE = "the job ended (SLURM: {slurm_state}) without a stop record"
DIED = "the training process died without a stop record"
UNCONFIRMED = "unconfirmed: last record {ago} ago"

RULES: tuple[Rule, ...] = (
    # the log says                  SLURM says              alive?     -> state      detail
    Rule(FINISHED_LOG,              ANY,                    ANY,       None,         "{log}"),
    Rule(CANCELLED_LOG,             of(S.ACTIVE),           ANY,       None,         STOPPING),
    Rule(of(L.PREEMPTED_IN_GRACE),  of(S.ACTIVE),           ANY,       None,         IN_GRACE),
    Rule(OPEN,                      of(S.ACTIVE, S.COMPLETING), ANY,   R.RUNNING,    ""),
    Rule(ANY,                       of(S.ACTIVE),           ANY,       R.RUNNING,    "{slurm}"),
    Rule(of(L.RESUBMITTED),         of(S.QUEUED),           ANY,       R.PENDING,    "{log}; {slurm}"),
    Rule(NOT_STARTED | PENDING_LOG, of(S.QUEUED),           ANY,       R.PENDING,    "{slurm}"),
    Rule(PREEMPTED_LOG | REQUEUED_LOG, of(S.QUEUED),        ANY,       None,         "{log}; {slurm}"),
    Rule(ANY,                       of(S.QUEUED),           ANY,       R.REQUEUED,   "{slurm}"),
    Rule(OPEN,                      of(S.PREEMPTED),        ANY,       R.PREEMPTED,  "{slurm}"),
    Rule(CANCELLED_LOG,             of(S.CANCELLED),        ANY,       None,         "{log}"),
    Rule(ANY,                       of(S.CANCELLED),        ANY,       R.CANCELLED,  "{slurm}"),
    Rule(OPEN,                      of(S.ENDED),            ANY,       R.KILLED,     ENDED),
    Rule(WAITING,                   of(S.ENDED),            ANY,       R.STOPPED,    NOT_REQUEUED),
    Rule(OPEN,                      ANY,                    of(False), R.KILLED,     DIED),
    Rule(OPEN,                      ANSWERED,               of(None),  R.KILLED,     GONE),
    Rule(OPEN,                      ANY,                    of(True),  R.RUNNING,    ""),
    Rule(OPEN,                      of(S.NONE),             of(None),  R.RUNNING,    UNCONFIRMED),
    Rule(ANY,                       ANY,                    ANY,       None,         "{log}"),
)  # fmt: skip


def run_state(
    log: LogSays, words: str, job: SchedulerJob | None, alive: bool | None, ago: str = ""
) -> tuple[RunState, str]:
    """(state, detail) by the first matching row of RULES."""
    slurm = slurm_says(job)
    rule = next(rule for rule in RULES if rule.matches(log, slurm, alive))
    state = rule.state if rule.state is not None else LOG_STATE[log]
    reason = f" ({job.reason})" if job is not None and job.reason and job.reason != "None" else ""
    detail = rule.detail.format(
        log=words,
        slurm=f"SLURM: {job.state}{reason}" if job is not None else "",
        slurm_state=job.state if job is not None else "",
        ago=ago,
    )
    return state, detail


def what_the_log_says(history: History, final_checkpoint: bool) -> tuple[LogSays, str]:
    """The log's verdict on the newest start, and its words (`final_checkpoint`: one is on disk)."""
    if not history.segments:
        if history.cancel_requests:
            by = history.cancel_requests[-1].get("by", "a user")
            return LogSays.CANCELLED_BEFORE_START, f"cancelled by {by} before it started"
        if history.submitted:
            return LogSays.SUBMITTED, "submitted, not started"
        return (LogSays.NO_LOG_FINAL if final_checkpoint else LogSays.NO_LOG), "no event log"
    last = history.segments[-1]
    if last.outcome == Outcome.FINISHED:
        return LogSays.FINISHED, ""
    request = cancel_request_for(last, history.cancel_requests)
    if history.resubmitted:
        newest = history.last_submission or {}
        if newest.get("event") == Event.RESUBMITTED:
            return LogSays.RESUBMITTED, f"preempted: resubmitted as job {newest.get('job_id')}"
        return LogSays.SUBMITTED_AGAIN, "submitted again, not started"
    if request is not None:
        return LogSays.CANCEL_REQUESTED, f"cancelled by {request.get('by', 'a user')}"
    if last.outcome == Outcome.FAILED:
        return LogSays.FAILED, ""
    if last.outcome == Outcome.OPEN:
        return LogSays.NO_END_RECORD, ""
    kind, reason = classify(last, history.cancel_requests)
    if kind == Kind.WALLTIME:
        if last.decision == StopKind.LIMIT:
            return LogSays.REQUEUE_LIMIT, "walltime, --max-requeues used up: submit again to continue"
        if last.decision == StopKind.NO_PROGRESS:
            return LogSays.REQUEUE_LIMIT, "starts made no progress: raise --time and submit again"
        return LogSays.WALLTIME, "walltime: requeued"
    if kind == Kind.PREEMPTION and last.decision in (StopKind.RESUBMIT_LIMIT, StopKind.RESUBMIT_FAILED):
        return LogSays.RESUBMIT_ENDED, f"preempted, {last.decision}: submit again to continue"
    if kind == Kind.PREEMPTION:
        verdict = LogSays.PREEMPTED_IN_GRACE if last.requeued_by is None else LogSays.PREEMPTED
        return verdict, "preempted: SLURM requeues it"
    if kind == Kind.REQUEUE:
        return LogSays.REQUEUED_FROM_OUTSIDE, "requeued from outside"
    if kind == Kind.NODE_FAILURE:
        return LogSays.NODE_FAILURE, "node failure: requeued by SLURM"
    if kind == Kind.CANCEL:
        return LogSays.CANCEL_DECISION, reason
    return LogSays.SIGNAL, f"stopped by SIG{last.signal or '?'}: run the same command to resume"
