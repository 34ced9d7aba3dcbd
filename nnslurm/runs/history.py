"""A run's event log cut into *segments*, one per process that trained, with its positions and
checkpoints.

A segment runs from its "resumed"/"started" to its last record, and ends in one of `Outcome`:
finished, failed, stopped (a stop signal, a complete checkpoint), or open: no closing record, so
the process is still training or was killed without a signal (SIGKILL, out of memory, node failure).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from nnslurm.runs.events import POSITION_EVENTS, Event, read_events

SEGMENT_EVENTS = (Event.RESUMED, Event.STARTED)
# Records written by the training process (a different process starts a new segment). Others
# ("submitted", "cancel_requested", anything newer) belong to the run, not to a segment.
TRAINING_EVENTS = (*POSITION_EVENTS, Event.REQUEUED, Event.FAILED)
# Records that name a new job of the run: `nnslurm submit`, and a preempted job's resubmission.
SUBMISSION_EVENTS = (Event.SUBMITTED, Event.RESUBMITTED)


class Outcome(StrEnum):
    """How a segment ended, by its own records."""

    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"  # a "stopped", "decision" or "requeued" record
    OPEN = "open"  # no closing record: still training, or killed without a signal


@dataclass(frozen=True)
class Point:
    """A recorded training position: `epoch` to run next, `iteration`s of it done."""

    time: float  # the record's time (seconds since the epoch)
    epoch: int
    iteration: int
    event: str  # which record said so


@dataclass(frozen=True)
class Checkpoint:
    time: float  # when the file was durable
    file: str  # checkpoint_latest.pth, ...
    epoch: int
    iteration: int
    reason: str  # periodic | best | final | stop | timed


@dataclass(frozen=True)
class Segment:
    """One process's stretch of training (one start of a job)."""

    job_id: str | None  # SLURM id ("123", "123_4"), "local-<pid>", or None (plain `nnslurm train`)
    pid: int | None
    host: str | None
    start: float  # its first record
    end: float  # its last record
    points: tuple[Point, ...]
    outcome: Outcome
    signal: str | None = None  # the stop signal
    decision: str | None = None  # "decision" kind (nnslurm.scheduler.policy.StopKind)
    decision_reason: str | None = None
    accounting: str | None = None  # sacct State the decision saw
    requeued_by: str | None = None  # "nnslurm" or "slurm" ("requeued" record)
    requeue_reason: str | None = None  # walltime | preemption | external
    error: str | None = None  # "failed" record's error

    @property
    def start_point(self) -> Point | None:
        return self.points[0] if self.points else None


@dataclass(frozen=True)
class History:
    """Everything the event log of one run folder says."""

    folder: Path
    records: tuple[Mapping[str, Any], ...]
    segments: tuple[Segment, ...]
    checkpoints: tuple[Checkpoint, ...]
    submitted: tuple[Mapping[str, Any], ...]  # "submitted" and "resubmitted" records (each names its job)
    cancel_requests: tuple[Mapping[str, Any], ...]
    interrupted: tuple[Mapping[str, Any], ...]  # what a restart learned ended the start before it
    num_epochs: int | None
    iterations_per_epoch: int | None
    world_size: int | None = None  # ranks of the newest start (-num_gpus); None: never started

    @property
    def first_time(self) -> float | None:
        return self.records[0]["time"] if self.records else None

    @property
    def last_time(self) -> float | None:
        return self.records[-1]["time"] if self.records else None

    def iterations(self, point: Point | tuple[int, int]) -> int:
        """A position in iterations (epoch * iterations per epoch + iteration)."""
        epoch, iteration = (point.epoch, point.iteration) if isinstance(point, Point) else point
        return epoch * (self.iterations_per_epoch or 1) + iteration

    def epochs(self, point: Point) -> float:
        """A position in (fractional) epochs, for plots."""
        per_epoch = self.iterations_per_epoch or 0
        return point.epoch + (point.iteration / per_epoch if per_epoch else 0.0)

    @property
    def job_ids(self) -> list[str]:
        """Every job of the run, oldest first (array tasks as ARRAY_TASK)."""
        ids = [record.get("job_id") for record in self.submitted]
        ids += [segment.job_id for segment in self.segments]
        return list(dict.fromkeys(str(job) for job in ids if job))

    @property
    def newest_job_id(self) -> str | None:
        """The job of the newest submission or start (None: the newest start was a plain `train`)."""
        candidates: list[tuple[float, str | None]] = [
            (float(record.get("time", 0)), str(record["job_id"]))
            for record in self.submitted
            if record.get("job_id")
        ]
        candidates += [(segment.start, segment.job_id) for segment in self.segments]
        return max(candidates, key=lambda candidate: candidate[0])[1] if candidates else None

    def submitted_at(self, job_id: str | None) -> float | None:
        """When the run's job `job_id` was submitted (`submission_time`), or None."""
        return submission_time(self.submitted, job_id)

    @property
    def last_submission(self) -> Mapping[str, Any] | None:
        return self.submitted[-1] if self.submitted else None

    @property
    def resubmitted(self) -> bool:
        """Whether the run was submitted again after its last segment ended."""
        if not self.segments or self.last_submission is None:
            return False
        return float(self.last_submission["time"]) > self.segments[-1].end

    def position(self) -> Point | None:
        """The newest recorded position."""
        points = [point for segment in self.segments for point in segment.points]
        return max(points, key=lambda point: point.time) if points else None


def submission_time(records: Iterable[Mapping[str, Any]], job_id: str | None) -> float | None:
    """When job `job_id` was submitted, by the newest "submitted" or "resubmitted" record naming it
    (written just after sbatch returned; an older one names an older job that had the id before a
    controller's state was reset), or None. What tells the job's accounting records from an older
    job's with the same id (nnslurm.slurm.commands.ours)."""
    times = [
        float(record["time"])
        for record in records
        if job_id
        and record.get("event") in SUBMISSION_EVENTS
        and str(record.get("job_id")) == job_id
        and isinstance(record.get("time"), int | float)
    ]
    return times[-1] if times else None


def read_history(folder: Path) -> History:
    """Parse a run folder's event log; tolerant of records with missing fields."""
    records = read_events(folder)
    started = [record for record in records if record.get("event") == Event.STARTED]
    segments = segments_of(records)
    checkpoints = tuple(
        Checkpoint(
            time=float(record["time"]),
            file=str(record.get("path", "?")),
            epoch=_int(record.get("epoch")),
            iteration=_int(record.get("iteration")),
            reason=str(record.get("reason", "?")),
        )
        for record in records
        if record.get("event") == Event.CHECKPOINT
    )
    return History(
        folder=folder,
        records=records,
        segments=segments,
        checkpoints=checkpoints,
        submitted=tuple(record for record in records if record.get("event") in SUBMISSION_EVENTS),
        cancel_requests=tuple(record for record in records if record.get("event") == Event.CANCEL_REQUESTED),
        interrupted=tuple(record for record in records if record.get("event") == Event.INTERRUPTED),
        num_epochs=_last_int(started, "num_epochs"),
        world_size=_int(started[-1].get("world_size", 1)) or 1 if started else None,
        iterations_per_epoch=_last_int(started, "iterations_per_epoch"),
    )


def segments_of(records: Iterable[Mapping[str, Any]]) -> tuple[Segment, ...]:
    """Event records (oldest first) cut into segments, one per process that trained."""
    segments: list[Segment] = []
    current: list[Mapping[str, Any]] = []
    for record in records:
        if record.get("event") not in TRAINING_EVENTS:
            continue
        if current and _starts_segment(record, current):
            segments.append(_segment(current))
            current = []
        current.append(record)
    if current:
        segments.append(_segment(current))
    return tuple(segments)


def _starts_segment(record: Mapping[str, Any], current: Sequence[Mapping[str, Any]]) -> bool:
    """A new process, or a new start: "started" right after its own "resumed" continues it."""
    last = current[-1]
    same_process = record.get("pid") == last.get("pid") and record.get("host") == last.get("host")
    if not same_process:
        return True
    event = record.get("event")
    if event == Event.RESUMED:
        return True
    if event == Event.STARTED:
        return any(item.get("event") == Event.STARTED for item in current)
    return False


def _segment(records: Sequence[Mapping[str, Any]]) -> Segment:
    points = tuple(
        Point(float(r["time"]), _int(r.get("epoch")), _int(r.get("iteration")), str(r.get("event")))
        for r in records
        if r.get("event") in POSITION_EVENTS and "epoch" in r
    )
    by_event: dict[str, Mapping[str, Any]] = {}
    for record in records:
        by_event.setdefault(str(record.get("event")), record)  # the first of each kind
    if Event.FINISHED in by_event:
        outcome = Outcome.FINISHED
    elif Event.FAILED in by_event:
        outcome = Outcome.FAILED
    elif Event.STOPPED in by_event or Event.DECISION in by_event or Event.REQUEUED in by_event:
        outcome = Outcome.STOPPED
    else:
        outcome = Outcome.OPEN
    stopped = by_event.get(Event.STOPPED) or by_event.get(Event.SIGNAL) or {}
    decisions = [record for record in records if record.get("event") == Event.DECISION]
    decision = decisions[-1] if decisions else {}  # a preemption's later record overrides
    requeued = by_event.get(Event.REQUEUED, {})
    job_id = next((r.get("job_id") for r in records if r.get("job_id")), None)
    return Segment(
        job_id=str(job_id) if job_id else None,
        pid=_int(records[0].get("pid")) if records[0].get("pid") is not None else None,
        host=records[0].get("host"),
        start=float(records[0]["time"]),
        end=float(records[-1]["time"]),
        points=points,
        outcome=outcome,
        signal=stopped.get("signal") or decision.get("signal"),
        decision=decision.get("kind"),
        decision_reason=decision.get("reason"),
        accounting=decision.get("accounting"),
        requeued_by=requeued.get("by"),
        requeue_reason=requeued.get("reason"),
        error=by_event.get(Event.FAILED, {}).get("error"),
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _last_int(records: Sequence[Mapping[str, Any]], key: str) -> int | None:
    values = [int(record[key]) for record in records if _number(record.get(key))]
    return values[-1] if values else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
