"""After a process stopped on a signal with its state on disk (a training's complete checkpoint,
a stage's finished units: nnslurm.runs.outcome.Stopped): gather the evidence, decide
(nnslurm.scheduler.policy), record the decision, and requeue or wait for SLURM's requeue.

The clock and the sleep are injected (`Clock`), so tests run the waiting on a fake clock.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nnslurm.core.errors import CommandError, NoProgress, RequeueLimitReached, SchedulerError
from nnslurm.core.timeparse import describe
from nnslurm.runs.events import Event, EventLog, read_events
from nnslurm.runs.history import submission_time
from nnslurm.runs.outcome import Stopped
from nnslurm.scheduler.policy import (
    BY_NNSLURM,
    BY_SLURM,
    StopDecision,
    StopEvidence,
    StopKind,
    apply_progress_cap,
    apply_requeue_limit,
    apply_resubmit_limit,
    decide,
    no_progress_text,
    requeues_left,
    resubmissions,
    resubmit_rule,
    self_requeues,
    starts_without_progress,
)
from nnslurm.scheduler.resubmit import Resubmit, sbatch_again
from nnslurm.scheduler.time_limit import restore_time_limit
from nnslurm.slurm.commands import (
    JobInfo,
    accounting_runs,
    accounting_state,
    job_info,
    partition_preempt_mode,
    requeue,
)
from nnslurm.slurm.end_time import END_TIME_SIGNAL
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.states import is_running, requeue_cause

logger = logging.getLogger(__name__)

# After the grace time of a preemption ends, how long to wait for SLURM's requeue before doing it.
REQUEUE_WAIT_MARGIN_S = 45.0
# How often to ask scontrol while waiting.
POLL_S = 1.0


@dataclass(frozen=True)
class Clock:
    """Where the waiting gets its time: the real one, or a test's."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


SYSTEM_CLOCK = Clock()


def after_stop(
    outcome: Stopped,
    max_requeues: int,
    requeue_job: Callable[[str], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    resubmit: Resubmit | None = None,
) -> StopDecision:
    """Inside a SLURM job, after a process stopped on a signal with its state on disk.

    `max_requeues` is the job's cap (nnslurm.scheduler.policy.requeue_cap). Walltime (warning or
    limit) -> requeue this job (`requeue_job`, default `scontrol requeue`), unless it already did
    so --max-requeues times: then RequeueLimitReached. Preemption -> wait
    for SLURM's own requeue at the end of the grace time (exiting earlier loses the job).
    Preemption SLURM will not requeue (PreemptMode=CANCEL, Requeue=0) -> submit the run again as
    a new job (`resubmit`, default: sbatch of the job's own script), at most --max-requeues times
    per `nnslurm submit`. scancel, requeue from outside, a signal by hand -> nothing. Every
    decision is logged and recorded in the run's event log.
    """
    env = SlurmEnvironment.from_environ()
    folder = Path(outcome.folder)
    events = EventLog(folder)
    with _ignoring_term():
        records = read_events(folder)
        job_id = env.event_job_id
        evidence = gather_evidence(outcome.signal, env, outcome.reason, submission_time(records, job_id))
        used = self_requeues(records, job_id)
        resubmitted = resubmissions(records)
        decision = apply_requeue_limit(decide(evidence), used, max_requeues)
        limit_s = evidence.info.time_limit_s if evidence.info else None
        stalled = starts_without_progress(records)
        decision = apply_progress_cap(decision, stalled, limit_s)
        decision = apply_resubmit_limit(resubmit_rule(decision, evidence), resubmitted, max_requeues)
        left = requeues_left(decision, used, max_requeues)
        record_decision(events, decision, evidence, outcome, left)
        if decision.kind == StopKind.LIMIT:
            raise limit_error(outcome, max_requeues, job_id)
        if decision.kind == StopKind.RESUBMIT_LIMIT:
            raise resubmit_limit_error(outcome, max_requeues, job_id)
        if decision.kind == StopKind.NO_PROGRESS:
            raise no_progress_error(outcome, no_progress_text(stalled, limit_s), job_id)
        target = env.qualified_id or job_id
        if decision.resubmit and env.qualified_id:
            left_after = max(0, max_requeues - resubmitted - 1)
            resubmit_run(events, env, resubmit or sbatch_again, left_after)
            return decision
        if decision.requeue_self and target:
            events.append(
                Event.REQUEUED,
                job_id=job_id,
                reason=StopKind.WALLTIME,
                by=BY_NNSLURM,
                requeues_left=left,
                restart_count=env.restart_count,
            )
            restore_time_limit(env, target)  # --time-min: SLURM would keep this start's lowered limit
            try:
                (requeue_job or requeue)(target)
            except Exception as error:
                events.append(
                    Event.DECISION,
                    job_id=job_id,
                    kind=StopKind.REQUEUE_FAILED,
                    requeue_self=False,
                    error=str(error),
                )
                raise
        elif decision.wait_for_scheduler and env.qualified_id:
            finish_preemption(events, env, evidence, requeue_job or requeue, clock)
        elif decision.kind == StopKind.REQUEUED:
            source = requeue_cause(evidence.accounting) or "external"  # else: scontrol requeue
            events.append(Event.REQUEUED, job_id=job_id, reason=source, by=BY_SLURM, requeues_left=left)
    return decision


def gather_evidence(
    signal_name: str | None,
    env: SlurmEnvironment | None = None,
    stop_reason: str | None = None,
    since: float | None = None,
) -> StopEvidence:
    """Ask scontrol (and sacct when it matters) about this job, right now (`since`: when the job
    was submitted, by the run's record, to tell its accounting records from an older job's)."""
    env = env or SlurmEnvironment.from_environ()
    job_id = env.qualified_id
    if job_id is None:
        return StopEvidence(signal_name, env, None, stop_reason=stop_reason)
    try:
        info: JobInfo | None = job_info(job_id)
    except (CommandError, SchedulerError) as error:
        logger.warning(
            "job %s: cannot read the job's state (%s); deciding by the signal alone", job_id, error
        )
        info = None
    accounting = None
    if info is not None and info.restarts > env.restart_count:
        accounting = this_run_state(job_id, env.restart_count, since)
    return StopEvidence(
        signal_name, env, info, accounting, preempt_mode=_preempt_mode(info, env), stop_reason=stop_reason
    )


def this_run_state(job_id: str, restart_count: int, since: float | None = None) -> str | None:
    """sacct's State of this start of the job (`sacct -D`: one record per start, NODE_FAIL for a
    node that went down), else the job's newest record; records older than `since` are another
    job's."""
    runs = accounting_runs(job_id, since=since)
    return runs[restart_count] if len(runs) > restart_count else accounting_state(job_id, since=since)


def _preempt_mode(info: JobInfo | None, env: SlurmEnvironment) -> str | None:
    """The partition's PreemptMode, asked only of a preempted job SLURM has not requeued yet."""
    if info is None or info.preempt_time is None or info.restarts > env.restart_count:
        return None
    partition = info.fields.get("Partition")
    return partition_preempt_mode(partition) if partition else None


def record_decision(
    events: EventLog,
    decision: StopDecision,
    evidence: StopEvidence,
    outcome: Stopped,
    requeues_left: int,
) -> None:
    info = evidence.info
    left = info.time_left(evidence.now) if info else None
    events.append(
        Event.DECISION,
        job_id=evidence.env.event_job_id,
        kind=decision.kind,
        requeue_self=decision.requeue_self,
        reason=decision.reason,
        signal=evidence.signal,
        job_state=info.state if info else None,
        restarts=info.restarts if info else None,
        preempt_time=info.preempt_time.isoformat() if info and info.preempt_time else None,
        time_left_s=round(left, 1) if left is not None else None,
        accounting=evidence.accounting,
        requeues_left=requeues_left,
        epoch=outcome.epoch,
        iteration=outcome.iteration,
    )
    logger.warning(
        "job %s on %s: stopped by %s at epoch %d iteration %d -> %s: %s (self-requeues left: %d)",
        evidence.env.event_job_id,
        socket.gethostname(),
        "the end-time rule" if evidence.signal == END_TIME_SIGNAL else f"SIG{evidence.signal}",
        outcome.epoch,
        outcome.iteration,
        decision.kind,
        decision.reason,
        requeues_left,
    )


def limit_error(outcome: Stopped, max_requeues: int, job_id: str | None) -> RequeueLimitReached:
    return RequeueLimitReached(
        f"job {job_id} reached the walltime {max_requeues + 1} times and requeued itself {max_requeues} "
        f"time(s), the most --max-requeues allows; it stops here. The checkpoint at epoch {outcome.epoch} "
        f"iteration {outcome.iteration} in {outcome.folder} is complete.",
        hint="submit the same command again to continue from it, with a longer --time or a higher "
        "--max-requeues.",
    )


def no_progress_error(outcome: Stopped, why: str, job_id: str | None) -> NoProgress:
    return NoProgress(
        f"job {job_id}: {why}; it stops here instead of requeueing again. "
        f"The checkpoint at epoch {outcome.epoch} iteration {outcome.iteration} in {outcome.folder} is "
        "complete.",
        hint="raise --time (and --time-min, if given) so that a start has time for its start-up, some "
        "iterations and a checkpoint, then submit the same command again to continue.",
    )


def resubmit_limit_error(outcome: Stopped, max_requeues: int, job_id: str | None) -> RequeueLimitReached:
    return RequeueLimitReached(
        f"job {job_id} was preempted on a partition that does not requeue, and the run was already "
        f"resubmitted {max_requeues} time(s), the most --max-requeues allows; it stops here. The "
        f"checkpoint at epoch {outcome.epoch} iteration {outcome.iteration} in {outcome.folder} "
        "is complete.",
        hint="submit the same command again to continue from it (on a partition without preemption, or "
        "with a higher --max-requeues).",
    )


def resubmit_run(events: EventLog, env: SlurmEnvironment, resubmit: Resubmit, left: int) -> str:
    """Submit the run again as a new job that starts once this one ended; record both ids."""
    old = env.qualified_id
    assert old is not None
    try:
        new = resubmit(old)
    except Exception as error:
        events.append(
            Event.DECISION,
            job_id=env.event_job_id,
            kind=StopKind.RESUBMIT_FAILED,
            requeue_self=False,
            error=str(error),
        )
        logger.error("job %s: resubmitting the preempted run failed: %s", old, error)
        raise
    events.append(
        Event.RESUBMITTED,
        job_id=new.job_id,
        old_job_id=env.event_job_id,
        by=BY_NNSLURM,
        reason="preemption",
        log_folder=new.log_folder,
        resubmissions_left=left,
    )
    logger.warning(
        "job %s on %s: preempted and SLURM will not requeue it; resubmitted the run as job %s "
        "(starts once this job ended; resubmissions left: %d)",
        old,
        socket.gethostname(),
        new.job_id,
        left,
    )
    _redirect_dependants(old, new.job_id)
    return new.job_id


def _redirect_dependants(old: str, new: str) -> None:
    """A chain's jobs that wait for this one wait for the resubmitted job instead (before this one
    ends: its end as preempted would cancel them)."""
    from nnslurm.scheduler.redirect import redirect_dependants

    try:
        redirect_dependants(old, new)
    except Exception:  # the run itself is safe: its new job is queued
        logger.exception("job %s: could not point the chain's dependants at job %s", old, new)


@contextlib.contextmanager
def _ignoring_term() -> Iterator[None]:
    """SLURM sends TERM around a requeue; the decision's records must still be written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_requeue(
    job_id: str,
    restart_count: int,
    seconds: float,
    clock: Clock = SYSTEM_CLOCK,
    poll_s: float = POLL_S,
) -> JobInfo | None:
    """Poll scontrol until the job is no longer running this incarnation (requeued, cancelled).

    Asks once more at the deadline, then gives up with the last answer."""
    until = clock.monotonic() + seconds
    last: JobInfo | None = None
    while True:
        try:
            last = job_info(job_id)
        except (CommandError, SchedulerError) as error:
            logger.debug("job %s: %s", job_id, error)
        else:
            if last.restarts > restart_count or not is_running(last.state):
                return last
        if clock.monotonic() >= until:
            return last
        clock.sleep(poll_s)


def finish_preemption(
    events: EventLog,
    env: SlurmEnvironment,
    evidence: StopEvidence,
    requeue_job: Callable[[str], None],
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Stay alive until SLURM requeues the preempted job; requeue it ourselves if it does not."""
    job_id = env.qualified_id
    assert job_id is not None
    left = evidence.info.time_left() if evidence.info else None
    wait_s = max(0.0, left or 0.0) + REQUEUE_WAIT_MARGIN_S
    logger.info(
        "job %s on %s: checkpoint written; waiting up to %s for SLURM to requeue the preempted job",
        job_id,
        socket.gethostname(),
        describe(wait_s),
    )
    started = clock.monotonic()
    info = wait_for_requeue(job_id, env.restart_count, wait_s, clock)
    waited = round(clock.monotonic() - started, 1)
    if info is not None and info.restarts > env.restart_count:
        events.append(
            Event.REQUEUED, job_id=env.event_job_id, reason="preemption", by=BY_SLURM, waited_s=waited
        )
        logger.info("job %s: SLURM requeued it after %.1f s (Restarts=%d)", job_id, waited, info.restarts)
        return
    if info is not None and not is_running(info.state):
        events.append(
            Event.DECISION,
            job_id=env.event_job_id,
            kind=StopKind.CANCEL,
            requeue_self=False,
            waited_s=waited,
            reason=f"preempted, then JobState={info.state} without a requeue (PreemptMode=CANCEL "
            "or scancel): not requeueing",
        )
        logger.warning(
            "job %s: preempted and ended as %s without a requeue; resubmit to resume", job_id, info.state
        )
        return
    events.append(
        Event.REQUEUED,
        job_id=env.event_job_id,
        reason="preemption",
        by=BY_NNSLURM,
        waited_s=waited,
        note="SLURM had not requeued the preempted job by the end of its grace time",
    )
    logger.warning(
        "job %s: SLURM did not requeue the preempted job within %.0f s; requeueing it", job_id, waited
    )
    requeue_job(job_id)
