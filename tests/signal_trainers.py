"""Trainers for tests: nnU-Net's trainer that raises real signals at chosen points of the loop.

NNSLURM_TEST_SIGNALS="1:3,2:0,v1:1,final" sends SIGNNSLURM_TEST_SIGNAL (default USR1) to its own
process at epoch 1 iteration 3, epoch 2 iteration 0, in epoch 1's validation step 1, and during
the final validation ("startup": at the end of on_train_start, before the first iteration;
"after_final": right after checkpoint_final.pth was written); each point fires once
(NNSLURM_TEST_SIGNAL_STATE records what fired). After a point fired, the trainer goes on
NNSLURM_TEST_AFTER_SIGNAL_S seconds (default 0) before it continues: a phase without an iteration
boundary that outlasts --stop-deadline.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _fire(point: str) -> None:
    wanted = [p.strip() for p in os.environ.get("NNSLURM_TEST_SIGNALS", "").split(",") if p.strip()]
    if point not in wanted:
        return
    state = Path(os.environ["NNSLURM_TEST_SIGNAL_STATE"])
    fired = state.read_text().split() if state.exists() else []
    if point in fired:
        return
    state.write_text("\n".join([*fired, point]))
    name = os.environ.get("NNSLURM_TEST_SIGNAL", "USR1")
    os.kill(os.getpid(), getattr(signal, "SIG" + name))
    time.sleep(float(os.environ.get("NNSLURM_TEST_AFTER_SIGNAL_S", "0")))


class nnUNetTrainerSignals(nnUNetTrainer):
    def on_train_start(self) -> None:
        super().on_train_start()
        _fire("startup")

    def train_step(self, batch: dict) -> dict:
        epoch, iteration = self.nnslurm.position
        _fire(f"{epoch}:{iteration}")
        return super().train_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._val_step = 0
        super().on_validation_epoch_start()

    def validation_step(self, batch: dict) -> dict:
        _fire(f"v{self.current_epoch}:{self._val_step}")
        self._val_step += 1
        return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        _fire("final")
        super().perform_actual_validation(save_probabilities)

    def on_train_end(self) -> None:
        super().on_train_end()  # checkpoint_final.pth is written in here
        _fire("after_final")


class nnUNetTrainerBigState(nnUNetTrainer):
    """Carries NNSLURM_TEST_PADDING_MB of extra weights so a checkpoint write takes a while."""

    def initialize(self) -> None:
        super().initialize()
        megabytes = int(os.environ.get("NNSLURM_TEST_PADDING_MB", "200"))
        self.network.register_buffer("nnslurm_test_padding", torch.ones(megabytes * 262144))
