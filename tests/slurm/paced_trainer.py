"""nnU-Net's trainer with a floor on the time per training iteration.

Tests that rely on a real time limit (SLURM --time, the local executor's timeout) need training
that outlasts one start on any machine; `-tr slurm.paced_trainer:nnUNetTrainerPaced` (tests/ on
PYTHONPATH) makes every iteration take at least NNSLURM_TEST_MIN_ITERATION_S (default 0.15 s).
"""

from __future__ import annotations

import os
import time

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerPaced(nnUNetTrainer):
    def train_step(self, batch: dict) -> dict:
        started = time.perf_counter()
        result = super().train_step(batch)
        floor = float(os.environ.get("NNSLURM_TEST_MIN_ITERATION_S", "0.15"))
        time.sleep(max(0.0, floor - (time.perf_counter() - started)))
        return result
