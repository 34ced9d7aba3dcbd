"""A trainer for the tests of several ranks (tests/test_multi_rank.py): nnU-Net's trainer that, at chosen
points, sends a real stop signal from one rank to one process: the launcher, or that rank itself.

NNSLURM_TEST_RANK_SIGNALS="0:0@launcher,v0:0@1,1:0@0": at epoch 0 iteration 0 rank 0 signals the
launcher (its parent, which forwards to every rank); in epoch 0's validation step 0 rank 1 signals
itself; at epoch 1 iteration 0 rank 0 signals itself. Each point fires once per run
(NNSLURM_TEST_SIGNAL_STATE records what fired; only the firing rank writes it).
NNSLURM_TEST_SIGNAL names the signal (default USR1).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _fire(point: str, rank: int) -> None:
    for entry in filter(None, os.environ.get("NNSLURM_TEST_RANK_SIGNALS", "").split(",")):
        where, _, target = entry.strip().partition("@")
        sender = 0 if target == "launcher" else int(target)
        if where != point or sender != rank:
            continue
        state = Path(os.environ["NNSLURM_TEST_SIGNAL_STATE"])
        fired = state.read_text().split() if state.exists() else []
        if entry in fired:
            continue
        state.write_text("\n".join([*fired, entry]))
        pid = os.getppid() if target == "launcher" else os.getpid()
        os.kill(pid, getattr(signal, "SIG" + os.environ.get("NNSLURM_TEST_SIGNAL", "USR1")))


class nnUNetTrainerRankSignals(nnUNetTrainer):
    """nnU-Net's own trainer with the signal points of the module docstring."""

    nnslurm: Any

    def train_step(self, batch: dict) -> dict:
        epoch, iteration = self.nnslurm.position
        _fire(f"{epoch}:{iteration}", self.local_rank)
        return super().train_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._val_step = 0
        super().on_validation_epoch_start()

    def validation_step(self, batch: dict) -> dict:
        _fire(f"v{self.current_epoch}:{self._val_step}", self.local_rank)
        self._val_step += 1
        return super().validation_step(batch)
