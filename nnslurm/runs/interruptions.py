"""Every segment of a run that did not finish is an *interruption*, of one `Kind`, decided by the
evidence the job recorded ("decision", "requeued") and by `nnslurm cancel`'s "cancel_requested",
never by timing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nnslurm.runs.history import History, Outcome, Point, Segment
from nnslurm.slurm.states import requeue_cause
from nnslurm.slurm.stop_kinds import StopKind


class Kind(StrEnum):
    """Interruption kinds, in the order they are shown."""

    WALLTIME = "walltime"  # the walltime warning or the time limit: the job requeued itself
    PREEMPTION = "preemption"  # preempted: SLURM requeued (or will requeue) the job
    REQUEUE = "requeue"  # `scontrol requeue` from outside
    CANCEL = "cancel"  # scancel / `nnslurm cancel`
    KILL = "kill"  # no stop event at all: SIGKILL, OOM, a node failure SLURM did not record
    NODE_FAILURE = "node failure"  # the node went down (sacct NODE_FAIL): SLURM requeued the job
    SIGNAL = "signal"  # a stop signal with no scheduler behind it (plain `nnslurm train`, kill -TERM)
    FAILURE = "failure"  # the trainer raised; the run was started again afterwards


KINDS = tuple(Kind)
# A cancel record explains a segment's end when written before it, or this soon after (the job may
# write its stop record before `nnslurm cancel` writes its own).
CANCEL_WINDOW_S = 120.0
_WALLTIME_DECISIONS = (StopKind.WALLTIME, StopKind.TIMELIMIT, StopKind.LIMIT, StopKind.NO_PROGRESS)
# Preempted: requeued by SLURM, or (where SLURM does not requeue) resubmitted by nnslurm.
_PREEMPTION_DECISIONS = (
    StopKind.PREEMPTION,
    StopKind.RESUBMIT,
    StopKind.RESUBMIT_LIMIT,
    StopKind.RESUBMIT_FAILED,
)


@dataclass(frozen=True)
class Interruption:
    kind: Kind
    time: float  # end of the interrupted segment (its last record)
    job_id: str | None
    segment: int  # index of the interrupted segment
    furthest: Point | None  # the furthest position recorded before it
    resumed_at: Point | None  # where the next segment started (None: not restarted yet)
    signal: str | None
    reason: str  # the evidence, in words


def interruptions(history: History, last_is_running: bool = False) -> list[Interruption]:
    """Every segment that did not finish, with its kind; the last one only once it has ended."""
    found = []
    segments = history.segments
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        if segment.outcome == Outcome.FINISHED or (
            is_last and segment.outcome == Outcome.OPEN and last_is_running
        ):
            continue
        kind, reason = classify(segment, history.cancel_requests, history.interrupted)
        following = segments[index + 1] if not is_last else None
        found.append(
            Interruption(
                kind=kind,
                time=segment.end,
                job_id=segment.job_id,
                segment=index,
                furthest=_furthest(history, segment),
                resumed_at=following.start_point if following else None,
                signal=segment.signal,
                reason=reason,
            )
        )
    return found


def classify(
    segment: Segment,
    cancel_requests: Iterable[Mapping[str, Any]] = (),
    interrupted: Iterable[Mapping[str, Any]] = (),
) -> tuple[Kind, str]:
    """(kind, evidence) of the end of a segment that did not finish (`interrupted`: the
    "interrupted" records a restart wrote about the start before it)."""
    if segment.outcome == Outcome.FAILED:
        return Kind.FAILURE, segment.error or "the trainer raised"
    request = cancel_request_for(segment, cancel_requests, window_s=CANCEL_WINDOW_S)
    if segment.outcome == Outcome.OPEN:
        if request is not None:
            return Kind.CANCEL, f"cancelled by {request.get('by', 'a user')}; the process left no stop record"
        told = restart_record_for(segment, interrupted)
        if told is not None and requeue_cause(told.get("accounting")) == Kind.NODE_FAILURE:
            return Kind.NODE_FAILURE, str(told.get("reason") or "node failure (sacct NODE_FAIL)")
        return Kind.KILL, "no stop record: killed without a signal (SIGKILL, out of memory, node failure)"
    causes = (requeue_cause(segment.accounting), segment.requeue_reason)  # sacct's word, the job's record
    if Kind.NODE_FAILURE in causes:
        return Kind.NODE_FAILURE, segment.decision_reason or "node failure: requeued by SLURM"
    decision = segment.decision
    if decision in _WALLTIME_DECISIONS:
        return Kind.WALLTIME, segment.decision_reason or "walltime"
    if decision in _PREEMPTION_DECISIONS:
        return Kind.PREEMPTION, segment.decision_reason or "preempted"
    if decision == StopKind.REQUEUED:
        if Kind.PREEMPTION in causes:
            return Kind.PREEMPTION, segment.decision_reason or "preempted and requeued by SLURM"
        return Kind.REQUEUE, segment.decision_reason or "requeued from outside"
    if decision == StopKind.CANCEL or request is not None:
        who = f" by {request.get('by', 'a user')}" if request is not None else ""
        return Kind.CANCEL, f"cancelled{who}" + (
            f" ({segment.decision_reason})" if segment.decision_reason else ""
        )
    return (
        Kind.SIGNAL,
        segment.decision_reason or f"SIG{segment.signal or '?'} with no scheduler event behind it",
    )


def cancel_request_for(
    segment: Segment, requests: Iterable[Mapping[str, Any]], window_s: float | None = None
) -> Mapping[str, Any] | None:
    """The `nnslurm cancel` record aimed at this segment's job or process, written after it began
    (and, with `window_s`, no later than that after its last record: the cause of its end)."""
    for request in requests:
        when = float(request.get("time", 0))
        if when < segment.start or (window_s is not None and when > segment.end + window_s):
            continue
        if segment.job_id and request.get("job_id") == segment.job_id:
            return request
        if segment.pid is not None and request.get("target_pid") == segment.pid:
            return request
    return None


def restart_record_for(
    segment: Segment, interrupted: Iterable[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The "interrupted" record the next start of the segment's job wrote about it."""
    for record in interrupted:
        if (
            segment.job_id
            and record.get("job_id") == segment.job_id
            and float(record.get("time", 0)) > segment.end
        ):
            return record
    return None


def _furthest(history: History, segment: Segment) -> Point | None:
    if not segment.points:
        return None
    return max(segment.points, key=lambda point: (history.iterations(point), point.time))


def iterations_redone(history: History, found: Sequence[Interruption]) -> int:
    """Sum over restarts of (furthest position recorded before) - (position resumed from)."""
    total = 0
    for interruption in found:
        if interruption.furthest is None or interruption.resumed_at is None:
            continue
        total += max(
            0, history.iterations(interruption.furthest) - history.iterations(interruption.resumed_at)
        )
    return total
