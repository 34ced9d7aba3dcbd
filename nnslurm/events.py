"""The append-only event log of a run folder: one JSON object per line, each written whole."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EVENTS_FILE = "nnslurm_events.jsonl"


def _job_fields() -> dict[str, Any]:
    """Who writes: host, pid and, inside SLURM, job id and restart count."""
    fields: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
    if job_id:
        fields["job_id"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    elif os.environ.get("SLURM_JOB_ID"):
        fields["job_id"] = os.environ["SLURM_JOB_ID"]
    elif os.environ.get("SUBMITIT_LOCAL_JOB_ID"):
        fields["job_id"] = "local-" + os.environ["SUBMITIT_LOCAL_JOB_ID"]
    if os.environ.get("SLURM_RESTART_COUNT"):
        fields["restart_count"] = int(os.environ["SLURM_RESTART_COUNT"])
    return fields


class EventLog:
    """`events.jsonl` of one run folder. Lines are small, so one O_APPEND write keeps each whole."""

    def __init__(self, run_folder: Path) -> None:
        self.path = Path(run_folder) / EVENTS_FILE

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
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
            logger.warning("could not append %r to %s: %s", event, self.path, error)
        return record

    def read(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (a kill mid-write) is skipped with a warning."""
        if not self.path.is_file():
            return []
        records = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d is not a complete event record; skipped", self.path, number)
        return records
