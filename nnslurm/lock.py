"""One trainer per output folder: a POSIX lock on a file in the run folder, naming its holder.

The kernel releases the lock when its holder dies, so a lock left by a killed process is never
stale; the file's content only serves the message for the second process. POSIX (fcntl) locks,
unlike flock, are not inherited by forked data-augmentation workers, which may outlive a
SIGKILLed trainer for a moment, and they work on NFS.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from nnslurm.errors import RunLockedError

logger = logging.getLogger(__name__)

LOCK_FILE = ".nnslurm.lock"


class RunLock:
    def __init__(self, run_folder: Path) -> None:
        self.path = Path(run_folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is already being trained by another process ({describe(holder)}).",
                hint="wait for it to finish or stop it (scancel / nnslurm cancel); two trainers in one "
                "folder would overwrite each other's checkpoints.",
            ) from None
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            # The holder ended without releasing (killed): the kernel dropped its lock already.
            logger.warning(
                "stale lock in %s: %s ended without releasing it; taking over",
                self.path.parent,
                describe(previous),
            )
        holder_info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a folder at rest names no holder
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def describe(holder_json: str) -> str:
    try:
        info = json.loads(holder_json)
    except json.JSONDecodeError:
        return "holder unknown"
    parts = [f"pid {info.get('pid')} on {info.get('host')}"]
    if info.get("job_id"):
        parts.append(f"SLURM job {info['job_id']}")
    parts.append(f"since {info.get('since')}")
    return ", ".join(parts)
