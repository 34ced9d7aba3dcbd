"""Who a rank is, and the signal mask that carries a stop signal over a rank's start-up.

Torch-free: the launcher (nnslurm.training.launch_ranks) imports it in the process the user started,
which never imports torch. The ranks' collectives are nnslurm.training.agreement.

A spawned rank needs seconds of imports before its stop monitor is in; a stop signal in that window
(sent by SLURM to every process, or forwarded by the launcher) would kill it by default (USR1,
TERM). So the launcher starts the ranks with the stop signals blocked (a blocked signal stays
blocked across fork and exec), and each rank unblocks them once its handlers are installed: a
signal sent meanwhile waits, pending, and is then recorded like any other.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from nnslurm.core.config import parse_signal

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"  # one node: the ranks meet on the loopback interface


def free_port() -> int:
    """A port free now on the loopback interface, for the ranks to meet at (as nnU-Net's launcher
    finds one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return int(probe.getsockname()[1])


_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Rank:
    """One training process among `world_size` (torch.distributed's names)."""

    rank: int  # RANK: the global rank; nnU-Net's `local_rank` (its "rank 0 only" tests) takes this
    world_size: int  # WORLD_SIZE: -num_gpus on one node
    local_rank: int  # LOCAL_RANK: the device index on this node (cuda:LOCAL_RANK)
    master_addr: str  # MASTER_ADDR: where rank 0 listens for the rendezvous
    master_port: int  # MASTER_PORT: a free port found by the launcher

    @property
    def leads(self) -> bool:
        """Rank 0: the one that locks, chooses, writes, records and decides."""
        return self.rank == 0

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"


def hold_stop_signals(names: Sequence[str]) -> None:
    """Block the stop signals in this thread (and in processes it starts from now on)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [parse_signal(name) for name in names])


def release_stop_signals(names: Sequence[str]) -> None:
    """Unblock them: signals that arrived while held are delivered now, to the handlers installed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [parse_signal(name) for name in names])


def die_with_launcher(launcher_pid: int) -> None:
    """A rank must not outlive the launcher (SIGKILLed, OOM): the kernel kills it then (Linux
    PR_SET_PDEATHSIG; a spawned process runs no at-fork hooks, so it asks itself). A launcher
    already gone before the request: leave at once."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher_pid:
        logger.error("the launcher (pid %d) is gone; rank exits", launcher_pid)
        os._exit(1)
