"""Runs under $nnUNet_results: where each one stands, read from its event log and the scheduler.

A run folder's `nnslurm_events.jsonl` is cut into *segments*, one per process that trained (from
its "resumed"/"started" to its last record). A segment ends in one of: "finished", "failed",
"stopped" (a stop signal, a complete checkpoint), or nothing at all: the process was killed
without a signal (SIGKILL, out of memory, node failure). Every segment that did not finish is an
*interruption*, of one kind (KINDS), decided by the evidence the job recorded ("decision",
"requeued") and by `nnslurm cancel`'s "cancel_requested", never by timing.

The state of a run (STATES) comes from the log, merged with squeue/sacct for SLURM jobs when
those commands answer (through nnslurm.slurm.run_command); without them the log alone decides.
Nothing here imports torch: `nnslurm status` stays fast on a login node.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnslurm.errors import CommandError, NnslurmError
from nnslurm.events import EVENTS_FILE, EventLog

logger = logging.getLogger(__name__)

SCHEMA = "nnslurm.status/1"
# Interruption kinds, in the order they are shown.
WALLTIME = "walltime"  # the walltime warning or the time limit: the job requeued itself
PREEMPTION = "preemption"  # preempted: SLURM requeued (or will requeue) the job
REQUEUE = "requeue"  # `scontrol requeue` from outside
CANCEL = "cancel"  # scancel / `nnslurm cancel`
KILL = "kill"  # no stop event at all: SIGKILL, OOM, node failure
SIGNAL = "signal"  # a stop signal with no scheduler behind it (plain `nnslurm train`, kill -TERM)
FAILURE = "failure"  # the trainer raised; the run was started again afterwards
KINDS = (WALLTIME, PREEMPTION, REQUEUE, CANCEL, KILL, SIGNAL, FAILURE)
STATES = (
    "pending",  # submitted, not started yet
    "running",  # a training process is at work
    "requeued",  # interrupted and queued again (walltime, requeue from outside)
    "preempted",  # preempted; SLURM requeues it
    "stopped",  # stopped with a complete checkpoint, nothing will restart it: run it again
    "killed",  # the last process died without a stop event and nothing restarts it
    "finished",
    "failed",
    "cancelled",
    "unknown",  # a folder with checkpoints but no event log (plain nnU-Net)
)
TERMINAL_STATES = ("finished", "failed", "cancelled")
# A cancel record explains a segment's end when written before it, or this soon after (the job may
# write its stop record before `nnslurm cancel` writes its own).
CANCEL_WINDOW_S = 120.0
SEGMENT_EVENTS = ("resumed", "started")
POSITION_EVENTS = ("resumed", "started", "signal", "checkpoint", "stopped", "decision", "finished")
# Records written by the training process (a different process starts a new segment). Others
# ("submitted", "cancel_requested", anything newer) belong to the run, not to a segment.
TRAINING_EVENTS = (*POSITION_EVENTS, "requeued", "failed")
_FOLDER = re.compile(r"^(?P<trainer>.+)__(?P<plans>.+)__(?P<configuration>[^_].*)$")
_SCHEDULER_TIMEOUT_S = 15.0
_ACTIVE = ("RUNNING", "CONFIGURING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT")
_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT")
_ENDED_BADLY = ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "TIMEOUT", "COMPLETED")


class RunNotFound(NnslurmError):
    """A run folder or job id names no run with an event log."""


# --- the event log, cut into segments ----------------------------------------------------------


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
    outcome: str  # finished | failed | stopped | open (no closing record: killed, or still running)
    signal: str | None = None  # the stop signal
    decision: str | None = None  # "decision" kind (nnslurm.slurm: walltime, preemption, ...)
    decision_reason: str | None = None
    accounting: str | None = None  # sacct State the decision saw
    requeued_by: str | None = None  # "nnslurm" or "slurm" ("requeued" record)
    requeue_reason: str | None = None  # walltime | preemption | external
    error: str | None = None  # "failed" record's error

    @property
    def start_point(self) -> Point | None:
        return self.points[0] if self.points else None

    @property
    def last_point(self) -> Point | None:
        return max(self.points, key=lambda point: point.time) if self.points else None


@dataclass(frozen=True)
class Interruption:
    kind: str  # one of KINDS
    time: float  # end of the interrupted segment (its last record)
    job_id: str | None
    segment: int  # index of the interrupted segment
    furthest: Point | None  # the furthest position recorded before it
    resumed_at: Point | None  # where the next segment started (None: not restarted yet)
    signal: str | None
    reason: str  # the evidence, in words


@dataclass(frozen=True)
class History:
    """Everything the event log of one run folder says."""

    folder: Path
    records: tuple[Mapping[str, Any], ...]
    segments: tuple[Segment, ...]
    checkpoints: tuple[Checkpoint, ...]
    submitted: tuple[Mapping[str, Any], ...]
    cancel_requests: tuple[Mapping[str, Any], ...]
    num_epochs: int | None
    iterations_per_epoch: int | None

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

    @property
    def last_submission(self) -> Mapping[str, Any] | None:
        return self.submitted[-1] if self.submitted else None

    def position(self) -> Point | None:
        """The newest recorded position."""
        points = [point for segment in self.segments for point in segment.points]
        return max(points, key=lambda point: point.time) if points else None


def read_history(folder: Path) -> History:
    """Parse a run folder's event log; tolerant of records with missing fields."""
    records = tuple(
        record
        for record in EventLog(folder).read()
        if isinstance(record, dict) and _number(record.get("time"))
    )
    started = [record for record in records if record.get("event") == "started"]
    iterations_per_epoch = _last_int(started, "iterations_per_epoch")
    num_epochs = _last_int(started, "num_epochs")
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
    checkpoints = tuple(
        Checkpoint(
            time=float(record["time"]),
            file=str(record.get("path", "?")),
            epoch=_int(record.get("epoch")),
            iteration=_int(record.get("iteration")),
            reason=str(record.get("reason", "?")),
        )
        for record in records
        if record.get("event") == "checkpoint"
    )
    return History(
        folder=folder,
        records=records,
        segments=tuple(segments),
        checkpoints=checkpoints,
        submitted=tuple(record for record in records if record.get("event") == "submitted"),
        cancel_requests=tuple(record for record in records if record.get("event") == "cancel_requested"),
        num_epochs=num_epochs,
        iterations_per_epoch=iterations_per_epoch,
    )


def _starts_segment(record: Mapping[str, Any], current: Sequence[Mapping[str, Any]]) -> bool:
    """A new process, or a new start: "started" right after its own "resumed" continues it."""
    last = current[-1]
    same_process = record.get("pid") == last.get("pid") and record.get("host") == last.get("host")
    if not same_process:
        return True
    event = record.get("event")
    if event == "resumed":
        return True
    if event == "started":
        return any(item.get("event") == "started" for item in current)
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
    if "finished" in by_event:
        outcome = "finished"
    elif "failed" in by_event:
        outcome = "failed"
    elif "stopped" in by_event or "decision" in by_event or "requeued" in by_event:
        outcome = "stopped"
    else:
        outcome = "open"
    stopped = by_event.get("stopped") or by_event.get("signal") or {}
    decisions = [record for record in records if record.get("event") == "decision"]
    decision = decisions[-1] if decisions else {}  # a preemption's later record overrides
    requeued = by_event.get("requeued", {})
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
        error=by_event.get("failed", {}).get("error"),
    )


# --- interruptions -----------------------------------------------------------------------------


def interruptions(history: History, last_is_running: bool = False) -> list[Interruption]:
    """Every segment that did not finish, with its kind; the last one only once it has ended."""
    found = []
    segments = history.segments
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        if segment.outcome == "finished" or (is_last and segment.outcome == "open" and last_is_running):
            continue
        kind, reason = classify(segment, history.cancel_requests)
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


def classify(segment: Segment, cancel_requests: Iterable[Mapping[str, Any]] = ()) -> tuple[str, str]:
    """(kind, evidence) of the end of a segment that did not finish."""
    if segment.outcome == "failed":
        return FAILURE, segment.error or "the trainer raised"
    request = cancel_request_for(segment, cancel_requests, window_s=CANCEL_WINDOW_S)
    if segment.outcome == "open":
        if request is not None:
            return CANCEL, f"cancelled by {request.get('by', 'a user')}; the process left no stop record"
        return KILL, "no stop record: killed without a signal (SIGKILL, out of memory, node failure)"
    decision = segment.decision
    if decision in ("walltime", "timelimit", "requeue-limit"):
        return WALLTIME, segment.decision_reason or "walltime"
    if decision == "preemption":
        return PREEMPTION, segment.decision_reason or "preempted"
    if decision == "requeued":
        if segment.accounting == "PREEMPTED" or segment.requeue_reason == "preemption":
            return PREEMPTION, segment.decision_reason or "preempted and requeued by SLURM"
        return REQUEUE, segment.decision_reason or "requeued from outside"
    if decision == "cancel" or request is not None:
        who = f" by {request.get('by', 'a user')}" if request is not None else ""
        return CANCEL, f"cancelled{who}" + (
            f" ({segment.decision_reason})" if segment.decision_reason else ""
        )
    return SIGNAL, segment.decision_reason or f"SIG{segment.signal or '?'} with no scheduler event behind it"


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


# --- the scheduler -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerJob:
    job_id: str
    state: str  # squeue %T or sacct State (first word): PENDING, RUNNING, CANCELLED, ...
    reason: str  # squeue %r ("" from sacct)
    source: str  # squeue | sacct


def is_slurm_job(job_id: str | None) -> bool:
    return bool(job_id) and re.fullmatch(r"\d+(_\d+)?", str(job_id)) is not None


def query_scheduler(job_ids: Iterable[str]) -> dict[str, SchedulerJob] | None:
    """squeue for jobs SLURM still knows, sacct for the ended ones; None without SLURM."""
    from nnslurm.slurm import run_command

    wanted = sorted({job for job in job_ids if is_slurm_job(job)})
    if not wanted:
        return {}
    found: dict[str, SchedulerJob] = {}
    try:
        result = run_command(
            ["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(wanted)], _SCHEDULER_TIMEOUT_S
        )
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0] in wanted:
                reason = parts[2] if len(parts) > 2 else ""
                found[parts[0]] = SchedulerJob(parts[0], parts[1].strip(), reason.strip(), "squeue")
    except CommandError as error:
        if error.returncode == 127 or error.returncode is None:
            logger.debug("no scheduler: %s", error)
            return None
        if "invalid job id" not in (error.stderr + error.stdout).lower():
            logger.warning("squeue failed; states come from the event logs only: %s", error)
            return None
    missing = [job for job in wanted if job not in found]
    if missing:
        found.update(_sacct(missing))
    return found


def _sacct(job_ids: Sequence[str]) -> dict[str, SchedulerJob]:
    from nnslurm.slurm import run_command

    try:
        result = run_command(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)], _SCHEDULER_TIMEOUT_S
        )
    except CommandError as error:
        logger.debug("sacct failed: %s", error)
        return {}
    found = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] in job_ids and parts[1].strip():
            found[parts[0]] = SchedulerJob(parts[0], parts[1].split()[0], "", "sacct")
    return found


# --- where a run stands ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunName:
    """$nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION/fold_FOLD"""

    dataset: str
    trainer: str
    plans: str
    configuration: str
    fold: str

    @classmethod
    def of_folder(cls, folder: Path) -> RunName:
        match = _FOLDER.match(folder.parent.name)
        fold = folder.name.removeprefix("fold_")
        if match is None:
            return cls(folder.parent.parent.name, folder.parent.name, "?", "?", fold)
        return cls(folder.parent.parent.name, match["trainer"], match["plans"], match["configuration"], fold)


@dataclass(frozen=True)
class RunStatus:
    """One row of `nnslurm status` (see `to_json` for the documented schema)."""

    folder: Path
    name: RunName
    state: str  # one of STATES
    detail: str  # the state in words ("cancelled by user", "walltime: requeued", ...)
    executor: str  # slurm | local | none
    job_id: str | None
    job_ids: tuple[str, ...]
    scheduler_state: str | None
    epoch: int | None
    iteration: int | None
    num_epochs: int | None
    iterations_per_epoch: int | None
    starts: int
    interruptions: Mapping[str, int]
    checkpoint: Checkpoint | None
    checkpoint_age_s: float | None
    iterations_per_s: float | None
    remaining_s: float | None
    eta: float | None  # when training should end (only while running)
    last_error: str | None
    last_event: str | None
    last_event_time: float | None
    iterations_redone: int = 0
    history: History | None = field(default=None, repr=False, compare=False)

    @property
    def progress(self) -> float | None:
        if self.epoch is None or not self.num_epochs:
            return None
        per_epoch = self.iterations_per_epoch or 0
        done = self.epoch + ((self.iteration or 0) / per_epoch if per_epoch else 0.0)
        return min(1.0, done / self.num_epochs)

    def to_json(self) -> dict[str, Any]:
        checkpoint = None
        if self.checkpoint is not None:
            checkpoint = {
                "file": self.checkpoint.file,
                "epoch": self.checkpoint.epoch,
                "iteration": self.checkpoint.iteration,
                "reason": self.checkpoint.reason,
                "time": iso_time(self.checkpoint.time),
                "age_s": _round(self.checkpoint_age_s),
            }
        return {
            "folder": str(self.folder),
            "dataset": self.name.dataset,
            "configuration": self.name.configuration,
            "trainer": self.name.trainer,
            "plans": self.name.plans,
            "fold": self.name.fold,
            "state": self.state,
            "detail": self.detail,
            "executor": self.executor,
            "job_id": self.job_id,
            "job_ids": list(self.job_ids),
            "scheduler_state": self.scheduler_state,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "num_epochs": self.num_epochs,
            "iterations_per_epoch": self.iterations_per_epoch,
            "progress": _round(self.progress, 4),
            "starts": self.starts,
            "interruptions": dict(self.interruptions),
            "interruptions_total": sum(self.interruptions.values()),
            "iterations_redone": self.iterations_redone,
            "newest_checkpoint": checkpoint,
            "iterations_per_s": _round(self.iterations_per_s, 3),
            "remaining_s": _round(self.remaining_s),
            "eta": iso_time(self.eta) if self.eta is not None else None,
            "last_error": self.last_error,
            "last_event": self.last_event,
            "last_event_time": iso_time(self.last_event_time) if self.last_event_time else None,
        }


def discover(results: Path, dataset: str | None = None) -> list[Path]:
    """Run folders under `results` (DATASET/TRAINER__PLANS__CONFIG/fold_X) with a log or checkpoints."""
    folders = []
    for folder in sorted(results.glob("Dataset*/*__*__*/fold_*")):
        if not folder.is_dir() or (
            dataset is not None and not dataset_matches(folder.parents[1].name, dataset)
        ):
            continue
        if (folder / EVENTS_FILE).is_file() or any(folder.glob("checkpoint_*.pth")):
            folders.append(folder)
    return folders


def dataset_matches(name: str, wanted: str) -> bool:
    """'Dataset501_Synthetic' matches '501', '0501' and its own name."""
    text = wanted.strip()
    if text.isdigit():
        match = re.match(r"^Dataset(\d{3})_", name)
        return match is not None and int(match.group(1)) == int(text)
    return name == text


def run_status(
    folder: Path,
    scheduler: Mapping[str, SchedulerJob] | None = None,
    now: float | None = None,
    history: History | None = None,
) -> RunStatus:
    """Where one run stands: the event log, merged with the scheduler's view of its newest job."""
    now = time.time() if now is None else now
    history = history if history is not None else read_history(folder)
    name = RunName.of_folder(folder)
    job_id = history.newest_job_id
    sched = (scheduler or {}).get(job_id) if job_id else None
    state, detail, running = _state(history, sched, now)
    found = interruptions(history, last_is_running=running)
    counts = {kind: 0 for kind in KINDS}
    for interruption in found:
        counts[interruption.kind] += 1
    position = history.position()
    checkpoint = history.checkpoints[-1] if history.checkpoints else _checkpoint_on_disk(folder)
    if state == "finished" and history.num_epochs is not None:
        position = Point(history.last_time or now, history.num_epochs, 0, "finished")
    rate = throughput(history)
    remaining = _remaining(history, position, rate, now, running)
    last = history.records[-1] if history.records else None
    failures = [segment.error for segment in history.segments if segment.error]
    return RunStatus(
        folder=folder,
        name=name,
        state=state,
        detail=detail,
        executor=_executor(history, job_id),
        job_id=job_id,
        job_ids=tuple(history.job_ids),
        scheduler_state=sched.state if sched else None,
        epoch=position.epoch if position else None,
        iteration=position.iteration if position else None,
        num_epochs=history.num_epochs,
        iterations_per_epoch=history.iterations_per_epoch,
        starts=len(history.segments),
        interruptions=counts,
        checkpoint=checkpoint,
        checkpoint_age_s=(now - checkpoint.time) if checkpoint else None,
        iterations_per_s=rate,
        remaining_s=remaining,
        eta=(now + remaining) if running and remaining is not None else None,
        last_error=(failures[-1] if state == "failed" and failures else _limit_error(history)),
        last_event=str(last.get("event")) if last else None,
        last_event_time=float(last["time"]) if last else None,
        iterations_redone=iterations_redone(history, found),
        history=history,
    )


def statuses(
    folders: Sequence[Path], use_scheduler: bool = True, now: float | None = None
) -> tuple[list[RunStatus], bool]:
    """Status of many runs with one squeue (and one sacct) call; also whether SLURM answered."""
    histories = [read_history(folder) for folder in folders]
    scheduler: dict[str, SchedulerJob] | None = None
    if use_scheduler:
        newest = [history.newest_job_id for history in histories]
        scheduler = query_scheduler(job for job in newest if job)
    rows = [
        run_status(folder, scheduler, now, history)
        for folder, history in zip(folders, histories, strict=True)
    ]
    return rows, scheduler is not None and any(is_slurm_job(row.job_id) for row in rows)


def _state(history: History, sched: SchedulerJob | None, now: float) -> tuple[str, str, bool]:
    """(state, detail, whether a process is training now)."""
    state, detail = _state_from_log(history)
    if sched is not None:
        state, detail = _merge(state, detail, sched, history)
    if state == "open":
        alive = _alive(history.segments[-1])
        if alive is False:
            state, detail = "killed", "the training process died without a stop record"
        elif sched is not None and alive is None:
            state, detail = "killed", f"the job ended (SLURM: {sched.state}) without a stop record"
        else:
            ago = now - (history.last_time or now)
            state, detail = (
                "running",
                "" if alive else f"unconfirmed: last record {describe_duration(ago)} ago",
            )
    return state, detail, state == "running"


def _state_from_log(history: History) -> tuple[str, str]:
    if not history.segments:
        if history.cancel_requests:
            return (
                "cancelled",
                f"cancelled by {history.cancel_requests[-1].get('by', 'a user')} before it started",
            )
        if history.submitted:
            return "pending", "submitted, not started"
        final = (history.folder / "checkpoint_final.pth").is_file()
        return ("finished", "no event log") if final else ("unknown", "no event log")
    last = history.segments[-1]
    resubmitted = history.last_submission is not None and float(history.last_submission["time"]) > last.end
    if last.outcome == "finished":
        return "finished", ""
    request = cancel_request_for(last, history.cancel_requests)
    if request is not None and not resubmitted:
        return "cancelled", f"cancelled by {request.get('by', 'a user')}"
    if resubmitted:
        return "pending", "submitted again, not started"
    if last.outcome == "failed":
        return "failed", ""
    if last.outcome == "open":
        return "open", ""
    kind, reason = classify(last, history.cancel_requests)
    if kind == WALLTIME:
        if last.decision == "requeue-limit":
            return "stopped", "walltime, --max-requeues used up: submit again to continue"
        return "requeued", "walltime: requeued"
    if kind == PREEMPTION:
        return "preempted", "preempted: SLURM requeues it"
    if kind == REQUEUE:
        return "requeued", "requeued from outside"
    if kind == CANCEL:
        return "cancelled", reason
    return "stopped", f"stopped by SIG{last.signal or '?'}: run the same command to resume"


def _merge(state: str, detail: str, sched: SchedulerJob, history: History) -> tuple[str, str]:
    """The scheduler knows whether the newest job is queued, running or gone ("open": no end record)."""
    reason = f" ({sched.reason})" if sched.reason and sched.reason != "None" else ""
    where = f"SLURM: {sched.state}{reason}"
    started = bool(history.segments)
    if state == "finished":
        return state, detail
    if sched.state in _ACTIVE or (sched.state == "COMPLETING" and state == "open"):
        if state == "cancelled":
            return state, f"{detail}; stopping ({where})"
        if state == "preempted" and history.segments[-1].requeued_by is None:
            return state, f"checkpoint written, waiting out the grace time ({where})"
        return "running", detail if state == "open" else where
    if sched.state in _QUEUED:
        if not started or state == "pending":  # never started, or submitted again
            return "pending", where
        if state in ("preempted", "requeued"):
            return state, f"{detail}; {where}"
        return "requeued", where
    if sched.state == "PREEMPTED" and state == "open":
        return "preempted", where
    if sched.state == "CANCELLED":
        return "cancelled", detail if state == "cancelled" else where
    if sched.state in _ENDED_BADLY and state == "open":
        return "killed", f"the job ended ({where}) without a stop record"
    if sched.state in _ENDED_BADLY and state in ("requeued", "preempted", "pending"):
        return "stopped", f"{where}: not requeued; submit again to continue"
    return state, detail


def _alive(segment: Segment) -> bool | None:
    """Whether the segment's process still runs: None when it ran on another host."""
    if segment.pid is None or segment.host != socket.gethostname():
        return None
    return process_alive(segment.pid)


def process_alive(pid: int) -> bool:
    """Whether `pid` is an nnslurm/submitit process of this host (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return b"nnslurm" in command or b"submitit" in command


def throughput(history: History) -> float | None:
    """Iterations per second over the newest segment that advanced.

    Measured from the segment's first record after its start when that shows progress (start-up
    excluded), else from its start.
    """
    for segment in reversed(history.segments):
        points = sorted(segment.points, key=lambda point: point.time)
        after_start = [point for point in points if point.event not in SEGMENT_EVENTS]
        for first in (*after_start[:1], *points[:1]):
            last = points[-1]
            done = history.iterations(last) - history.iterations(first)
            seconds = last.time - first.time
            if done > 0 and seconds > 0:
                return done / seconds
    return None


def _remaining(
    history: History, position: Point | None, rate: float | None, now: float, running: bool
) -> float | None:
    if position is None or rate is None or history.num_epochs is None:
        return None
    left = history.iterations((history.num_epochs, 0)) - history.iterations(position)
    if left <= 0:
        return 0.0
    seconds = left / rate
    if running:
        seconds -= max(0.0, now - position.time)
    return max(0.0, seconds)


def _executor(history: History, job_id: str | None) -> str:
    if job_id is None:
        return "none"
    if job_id.startswith("local-"):
        return "local"
    return "slurm" if is_slurm_job(job_id) else str((history.last_submission or {}).get("executor", "?"))


def _limit_error(history: History) -> str | None:
    last = history.segments[-1] if history.segments else None
    if last is not None and last.decision == "requeue-limit":
        return last.decision_reason
    return None


def _checkpoint_on_disk(folder: Path) -> Checkpoint | None:
    """Plain nnU-Net folders: the newest checkpoint file by mtime (position unknown)."""
    files = sorted(folder.glob("checkpoint_*.pth"), key=lambda path: path.stat().st_mtime)
    if not files:
        return None
    return Checkpoint(time=files[-1].stat().st_mtime, file=files[-1].name, epoch=-1, iteration=0, reason="?")


# --- finding runs by folder or job id ----------------------------------------------------------


def resolve(target: str, results: Path | None) -> list[tuple[Path, str | None]]:
    """RUN_FOLDER or JOBID -> [(run folder, job id or None)]; an array id names all its tasks."""
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / EVENTS_FILE).is_file():
            raise RunNotFound(
                f"{path} has no {EVENTS_FILE}: not a run folder nnslurm has trained in.",
                hint="pass $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG/fold_N, or a job id.",
            )
        return [(path, None)]
    if results is None:
        raise RunNotFound(
            f"{target!r} is not a folder, and nnUNet_results is not set to look the job id up.",
            hint="pass the run folder, or export nnUNet_results.",
        )
    wanted = target.strip()
    matches: list[tuple[Path, str | None]] = []
    for folder in discover(results):
        history = read_history(folder)
        for job in history.job_ids:
            if job_matches(job, wanted):
                matches.append((folder, job))
    if not matches:
        raise RunNotFound(
            f"no run under {results} has a job {wanted!r} in its event log.",
            hint="`nnslurm status` lists the runs and their job ids.",
        )
    return matches


def job_matches(job: str, wanted: str) -> bool:
    """'123' matches '123' and the array tasks '123_0', ...; 'local-77' and '77' match 'local-77'."""
    return job == wanted or job.startswith(f"{wanted}_") or job == f"local-{wanted}"


# --- formatting --------------------------------------------------------------------------------


def iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def describe_duration(seconds: float | None) -> str:
    """3s, 4m 05s, 2h 07m, 3d 04h."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _last_int(records: Sequence[Mapping[str, Any]], key: str) -> int | None:
    values = [int(record[key]) for record in records if _number(record.get(key))]
    return values[-1] if values else None
