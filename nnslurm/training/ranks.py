"""Who a rank is, where its launcher sits among a job's, and the signal mask that carries a stop
signal over a rank's start-up.

Across nodes (`submit --nodes M -num_gpus N`, or `srun nnslurm train -num_gpus N` in a script of
M tasks) every srun task is one launcher of N ranks: launcher i (SLURM_PROCID) runs the global ranks
i*N .. i*N+N-1, the devices of its node from SLURM_LOCALID*N, and all meet at the first host of the
step's node list on a port derived from the job id (every launcher derives the same one; a requeued
job, the same id, meets there again). One launcher per node, not one srun task per GPU: the launcher
is what forwards every stop signal to its ranks (with cgroups SLURM may signal only the task), what
leaves nobody behind, and the one path that one node already takes.

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
from nnslurm.core.errors import SchedulerError
from nnslurm.slurm import commands as slurm
from nnslurm.slurm.environment import SlurmEnvironment

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"  # one launcher: its ranks meet on the loopback interface


def free_port() -> int:
    """A port free now on the loopback interface, for the ranks to meet at (as nnU-Net's launcher
    finds one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return int(probe.getsockname()[1])


# The rendezvous port of a job of several launchers: from its id, in a range clear of the
# ephemeral ports Linux hands out (32768-60999) and of the well-known ones.
PORT_BASE, PORT_SPAN = 20000, 12000


@dataclass(frozen=True)
class Placement:
    """Where this launcher's ranks sit: launcher `index` of `launchers` (one per srun task),
    `local_index` on its node, and where every rank meets (`master_port` None: a free port on this
    node, for a single launcher)."""

    index: int = 0
    launchers: int = 1
    local_index: int = 0
    master_addr: str = LOCALHOST
    master_port: int | None = None

    @property
    def leads(self) -> bool:
        """The launcher of rank 0, whose decision after a stop is the job's."""
        return self.index == 0

    def rank(self, number: int, per_launcher: int, port: int) -> Rank:
        """This launcher's rank `number` (0 .. per_launcher-1) among all."""
        return Rank(
            rank=self.index * per_launcher + number,
            world_size=self.launchers * per_launcher,
            local_rank=self.local_index * per_launcher + number,
            master_addr=self.master_addr,
            master_port=port,
        )


def step_placement(env: SlurmEnvironment | None = None) -> Placement:
    """This process's place among the tasks of its srun step; one launcher outside SLURM or in a
    step of one task (the batch script itself, a job of one node)."""
    env = SlurmEnvironment.from_environ() if env is None else env
    if env.step_tasks <= 1 or env.job_id is None:
        return Placement()
    if env.nodelist is None:
        raise SchedulerError(
            f"this is task {env.procid} of {env.step_tasks} of job {env.job_id}, but SLURM gave no node "
            "list (SLURM_STEP_NODELIST, SLURM_JOB_NODELIST): the ranks cannot know where to meet."
        )
    first = slurm.hostnames(env.nodelist)[0]
    port = PORT_BASE + int(env.job_id) % PORT_SPAN
    return Placement(env.procid, env.step_tasks, env.localid, first, port)


_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Rank:
    """One training process among `world_size` (torch.distributed's names)."""

    rank: int  # RANK: the global rank; nnU-Net's `local_rank` (its "rank 0 only" tests) takes this
    world_size: int  # WORLD_SIZE: -num_gpus times the launchers (one per node)
    local_rank: int  # LOCAL_RANK: the device index on this node (cuda:LOCAL_RANK)
    master_addr: str  # MASTER_ADDR: where rank 0 listens for the rendezvous
    master_port: int  # MASTER_PORT: a free port found by the launcher, or the job's (several)

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
