"""A stage's units: running one between stop checks, and the "this unit is done" markers.

Markers are small JSON records, written atomically (nnslurm.core.files) once the unit completed.

A unit is done when its marker says so, never because nnU-Net's output files exist: nnU-Net writes
them in place (a kill leaves a torn plans file, half a preprocessed folder), so their presence
proves nothing. A marker is written after the unit's last file (temp, fsync, replace, fsync the
folder), so a kill at any instant leaves either no marker (the unit is redone whole) or a complete
one. A marker that does not parse is treated as absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnslurm.core.files import fsync_folder, write_json
from nnslurm.workflow.stage import StopCheck

logger = logging.getLogger(__name__)


def run_unit(check: StopCheck, phase: str, work: Callable[[], None]) -> None:
    """One unit: the stop check before it, the work, counted as done.

    A unit that fails after a stop was requested counts as interrupted, not failed: SLURM signals
    every process of a step, and nnU-Net's spawned pool workers (which have no handlers) die of
    the signal, so the pool raises ("Some background worker is 6 feet under"). The unit is redone
    whole at the next start, like one the watchdog abandoned.
    """
    check(phase)
    try:
        work()
    except Exception as error:
        if check.monitor.request is None:
            raise
        logger.warning("%s failed after the stop signal (%s); it is redone at the next start", phase, error)
        check(phase)  # raises StageStopped
        raise
    check.unit_done()


def write_marker(path: Path, record: dict[str, Any]) -> None:
    """`record` (plus the time) as `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**record, "time": time.time()}, indent=2, default=str)


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's record, or None when the unit is not done (no marker, or not a JSON object)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def remove_marker(path: Path) -> None:
    """The unit is no longer done (about to be redone): the marker goes first, durably."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_folder(path.parent)


def file_sha256(path: Path) -> str | None:
    """What a marker records of a file it vouches for; None when the file is missing."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
