"""Several ranks, one decision (Megatron-LM's pattern): handlers only record; at every iteration
boundary and validation step one small all_reduce(MAX) tells every rank whether any rank got a stop
signal, whether rank 0's timed save is due and whether rank 0's end-time rule stops the run. So
all ranks stop at the same (epoch, iteration); rank 0 gathers every rank's RNG state and position,
writes one checkpoint, and tells the others when it is durable.

The all_reduce is overlapped with the work (`agree`): started at one boundary, its answer read at
the next, so every rank acts on the same answer one boundary later and the loop never waits for
the network (measured, benchmarks/agreement_cost.py: 1.1 ms per blocking all_reduce of two CPU ranks
on a loaded 2-core machine, 2.8 % of a 40 ms iteration). The end-time rule looks one phase further
ahead for it (nnslurm.training.stop_margin, `lag_phases`).

nnslurm's collectives run on gloo groups of their own (CPU tensors: no CUDA sync, beside NCCL):
- `quick` (timeout: the stop deadline): the agreement and the gathering at a stop; a peer that
  does not reach a boundary within the deadline could not have been stopped in time anyway;
- `patient` (MAIN_TIMEOUT): what waits for rank 0's file I/O (the checkpoint choice, "durable").
A rank that dies closes its sockets, so its peers' next collective fails at once on one node; the
launcher bounds the rest (nnslurm.training.launch_ranks).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from nnslurm.core.errors import NnslurmError
from nnslurm.slurm.end_time import END_TIME_SIGNAL
from nnslurm.training.ranks import Rank
from nnslurm.training.signals import StopRequest

logger = logging.getLogger(__name__)

# nnU-Net's own collectives (DDP's backward, validation's gathers, its barriers) and waits for rank
# 0's files: as long as torch's NCCL default, since rank 0 may unpack or write for minutes.
MAIN_TIMEOUT = timedelta(minutes=10)

T = TypeVar("T")


class PeerRefused(NnslurmError):
    """Rank 0 refused to start (its error is the one reported); this rank leaves quietly."""


class RanksDisagree(NnslurmError):
    """The ranks reached a stop at different positions: no checkpoint can hold them."""


@dataclass(frozen=True)
class Agreed:
    """What every rank decided together at one boundary."""

    stop: StopRequest | None  # the stop, as this rank knows it (its own request, or the agreed one)
    timed_save: bool  # rank 0's timed save is due: every rank hands over its state


@dataclass(frozen=True)
class RankState:
    """What one rank carries that the others do not: where it is, and its random streams."""

    position: tuple[int, int]  # (epoch, iteration)
    rng: dict[str, Any]  # nnslurm.core.rng.capture() of this rank
    train_outputs: list[dict[str, Any]]  # this rank's losses of the epoch so far


class RankGroup:
    """This process's place among the ranks, and nnslurm's collectives between them."""

    # The agreement answered one boundary late (`agree`): how many phases a decision lags.
    LAG_PHASES = 1

    def __init__(self, rank: Rank, quick: Any, patient: Any) -> None:
        self.rank = rank
        self._quick = quick
        self._patient = patient
        self._pending: tuple[Any, torch.Tensor] | None = None  # the all_reduce started last, and its flags

    @property
    def leads(self) -> bool:
        return self.rank.leads

    @property
    def world_size(self) -> int:
        return self.rank.world_size

    # --- every boundary ------------------------------------------------------------------------
    def agree(self, request: StopRequest | None, timed_save_due: bool, end_time_stop: bool) -> Agreed:
        """Start this boundary's all_reduce(MAX) of [signal number, -received_at, timed save due,
        end-time stop] and return the previous boundary's answer (none at the first boundary of a
        start): every rank calls this at the same boundaries, so every rank acts on the same answer,
        at the same boundary. The previous all_reduce has had a whole phase to complete."""
        flags = self._flags(request, timed_save_due, end_time_stop)
        started = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._quick, async_op=True)
        previous, self._pending = self._pending, (started, flags)
        if previous is None:
            return Agreed(stop=None, timed_save=False)
        work, answer = previous
        work.wait()
        return self._decoded(answer, request)

    def settle(self) -> None:
        """Wait for the all_reduce still running (its answer is not needed: the loop is over)."""
        if self._pending is not None:
            work, self._pending = self._pending[0], None
            work.wait()

    @staticmethod
    def _flags(request: StopRequest | None, timed_save_due: bool, end_time_stop: bool) -> torch.Tensor:
        number, ended = 0, end_time_stop
        if request is not None:
            if request.signal == END_TIME_SIGNAL:
                ended = True
            else:
                number = int(signal.Signals["SIG" + request.signal])
        received = -request.received_at if request is not None else -math.inf
        return torch.tensor(
            [float(number), received, float(timed_save_due), float(ended)], dtype=torch.float64
        )

    @staticmethod
    def _decoded(flags: torch.Tensor, request: StopRequest | None) -> Agreed:
        agreed_number, received, timed, agreed_end = (float(value) for value in flags.tolist())
        stopping = agreed_number > 0 or agreed_end > 0
        stop = request
        if stop is None and stopping:
            name = (
                signal.Signals(int(agreed_number)).name.removeprefix("SIG")
                if agreed_number > 0
                else END_TIME_SIGNAL
            )
            stop = StopRequest(name, -received if math.isfinite(received) else time.time())
        return Agreed(stop=stop if stopping else None, timed_save=timed > 0)

    # --- a checkpoint of every rank --------------------------------------------------------------
    def gather(self, state: RankState) -> list[RankState] | None:
        """Every rank's state on rank 0 (in rank order), None elsewhere; rank 0 checks the positions."""
        gathered: list[Any] | None = [None] * self.world_size if self.leads else None
        dist.gather_object(state, gathered, dst=0, group=self._quick)
        if gathered is None:
            return None
        states = [item for item in gathered if isinstance(item, RankState)]
        positions = {item.position for item in states}
        if len(states) != self.world_size or len(positions) != 1:
            raise RanksDisagree(
                f"the ranks stopped at different positions {sorted(positions)}; no checkpoint written.",
                hint="this is a bug in nnslurm; the newest valid checkpoint is kept: run the same command.",
            )
        return states

    def durable(self) -> None:
        """Rank 0: the checkpoint is on disk; the others wait for this before they leave (a rank
        that left first could end the job while rank 0 still writes)."""
        flag = torch.ones(1)
        try:
            dist.broadcast(flag, src=0, group=self._patient)
        except RuntimeError as error:  # a peer gone: rank 0's file is durable all the same
            logger.warning("rank %d: 'durable' not delivered (%s)", self.rank.rank, error)

    # --- rank 0 decides, the others learn ----------------------------------------------------------
    def share(self, decide: Callable[[], T]) -> T:
        """Rank 0 runs `decide` and every rank gets its value; an error of rank 0 stops all ranks
        (rank 0 raises it; the others raise PeerRefused)."""
        box: list[Any] = [None]
        if self.leads:
            try:
                box[0] = ("ok", decide())
            except NnslurmError as error:
                box[0] = ("error", str(error))
                dist.broadcast_object_list(box, src=0, group=self._patient)
                raise
        dist.broadcast_object_list(box, src=0, group=self._patient)
        kind, value = box[0]
        if kind == "error":
            raise PeerRefused(f"rank 0 refused to start: {value}")
        return value


@contextlib.contextmanager
def joined(rank: Rank, device: torch.device, stop_deadline_s: float) -> Iterator[RankGroup]:
    """This process as `rank` of the process group (NCCL on CUDA, gloo on CPU), and nnslurm's two
    gloo groups; the group is destroyed on the way out."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=rank.init_method,
        rank=rank.rank,
        world_size=rank.world_size,
        timeout=MAIN_TIMEOUT,
    )
    group: RankGroup | None = None
    try:
        quick = dist.new_group(backend="gloo", timeout=timedelta(seconds=stop_deadline_s))
        patient = dist.new_group(backend="gloo", timeout=MAIN_TIMEOUT)
        logger.info(
            "rank %d of %d (%s, device %s) joined at %s",
            rank.rank,
            rank.world_size,
            backend,
            device,
            rank.init_method,
        )
        group = RankGroup(rank, quick, patient)
        yield group
    finally:
        with contextlib.suppress(Exception):  # a peer gone: its answer is not needed
            if group is not None:
                group.settle()
        with contextlib.suppress(Exception):  # a peer gone: nothing left to tear down cleanly
            dist.destroy_process_group()


def rank_device(name: str, rank: Rank) -> torch.device:
    """cuda:LOCAL_RANK (never the global rank, as nnU-Net would), or the CPU."""
    if name != "cuda":
        return torch.device(name)
    if torch.cuda.device_count() <= rank.local_rank:
        raise NnslurmError(
            f"rank {rank.rank} trains on CUDA device {rank.local_rank} of its node, but this process sees "
            f"{torch.cuda.device_count()} CUDA device(s).",
            hint="ask SLURM for -num_gpus GPUs per node (--gpus-per-node), or lower -num_gpus.",
        )
    return torch.device("cuda", rank.local_rank)
