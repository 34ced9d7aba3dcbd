"""Where a run stands: one `RunStatus` (a row of `nnslurm status`, and its JSON, schema SCHEMA)
from the run's history, the scheduler's view of its newest job, and whether its process lives.

The state itself is decided in nnslurm.runs.state; squeue/sacct are asked through
nnslurm.slurm.commands, once for all runs.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnslurm.core.processes import process_alive
from nnslurm.core.timeparse import describe, format_time
from nnslurm.runs.discovery import RunName
from nnslurm.runs.history import (
    SEGMENT_EVENTS,
    Checkpoint,
    History,
    Outcome,
    Point,
    Segment,
    read_history,
)
from nnslurm.runs.interruptions import KINDS, interruptions, iterations_redone
from nnslurm.runs.state import LogSays, RunState, run_state, what_the_log_says
from nnslurm.slurm.commands import SchedulerJob, query_scheduler
from nnslurm.slurm.job_ids import is_local_job, is_slurm_job, local_pid
from nnslurm.slurm.stop_kinds import StopKind

SCHEMA = "nnslurm.status/1"  # documented in nnslurm.commands.status (fields only ever added)


@dataclass(frozen=True)
class RunStatus:
    """One row of `nnslurm status` (see `to_json` for the documented schema)."""

    folder: Path
    name: RunName
    state: RunState
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
    time_limit_s: int | None = None  # the newest job's limit now (squeue): what SLURM granted
    time_asked_s: int | None = None  # the --time it was submitted with
    world_size: int | None = None  # ranks of the newest start (-num_gpus); None: never started
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
            "time_limit_s": self.time_limit_s,
            "time_asked_s": self.time_asked_s,
            "world_size": self.world_size,
        }


def run_status(
    folder: Path,
    scheduler: Mapping[str, SchedulerJob] | None = None,
    now: float | None = None,
    history: History | None = None,
) -> RunStatus:
    """Where one run stands: the event log, merged with the scheduler's view of its newest job."""
    now = time.time() if now is None else now
    history = history if history is not None else read_history(folder)
    job_id = history.newest_job_id
    sched = (scheduler or {}).get(job_id) if job_id else None
    state, detail = _state(history, sched, now)
    running = state == RunState.RUNNING
    found = interruptions(history, last_is_running=running)
    counts: dict[str, int] = {kind: 0 for kind in KINDS}
    for interruption in found:
        counts[interruption.kind] += 1
    position = history.position()
    checkpoint = history.checkpoints[-1] if history.checkpoints else _checkpoint_on_disk(folder)
    if state == RunState.FINISHED and history.num_epochs is not None:
        position = Point(history.last_time or now, history.num_epochs, 0, "finished")
    rate = throughput(history)
    remaining = _remaining(history, position, rate, now, running)
    last = history.records[-1] if history.records else None
    failures = [segment.error for segment in history.segments if segment.error]
    granted = sched.time_limit_s if sched else None
    asked = _time_asked(history, job_id)
    if running and (history.world_size or 1) > 1:
        detail += f"; {history.world_size} ranks"
    if running and granted is not None and asked is not None and granted < asked:
        detail += f"; limit {format_time(granted)} of {format_time(asked)} asked (backfill: --time-min)"
    return RunStatus(
        folder=folder,
        name=RunName.of_folder(folder),
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
        last_error=(failures[-1] if state == RunState.FAILED and failures else _limit_error(history)),
        last_event=str(last.get("event")) if last else None,
        last_event_time=float(last["time"]) if last else None,
        iterations_redone=iterations_redone(history, found),
        time_limit_s=granted,
        time_asked_s=asked,
        world_size=history.world_size,
        history=history,
    )


def statuses(
    folders: Sequence[Path], use_scheduler: bool = True, now: float | None = None
) -> tuple[list[RunStatus], bool]:
    """Status of many runs with one squeue (and one sacct) call; also whether SLURM answered."""
    histories = [read_history(folder) for folder in folders]
    scheduler: dict[str, SchedulerJob] | None = None
    if use_scheduler:
        newest = {history.newest_job_id: history for history in histories if history.newest_job_id}
        since = {job: at for job, history in newest.items() if (at := history.submitted_at(job)) is not None}
        scheduler = query_scheduler(newest, since)
    rows = [
        run_status(folder, scheduler, now, history)
        for folder, history in zip(folders, histories, strict=True)
    ]
    return rows, scheduler is not None and any(is_slurm_job(row.job_id) for row in rows)


def _state(history: History, sched: SchedulerJob | None, now: float) -> tuple[RunState, str]:
    """The inputs of nnslurm.runs.state's table, gathered: the log's verdict, SLURM, the process."""
    final = not history.segments and (history.folder / "checkpoint_final.pth").is_file()
    log, words = what_the_log_says(history, final_checkpoint=final)
    alive = segment_alive(history.segments[-1]) if log == LogSays.NO_END_RECORD else None
    ago = describe(now - (history.last_time or now))
    return run_state(log, words, sched, alive, ago)


def segment_alive(segment: Segment) -> bool | None:
    """Whether the segment's process still runs: None when it ran on another host."""
    if segment.pid is None or segment.host != socket.gethostname():
        return None
    return process_alive(segment.pid)


def live_process(history: History, job_id: str | None) -> int | None:
    """The pid on this host that runs (or restarts) the run's job `job_id` (None: a plain `nnslurm
    train`): its open training process, or else submitit's local controller; None if neither lives."""
    segments = [segment for segment in history.segments if segment.job_id == job_id]
    last = segments[-1] if segments else None
    if last is not None and last.pid is not None and last.outcome == Outcome.OPEN and segment_alive(last):
        return last.pid
    controller = local_pid(job_id)
    if controller is not None:
        here = socket.gethostname()
        submitted_here = any(
            record.get("job_id") == job_id and record.get("host") in (None, here)
            for record in history.submitted
        )
        if submitted_here and process_alive(controller):
            return controller
    return None


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


def _time_asked(history: History, job_id: str | None) -> int | None:
    """The --time of the newest job's submission (its "submitted" record), if recorded."""
    for record in reversed(history.submitted):
        if str(record.get("job_id")) == job_id and isinstance(record.get("time_limit_s"), int):
            return int(record["time_limit_s"])
    return None


def _executor(history: History, job_id: str | None) -> str:
    if job_id is None:
        return "none"
    if is_local_job(job_id):
        return "local"
    return "slurm" if is_slurm_job(job_id) else str((history.last_submission or {}).get("executor", "?"))


def _limit_error(history: History) -> str | None:
    last = history.segments[-1] if history.segments else None
    if last is not None and last.decision in (StopKind.LIMIT, StopKind.NO_PROGRESS):
        return last.decision_reason
    return None


def _checkpoint_on_disk(folder: Path) -> Checkpoint | None:
    """Plain nnU-Net folders: the newest checkpoint file by mtime (position unknown)."""
    files = sorted(folder.glob("checkpoint_*.pth"), key=lambda path: path.stat().st_mtime)
    if not files:
        return None
    return Checkpoint(time=files[-1].stat().st_mtime, file=files[-1].name, epoch=-1, iteration=0, reason="?")


def iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
