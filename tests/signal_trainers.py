"""Trainers for tests: nnU-Net's trainer that raises real signals at chosen points of the loop
(nnUNetTrainerSignals; `Signals_<trainer>`: the same points over any trainer nnU-Net ships), and
one whose checkpoints are big (nnUNetTrainerBigState).

NNSLURM_TEST_SIGNALS="1:3,2:0,v1:1,final" sends SIGNNSLURM_TEST_SIGNAL (default USR1) to its own
process at epoch 1 iteration 3, epoch 2 iteration 0, in epoch 1's validation step 1, and during
the final validation ("startup": at the end of on_train_start, before the first iteration;
"after_final": right after checkpoint_final.pth was written); each point fires once
(NNSLURM_TEST_SIGNAL_STATE records what fired). After a point fired, the trainer goes on
NNSLURM_TEST_AFTER_SIGNAL_S seconds (default 0) before it continues: a phase without an iteration
boundary that outlasts --stop-deadline.

With NNSLURM_MIN_ITERATION_S set, the trainers here are paced as nnslurm's own paced trainer
(nnslurm/commands/synthetic.py): each training iteration takes at least that long, so a test that
must interrupt the run mid-way finds it still training however fast the machine. Unset: unpaced.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnslurm.commands.synthetic import MIN_ITERATION_ENV, min_iteration_s


def _paced(step: Callable[[dict], dict], batch: dict) -> dict:
    """One training iteration, at least NNSLURM_MIN_ITERATION_S long where that is set."""
    began = time.perf_counter()
    result = step(batch)
    if os.environ.get(MIN_ITERATION_ENV):
        time.sleep(max(0.0, min_iteration_s() - (time.perf_counter() - began)))
    return result


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


class _SignalPoints:
    """The signal points of the module docstring, over any nnU-Net trainer (first in the bases)."""

    nnslurm: Any
    current_epoch: int

    def on_train_start(self) -> None:
        super().on_train_start()
        _fire("startup")

    def train_step(self, batch: dict) -> dict:
        epoch, iteration = self.nnslurm.position
        _fire(f"{epoch}:{iteration}")
        return _paced(super().train_step, batch)

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


class nnUNetTrainerSignals(_SignalPoints, nnUNetTrainer):
    """nnU-Net's own trainer with the signal points."""


VARIANT_PREFIX = "Signals_"


def __getattr__(name: str) -> type:
    """`-tr signal_trainers:Signals_<trainer>`: the signal points over that trainer nnU-Net ships
    (nnunetv2.training.nnUNetTrainer.variants: tests/test_trainer_variants.py)."""
    if name.startswith(VARIANT_PREFIX):
        return _with_signals(name.removeprefix(VARIANT_PREFIX))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _with_signals(trainer: str) -> type:
    from nnslurm.core.nnunet import find_trainer_class  # as `-tr NAME` finds it for a user

    return type(
        VARIANT_PREFIX + trainer, (_SignalPoints, find_trainer_class(trainer)), {"__module__": __name__}
    )


class nnUNetTrainerBigState(nnUNetTrainer):
    """Carries NNSLURM_TEST_PADDING_MB of extra weights so a checkpoint write takes a while."""

    def initialize(self) -> None:
        super().initialize()
        megabytes = int(os.environ.get("NNSLURM_TEST_PADDING_MB", "200"))
        self.network.register_buffer("nnslurm_test_padding", torch.ones(megabytes * 262144))

    def train_step(self, batch: dict) -> dict:
        return _paced(super().train_step, batch)
