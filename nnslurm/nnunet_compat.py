"""What differs between the nnU-Net versions nnslurm supports (pyproject.toml: nnunetv2>=2.5,<2.9).

The mixin (nnslurm.trainer) runs nnU-Net's `run_training` hook by hook; those hooks, the
checkpoint keys, the dataloaders, `perform_actual_validation(save_probabilities)` and
`get_training_transforms` are the same in 2.5.1 to 2.8.1. What is not, and is handled here only:

- `plans["continue_training"]`: 2.7.0+ pops it in `__init__` (no default: a KeyError without it)
  and passes it to its MetaLogger, which resumes the W&B run. 2.5/2.6 do not read it; left in,
  it would end up in the run folder's plans.json and the checkpoints' init_args.
- `load_checkpoint`: 2.5.x calls `torch.load` without `weights_only`, which is True from torch 2.6
  on and refuses the numpy values nnU-Net itself pickles (`_best_ema`, the logged losses).
  nnslurm allows exactly those (the safe loader's list); 2.6.0+ pass `weights_only=False`.
- the logger: 2.7.0+ `MetaLogger` (local lists plus external loggers such as W&B), before that
  `nnUNetLogger` (local lists only); `get_checkpoint`/`load_checkpoint` are the same in both.

tests/test_nnunet_compat.py and the stop/resume tests run against the oldest supported version
too (`make test-oldest`, in .ci/run).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import torch

from nnslurm.checkpoints.read import numpy_pickle_globals

CONTINUE_TRAINING_FROM = (2, 7)  # first version whose trainer pops plans["continue_training"]


def nnunet_version() -> tuple[int, int]:
    """(major, minor) of the installed nnunetv2."""
    major, minor = re.findall(r"\d+", version("nnunetv2"))[:2]
    return int(major), int(minor)


def trainer_plans(plans: dict[str, Any], continue_training: bool) -> dict[str, Any]:
    """The plans dict to construct the trainer with, for the installed version."""
    if nnunet_version() >= CONTINUE_TRAINING_FROM:
        return dict(plans, continue_training=continue_training)
    return dict(plans)


@contextmanager
def checkpoint_loading() -> Iterator[None]:
    """Around nnU-Net's `load_checkpoint`: its numpy values load with the safe loader (2.5.x)."""
    with torch.serialization.safe_globals(numpy_pickle_globals()):
        yield
