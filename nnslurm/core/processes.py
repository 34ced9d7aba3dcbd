"""Processes: whether one still lives, this process's environment scoped, children that die with it.

Whether a pid lives is asked here only: `pid_exists` (the lock: any process of any user) and
`process_alive` (status and cancel: an nnslurm or submitit process, not a reused pid).

Child processes of the trainer must not outlive it: nnU-Net's data-augmentation workers are
forked daemons; when the trainer is killed without a chance to stop them (SIGKILL, OOM killer),
they are orphaned and keep spinning, each holding hundreds of MB. Every child forked from the
training process asks the kernel to kill it when its parent dies (Linux PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_registered = False


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the trainer's own shutdown still stops its workers


def children_die_with_this_process() -> None:
    """Idempotent; only on Linux."""
    global _registered
    if _registered or not sys.platform.startswith("linux"):
        return
    os.register_at_fork(after_in_child=_die_with_parent)
    _registered = True


def kill_children() -> None:
    """Last resort before os._exit: stop multiprocessing children this process started."""
    for child in multiprocessing.active_children():
        child.kill()


def pid_exists(pid: int) -> bool:
    """Whether a process `pid` exists on this host (another user's counts: kill(0) says EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_alive(pid: int, names: tuple[bytes, ...] = (b"nnslurm", b"submitit")) -> bool:
    """Whether `pid` is a process of this host whose command line names one of `names` (by default
    an nnslurm or submitit process): a pid reused by an unrelated program is not alive here."""
    if not pid_exists(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return any(name in command for name in names)


@contextlib.contextmanager
def environment_restored(*names: str) -> Iterator[None]:
    """The variables `names` of os.environ as they were, after the block (set, changed or removed in
    it): what nnslurm sets for a library that reads only its environment (nnU-Net's
    nnUNet_n_proc_DA) does not outlive the call that needed it."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
