"""What one training process does differently as one of several ranks (`-num_gpus N`,
nnslurm.training.launch_ranks): which checkpoints it may resume, its own random stream and losses
from one written by every rank, nnU-Net's trainer set up as this rank, and no records but rank 0's.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from nnslurm.checkpoints import CheckpointInfo
from nnslurm.core.errors import NnslurmError
from nnslurm.runs.events import Event, EventLog
from nnslurm.training.agreement import RankGroup

logger = logging.getLogger(__name__)


def check_world_size(chosen: CheckpointInfo, world_size: int) -> None:
    """Mid-epoch, each rank's batches and random stream go on where that rank stopped: another
    number of ranks cannot continue them. At an epoch boundary it can (fresh per-rank seeds)."""
    written = written_world_size(chosen)
    if written == world_size or chosen.finished or chosen.iteration == 0:
        return
    raise NnslurmError(
        f"{chosen.path.name} was written by {written} rank(s) in the middle of epoch {chosen.epoch} "
        f"(iteration {chosen.iteration}); this start has {world_size}: the ranks' batches and random "
        "streams cannot be split differently mid-epoch. Nothing was changed.",
        hint=f"resume with {written} rank(s) in all (-num_gpus times the nodes) (the next epoch boundary's "
        "checkpoint can then go on with "
        "another number), or --resume-from best to go on from the last epoch end with this number "
        "(the partial epoch is trained again).",
    )


def written_world_size(chosen: CheckpointInfo) -> int:
    """The number of ranks that wrote `chosen` (1: one process, or a file without nnslurm's entry)."""
    return int(chosen.meta.get("world_size") or 1)


def resumed_rank_state(chosen: CheckpointInfo, group: RankGroup | None) -> tuple[Any, list[Any]]:
    """This rank's RNG state and losses of the epoch so far, from the checkpoint: its own, or none
    when the number of ranks changed (at an epoch boundary: fresh per-rank seeds)."""
    world_size, rank = (1, 0) if group is None else (group.world_size, group.rank.rank)
    written = written_world_size(chosen)
    if written != world_size:
        logger.info(
            "%s was written by %d rank(s), this start has %d: at an epoch boundary, each rank "
            "goes on with a fresh random stream (seed + rank)",
            chosen.path.name,
            written,
            world_size,
        )
        return None, []
    states = chosen.meta.get("rank_states")
    if states:
        return states[rank]["rng"], list(states[rank]["train_outputs"])
    return chosen.meta.get("rng"), list(chosen.meta.get("train_outputs", []))


class NoEvents(EventLog):
    """The event log of a rank other than 0: rank 0 alone records the run."""

    def append(self, event: Event, **fields: Any) -> dict[str, Any]:
        return {"event": event, **fields}


def act_as_rank(trainer: Any, group: RankGroup, device: torch.device) -> None:
    """nnU-Net's trainer, built inside the process group, took `is_ddp` from it but forces the device
    to cuda:<global rank> and a CUDA GradScaler: set what this rank really is before initialize()
    (the mixin's `initialize` leaves out DDP's device_ids on the CPU)."""
    trainer.is_ddp = True
    trainer.local_rank = group.rank.rank  # nnU-Net's "rank 0 only" tests mean the global rank
    trainer.device = device  # cuda:LOCAL_RANK, or the CPU
    if device.type != "cuda":
        trainer.grad_scaler = None  # as nnU-Net on a CPU: no mixed precision
