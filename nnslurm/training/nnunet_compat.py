"""What differs between the nnU-Net versions nnslurm supports (pyproject.toml: nnunetv2>=2.6,<2.9).

The mixin (nnslurm.training.trainer) runs nnU-Net's `run_training` hook by hook; those hooks, the
checkpoint keys, the dataloaders, `perform_actual_validation(save_probabilities)` and
`get_training_transforms` are the same in 2.5.1 to 2.8.1. What differs from 2.6.0 on, handled here:

- `plans["continue_training"]`: 2.7.0+ pops it in `__init__` (no default: a KeyError without it)
  and passes it to its MetaLogger, which resumes the W&B run. 2.6 does not read it; left in, it
  would end up in the run folder's plans.json and the checkpoints' init_args.
- the logger: 2.7.0+ `MetaLogger` (local lists plus external loggers such as W&B, see
  nnslurm.training.epoch_logs), before that `nnUNetLogger` (local lists only); `get_checkpoint` and
  `load_checkpoint` are the same in both.

2.5.x is not supported: on current torch (2.13, which nnslurm is tested with) its own PolyLR
scheduler fails before the first epoch (it passes LRScheduler's removed `verbose` argument) and
its `load_checkpoint` cannot load checkpoints (torch.load's default weights_only=True refuses the
numpy values nnU-Net pickles). tests/test_nnunet_compat.py and the stop/resume tests run against
the oldest supported version too (`make test-oldest`, in .ci/run).
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

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
