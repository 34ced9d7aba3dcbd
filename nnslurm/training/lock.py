"""One trainer per output folder: a POSIX lock on a file in the run folder, naming its holder.

The kernel releases the lock when its holder dies, so a lock left by a killed process is never
stale; the file's content only serves the message for the second process. POSIX (fcntl) locks,
unlike flock, are not inherited by forked data-augmentation workers, which may outlive a
SIGKILLed trainer for a moment, and they work on NFS.

Some filesystems have no POSIX locks (lockf fails with ENOSYS, ENOLCK or EOPNOTSUPP: Lustre
or GPFS mounted without them, NFS without lockd). There the lock is an exclusive lock file
(O_CREAT|O_EXCL) naming its holder; nothing releases it when the holder is killed, so a lock
file is taken over only on evidence that its holder is gone: its pid no longer exists on this
host, its SLURM job no longer runs, or it was an earlier start of this very job. A trainer that
has a POSIX lock honours a lock file too: clients may mount one filesystem with and without locks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from nnslurm.core.errors import CommandError, RunLockedError, SchedulerError
from nnslurm.core.processes import pid_exists
from nnslurm.slurm.commands import job_info
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.states import on_nodes

logger = logging.getLogger(__name__)

LOCK_FILE = ".nnslurm.lock"
EXCLUSIVE_FILE = ".nnslurm.lock.exclusive"  # the lock file where the filesystem has no POSIX locks
NO_POSIX_LOCKS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP})
STILL_HELD_HINT = (
    "wait for it to finish or stop it (scancel / nnslurm cancel); two trainers in one folder would "
    "overwrite each other's checkpoints."
)


def lockf(fd: int, operation: int) -> None:
    """fcntl.lockf; the seam tests replace to play a filesystem without POSIX locks."""
    fcntl.lockf(fd, operation)


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder's lock, as its lock file says."""

    pid: int | None
    host: str | None
    job_id: str | None  # SLURM_JOB_ID of the holder, if it ran in a job
    since: str | None

    @classmethod
    def this_process(cls) -> Holder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            job_id=SlurmEnvironment.from_environ().qualified_id,
            since=time.strftime("%Y-%m-%d %H:%M:%S"),
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            info = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(info, dict):
            return None
        pid = info.get("pid")
        return cls(
            pid=pid if isinstance(pid, int) else None,
            host=info.get("host"),
            job_id=str(info["job_id"]) if info.get("job_id") else None,
            since=info.get("since"),
        )

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "job_id": self.job_id, "since": self.since})


class RunLock:
    """One process per folder. `activity` and `hint` make the refusal's message: "FOLDER is already
    being {activity} by another process", and what to do about it (a training's by default)."""

    def __init__(self, run_folder: Path, activity: str = "trained", hint: str = STILL_HELD_HINT) -> None:
        self.activity = activity
        self.hint = hint
        self.path = Path(run_folder) / LOCK_FILE
        self.exclusive_path = Path(run_folder) / EXCLUSIVE_FILE
        self._fd: int | None = None
        self._holds_exclusive_file = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if error.errno in NO_POSIX_LOCKS:
                self._acquire_exclusive_file(error)
                return
            raise RunLockedError(
                f"{self.path.parent} is already being {self.activity} by another process "
                f"({describe(holder)}).",
                hint=self.hint,
            ) from None
        if self.exclusive_path.exists():  # a trainer on a host whose mount has no POSIX locks
            try:
                self._take_over_if_stale()
            except RunLockedError:
                os.close(fd)
                raise
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            # The holder ended without releasing (killed): the kernel dropped its lock already.
            logger.warning(
                "stale lock in %s: %s ended without releasing it; taking over",
                self.path.parent,
                describe(previous),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.this_process().to_json().encode(), 0)
        self._fd = fd

    def _acquire_exclusive_file(self, cause: OSError) -> None:
        logger.warning(
            "the filesystem of %s has no POSIX locks (lockf: %s); locking the run with the lock file %s "
            "instead, which a killed trainer leaves behind: it is taken over when its holder is "
            "evidently gone",
            self.path.parent,
            os.strerror(cause.errno or 0),
            self.exclusive_path.name,
        )
        for _ in range(3):  # a stale file taken over by another process in between: look again
            try:
                fd = os.open(self.exclusive_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            try:
                os.write(fd, Holder.this_process().to_json().encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._holds_exclusive_file = True
            return
        raise RunLockedError(
            f"{self.path.parent}: the lock file {self.exclusive_path.name} keeps being taken by another "
            "process.",
            hint=self.hint,
        )

    def _take_over_if_stale(self) -> None:
        """Remove the lock file if its holder is evidently gone; else refuse, naming the holder."""
        try:
            text = self.exclusive_path.read_text(errors="replace").strip()
            inode = os.stat(self.exclusive_path).st_ino
        except FileNotFoundError:
            return  # released meanwhile
        holder = Holder.parse(text)
        gone = why_gone(holder) if holder is not None else None
        if gone is None:
            raise RunLockedError(
                f"{self.path.parent} is already being {self.activity} by another process ({describe(text)}; "
                f"lock file {self.exclusive_path.name} of a trainer without POSIX locks).",
                hint=self.hint + " If no trainer of this folder runs any more, remove "
                f"{self.exclusive_path}.",
            )
        logger.warning("stale lock file in %s: %s (%s); taking over", self.path.parent, describe(text), gone)
        try:
            if os.stat(self.exclusive_path).st_ino == inode:  # still the file judged stale
                self.exclusive_path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a folder at rest names no holder
            os.close(self._fd)  # closing drops the lock
            self._fd = None
        if self._holds_exclusive_file:
            self.exclusive_path.unlink(missing_ok=True)
            self._holds_exclusive_file = False

    def __enter__(self) -> RunLock:
        if self._fd is None and not self._holds_exclusive_file:
            self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def why_gone(holder: Holder) -> str | None:
    """Evidence that the holder of a lock file no longer runs, or None (it may still run)."""
    me = Holder.this_process()
    if holder.job_id is not None and holder.job_id == me.job_id and holder.pid != me.pid:
        return f"it was an earlier start of this SLURM job {holder.job_id}"  # a job runs one start at a time
    if holder.host == me.host and holder.pid is not None:
        if not pid_exists(holder.pid):
            return f"pid {holder.pid} is gone on {holder.host}"
        return None
    if holder.job_id is not None:
        state = slurm_job_state(holder.job_id)
        if state is not None and not on_nodes(state):  # its processes can no longer run
            return f"its SLURM job {holder.job_id} is {state}"
    return None


def slurm_job_state(job_id: str) -> str | None:
    """The job's JobState from `scontrol show job`, "gone from SLURM" when SLURM no longer knows
    it, None when SLURM cannot be asked."""
    try:
        return job_info(job_id, timeout=15).state
    except CommandError as error:
        if "invalid job id" in (error.stderr + error.stdout).lower():
            return "gone from SLURM"
        logger.debug("cannot ask SLURM about job %s: %s", job_id, error)
        return None
    except SchedulerError as error:
        logger.debug("cannot read SLURM's answer about job %s: %s", job_id, error)
        return None


def describe(holder_json: str) -> str:
    holder = Holder.parse(holder_json)
    if holder is None:
        return "holder unknown"
    parts = [f"pid {holder.pid} on {holder.host}"]
    if holder.job_id:
        parts.append(f"SLURM job {holder.job_id}")
    parts.append(f"since {holder.since}")
    return ", ".join(parts)
