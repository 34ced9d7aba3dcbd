"""The append-only event log of a run folder: one JSON object per line, each written whole.

The event names are defined here once (`Event`); `read_events` is the one reader every
interpretation of a log goes through (status and report, `submit --wait`, the demo, the
--max-requeues count).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from nnslurm.slurm.environment import SlurmEnvironment

logger = logging.getLogger(__name__)

EVENTS_FILE = "nnslurm_events.jsonl"


class Event(StrEnum):
    """The "event" of a record; the values are the on-disk names."""

    SUBMITTED = "submitted"  # nnslurm submit: job id, executor, log folder
    STARTED = "started"  # a training process began (epoch, iteration, num_epochs, iterations_per_epoch)
    RESUMED = "resumed"  # ... from a checkpoint (written just before its "started")
    SIGNAL = "signal"  # a stop signal arrived (signal, position)
    CHECKPOINT = "checkpoint"  # a checkpoint file is durable (path, position, reason)
    STOPPED = "stopped"  # stopped with a complete checkpoint (signal, position)
    DECISION = "decision"  # what the stop meant (kind, reason, the evidence): nnslurm.scheduler.policy
    REQUEUED = "requeued"  # the job was requeued (by nnslurm|slurm, reason)
    FINISHED = "finished"  # training completed
    FAILED = "failed"  # the trainer raised (error)
    CANCEL_REQUESTED = "cancel_requested"  # nnslurm cancel (by, method, job id or target pid)
    RESUBMITTED = "resubmitted"  # the run was submitted again as a new job (job_id: the new one, old_job_id)
    INTERRUPTED = "interrupted"  # at a restart: what ended the job's previous start (sacct State, Reason)


# Records that carry a training position (epoch, iteration).
POSITION_EVENTS = (
    Event.RESUMED,
    Event.STARTED,
    Event.SIGNAL,
    Event.CHECKPOINT,
    Event.STOPPED,
    Event.DECISION,
    Event.FINISHED,
)


def _job_fields() -> dict[str, Any]:
    """Who writes: host, pid and, inside a job, its id and (once requeued) restart count."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **SlurmEnvironment.from_environ().record_fields(),
    }


class EventLog:
    """`events.jsonl` of one run folder. Lines are small, so one O_APPEND write keeps each whole."""

    def __init__(self, run_folder: Path) -> None:
        self.path = Path(run_folder) / EVENTS_FILE

    def append(self, event: Event, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": time.time(), **_job_fields(), **fields}
        line = (json.dumps(record, default=str, sort_keys=False) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:  # a full or read-only disk must not turn into a second failure
            logger.warning("could not append %r to %s: %s", str(event), self.path, error)
        return record

    def read(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (a kill mid-write) is skipped with a warning."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        try:  # one parse for the whole log: half the time of one per line (`nnslurm status` reads every log)
            whole: list[Any] = json.loads("[" + ",".join(line for line in lines if line.strip()) + "]")
            return whole
        except json.JSONDecodeError:  # a torn line (never valid JSON joined to whole ones): line by line
            pass
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d is not a complete event record; skipped", self.path, number)
        return records


def read_events(folder: Path) -> tuple[Mapping[str, Any], ...]:
    """A run's event records, oldest first: the complete ones with a time (others are skipped)."""
    return tuple(
        record
        for record in EventLog(folder).read()
        if isinstance(record, dict) and _number(record.get("time"))
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def checkpoint_write_times(records: Iterable[Mapping[str, Any]]) -> list[float]:
    """How long each checkpoint of a run took to become durable (s), oldest first: what a stop
    costs, as measured (the end-time guard's seed; the limit check at submission)."""
    return [
        float(record["seconds"])
        for record in records
        if record.get("event") == Event.CHECKPOINT and _number(record.get("seconds"))
    ]
