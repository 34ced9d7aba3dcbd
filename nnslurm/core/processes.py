"""Child processes of the trainer must not outlive it.

nnU-Net's data-augmentation workers are forked daemons; when the trainer is killed without a
chance to stop them (SIGKILL, OOM killer), they are orphaned and keep spinning, each holding
hundreds of MB. Every child forked from the training process asks the kernel to kill it when
its parent dies (Linux PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

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
