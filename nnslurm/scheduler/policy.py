"""What a stop means, and the requeue cap: pure functions, evidence in, decision out (I/O elsewhere).

What a stop signal means is decided by evidence, `scontrol show job -o <id>` read after the
checkpoint is written, never by guessing. Measured on Slurm 22.05.8 (single node, KillWait=10,
partition low: PreemptMode=REQUEUE GraceTime=20, cred_expire=5), with a probe that queried
scontrol/squeue/sacct at the moment each signal arrived:

- walltime warning, --signal=USR1@30: USR1 arrived 45-49 s before the limit (srun step, or the
  batch shell with B:). scontrol: JobState=RUNNING, PreemptTime=None, Restarts unchanged.
- time limit reached without a warning: TERM 12-14 s after the limit, KILL 10 s later.
  scontrol: JobState=COMPLETING Reason=TimeLimit; sacct TIMEOUT.
- preemption without preempt_send_user_signal: srun step tasks get TERM at once; an `exec`-ed
  batch process (--signal=B:...) gets nothing until the grace time ends.
  scontrol: JobState=RUNNING, PreemptTime=<now>, EndTime=PreemptTime+GraceTime.
- preemption with preempt_send_user_signal: the job's --signal (USR1) at once, to the step or,
  with B:, to the batch shell. scontrol: as above (RUNNING, PreemptTime set).
- end of the grace time: TERM to every process, KILL after KillWait.
  scontrol: JobState=COMPLETING, Restarts already +1; sacct PREEMPTED.
- scancel: TERM to every process. scontrol: JobState=COMPLETING, Reason=None, Restarts
  unchanged, ExitCode=0:15; sacct CANCELLED.
- scontrol requeue from outside: TERM to every process. scontrol: JobState=COMPLETING,
  Restarts already +1; sacct REQUEUED.

Consequences, all measured:
- A preempted job whose batch script ends before GraceTime is over is NOT requeued: it ends
  COMPLETED (or FAILED) and is lost. So after a preemption nnslurm checkpoints, then waits for
  SLURM to requeue the job at the end of the grace time (Restarts goes up), then exits. Only if
  SLURM has not done so well past the grace end does it requeue the job itself (one requeue
  either way: `scontrol requeue` of a job that is no longer running fails).
- `scontrol requeue` of a job that is COMPLETING after scancel succeeds and brings the cancelled
  job back: never requeue unless the evidence says walltime.
- `scontrol requeue` of a job COMPLETING for TimeLimit works: a job that missed the warning is
  still requeued (and counted against --max-requeues).
- A self-requeued job starts again 6-7 s after it ended (BeginTime = end + cred_expire + 1 s);
  a preempted one likewise after its step is gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nnslurm.core.executor import Executor
from nnslurm.core.timeparse import describe, format_time
from nnslurm.runs.events import Event
from nnslurm.runs.history import Outcome, segments_of
from nnslurm.slurm.commands import JobInfo
from nnslurm.slurm.end_time import END_TIME_SIGNAL
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.states import JobState, is_running, on_nodes
from nnslurm.slurm.stop_kinds import StopKind

# Who requeued a job ("by" of a "requeued" record) and why ("reason").
BY_NNSLURM = "nnslurm"
BY_SLURM = "slurm"


@dataclass(frozen=True)
class StopDecision:
    kind: StopKind
    requeue_self: bool  # whether this job must requeue itself now
    reason: str  # the evidence, in words, for the log and the event record
    wait_for_scheduler: bool = False  # PREEMPTION: stay alive until SLURM has requeued the job
    resubmit: bool = False  # RESUBMIT: submit the run again as a new job, then leave


@dataclass(frozen=True)
class StopEvidence:
    signal: str | None  # the first stop signal received ("USR1", "TERM", ...)
    env: SlurmEnvironment  # this process's SLURM variables
    info: JobInfo | None  # scontrol's view after the checkpoint (None: it could not be read)
    accounting: str | None = None  # sacct State, asked only to tell preemption from requeue
    now: datetime | None = None  # for time_left; None = now
    preempt_mode: str | None = None  # the job's partition's PreemptMode, asked only once preempted
    stop_reason: str | None = None  # the end-time rule's numbers, when it asked for the stop (signal ENDTIME)


def decide(evidence: StopEvidence) -> StopDecision:
    """Walltime, preemption, cancel or requeue from outside: the table in this module's docstring."""
    sig, env, info = evidence.signal, evidence.env, evidence.info
    warning = env.warning_signal
    if not env.in_slurm:  # submitit's local executor: its only signal before SIGINT/KILL is the warning
        if env.local and sig is not None and sig != "TERM" and (warning is None or sig == warning):
            return StopDecision(
                StopKind.WALLTIME, True, f"SIG{sig} from the local executor: its --time is nearly up"
            )
        return StopDecision(StopKind.SIGNAL, False, f"SIG{sig} outside SLURM: nothing to requeue")
    end_rule = f"end-time rule ({evidence.stop_reason or 'the job ends soon'})"
    if info is None:
        if sig == END_TIME_SIGNAL:
            return StopDecision(StopKind.WALLTIME, True, f"{end_rule}, scontrol unreadable now: walltime")
        if sig is not None and sig != "TERM" and (warning is None or sig == warning):
            return StopDecision(
                StopKind.WALLTIME,
                True,
                f"SIG{sig} and scontrol unreadable: taking it for the walltime warning",
            )
        return StopDecision(
            StopKind.SIGNAL, False, f"SIG{sig} and scontrol unreadable: not requeueing (could be scancel)"
        )
    left = info.time_left(evidence.now)
    left_text = "unlimited" if left is None else describe(max(0.0, left))
    if info.restarts > env.restart_count:
        source = (
            "preemption" if evidence.accounting == JobState.PREEMPTED else "scontrol requeue or preemption"
        )
        if evidence.accounting == JobState.REQUEUED:
            source = "scontrol requeue from outside"
        return StopDecision(
            StopKind.REQUEUED,
            False,
            f"SLURM already requeued the job ({source}): Restarts={info.restarts} > {env.restart_count}",
        )
    if info.preempt_time is not None and on_nodes(info.state):
        return StopDecision(
            StopKind.PREEMPTION,
            False,
            f"preempted at {info.preempt_time.isoformat()} (JobState={info.state}, {left_text} of grace "
            "left): SLURM requeues the job when the grace time ends",
            wait_for_scheduler=is_running(info.state),
        )
    if info.state in (JobState.COMPLETING, JobState.TIMEOUT) and info.reason == "TimeLimit":
        return StopDecision(
            StopKind.TIMELIMIT, True, f"time limit reached (JobState={info.state} Reason=TimeLimit)"
        )
    if info.state in (JobState.CANCELLED, JobState.COMPLETING, JobState.COMPLETED, JobState.FAILED):
        return StopDecision(
            StopKind.CANCEL,
            False,
            f"JobState={info.state}, Restarts unchanged, no preemption: cancelled (scancel)",
        )
    if info.state == JobState.RUNNING and sig == END_TIME_SIGNAL:
        return StopDecision(
            StopKind.WALLTIME, True, f"{end_rule}; {left_text} left, JobState=RUNNING: walltime"
        )
    is_warning = sig == warning if warning else sig != "TERM"
    if info.state == JobState.RUNNING and is_warning:
        return StopDecision(
            StopKind.WALLTIME, True, f"SIG{sig} with {left_text} left, JobState=RUNNING: walltime warning"
        )
    return StopDecision(
        StopKind.SIGNAL,
        False,
        f"SIG{sig} with JobState={info.state}, no preemption, no requeue, {left_text} left: "
        "a signal sent by hand (kill, scancel --signal); not requeueing",
    )


def self_requeues(records: Iterable[Mapping[str, Any]], job_id: str | None) -> int:
    """How often this job (id) has requeued itself for walltime, from the run's event records.

    The event log is the one counter of --max-requeues (a preemption's fallback requeue is not
    counted: SLURM would have requeued the job anyway)."""
    return sum(
        1
        for record in records
        if record.get("event") == Event.REQUEUED
        and record.get("by") == BY_NNSLURM
        and record.get("reason") == StopKind.WALLTIME
        and record.get("job_id") == job_id
    )


# submitit's local controller starts a job at most 6 times (Controller.run(max_retry=6), submitit
# 1.5.4): the first start and 5 restarts. tests/test_submitit_insides.py fails if that changes.
LOCAL_MAX_REQUEUES = 5


def requeue_cap(max_requeues: int, executor: Executor | None) -> int:
    """The most self-requeues a job may make, decided here only: --max-requeues, and on submitit's
    local executor no more than its controller restarts a job.

    The after-stop wiring (nnslurm.jobs.base) caps the decision with it, and the executor
    (nnslurm.jobs.submission) gives submitit's own countdown, `max_num_timeout`, the same number."""
    return min(max_requeues, LOCAL_MAX_REQUEUES) if executor is Executor.LOCAL else max_requeues


def apply_requeue_limit(decision: StopDecision, used: int, max_requeues: int) -> StopDecision:
    """A self-requeue beyond --max-requeues becomes LIMIT: the job stops with its checkpoint."""
    if not decision.requeue_self or used < max_requeues:
        return decision
    return StopDecision(
        StopKind.LIMIT,
        False,
        f"{decision.reason}; but this job already requeued itself {used} time(s) "
        f"(--max-requeues {max_requeues})",
    )


def requeues_left(decision: StopDecision, used: int, max_requeues: int) -> int:
    """Self-requeues still allowed once this decision is carried out."""
    return max(0, max_requeues - used - (1 if decision.requeue_self else 0))


# --- starts that make no progress ---------------------------------------------------------------
# A start that stops where it began (a limit shorter than its start-up and a checkpoint, a warning
# signal that arrives at once in a backfill window) would requeue until --max-requeues are spent and
# never finish (measured, issue 19: 21 starts, 20 self-requeues, epoch 5-6 of 8). Like NVRx's
# in-job restarts, stop after a few in a row: the job then ends with its checkpoint and says why.
NO_PROGRESS_STARTS = 3


def starts_without_progress(records: Sequence[Mapping[str, Any]]) -> int:
    """How many of the run's newest training starts in a row ended where they began (their
    furthest recorded (epoch, iteration) no further than their start), counted since the user's
    newest `nnslurm submit`. A start that finished, failed or has no recorded start position (a
    workflow stage) ends the count."""
    submits = [index for index, record in enumerate(records) if record.get("event") == Event.SUBMITTED]
    count = 0
    for segment in reversed(segments_of(records[submits[-1] + 1 :] if submits else records)):
        if segment.outcome in (Outcome.FINISHED, Outcome.FAILED):
            break
        start = next((p for p in segment.points if p.event in (Event.RESUMED, Event.STARTED)), None)
        if start is None:
            break
        furthest = max((p.epoch, p.iteration) for p in segment.points)
        if furthest > (start.epoch, start.iteration):
            break
        count += 1
    return count


def apply_progress_cap(
    decision: StopDecision, stalled: int, time_limit_s: int | None, most: int = NO_PROGRESS_STARTS
) -> StopDecision:
    """A self-requeue after `most` starts in a row without progress (this one included) becomes
    NO_PROGRESS: the job stops with its checkpoint instead of spending its requeues on nothing."""
    if not decision.requeue_self or stalled < most:
        return decision
    return StopDecision(
        StopKind.NO_PROGRESS,
        False,
        f"{no_progress_text(stalled, time_limit_s)}; not requeueing: {decision.reason}",
    )


def no_progress_text(stalled: int, time_limit_s: int | None) -> str:
    """Why a job stopped requeueing itself, in one line."""
    limit = f"the time limit {format_time(time_limit_s)}" if time_limit_s else "the job's time limit"
    return (
        f"{stalled} starts in a row made no progress: {limit} is too short for a start-up, an iteration "
        "and a checkpoint, or a warning signal comes at once"
    )


# --- preemption that SLURM will not requeue: resubmission -------------------------------------------
# Measured on Slurm 22.05.8 (partition cancel: PreemptMode=CANCEL GraceTime=20): the preempted job
# gets TERM at once (srun step), scontrol shows RUNNING with PreemptTime set, exactly as on a
# REQUEUE partition; at the grace end it is killed and ends COMPLETED, never requeued. Only the
# partition's PreemptMode (scontrol show partition) tells the two apart before the end, and a job
# with Requeue=0 (JobRequeue=0 without --requeue) is cancelled whatever the partition says.


def will_not_requeue(evidence: StopEvidence) -> str | None:
    """Why SLURM will not requeue this preempted job (in words), or None when it will (or may)."""
    modes = (evidence.preempt_mode or "").upper().split(",")
    if "CANCEL" in modes:
        return f"the partition's PreemptMode={evidence.preempt_mode}: SLURM cancels preempted jobs"
    if evidence.info is not None and not evidence.info.requeue:
        return "the job is not requeueable (Requeue=0: JobRequeue=0 and no --requeue)"
    return None


def resubmit_rule(decision: StopDecision, evidence: StopEvidence) -> StopDecision:
    """A preemption SLURM will not requeue becomes RESUBMIT: the run goes on as a new job.

    Only a PREEMPTION decision can become one: scancel, a requeue from outside, a signal by hand
    and walltime never resubmit."""
    if decision.kind != StopKind.PREEMPTION:
        return decision
    why = will_not_requeue(evidence)
    if why is None:
        return decision
    info = evidence.info
    when = f" at {info.preempt_time.isoformat()}" if info is not None and info.preempt_time else ""
    return StopDecision(
        StopKind.RESUBMIT, False, f"preempted{when}; {why}: resubmitting the run as a new job", resubmit=True
    )


def resubmissions(records: Iterable[Mapping[str, Any]]) -> int:
    """How often the run was resubmitted since the user's newest `nnslurm submit` (the event log counts)."""
    count = 0
    for record in records:
        if record.get("event") == Event.SUBMITTED:
            count = 0
        elif record.get("event") == Event.RESUBMITTED:
            count += 1
    return count


def apply_resubmit_limit(decision: StopDecision, used: int, max_resubmits: int) -> StopDecision:
    """A resubmission beyond the cap becomes RESUBMIT_LIMIT: the job stops with its checkpoint."""
    if not decision.resubmit or used < max_resubmits:
        return decision
    return StopDecision(
        StopKind.RESUBMIT_LIMIT,
        False,
        f"{decision.reason}; but the run was already resubmitted {used} time(s) (--max-requeues "
        f"{max_resubmits})",
    )
