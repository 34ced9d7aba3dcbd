"""nnU-Net's external loggers (W&B, nnU-Net 2.7.0+) see an epoch only once it has ended.

nnU-Net logs each value the moment it has it (the epoch's start time and learning rate first,
its losses later), to its local lists and to every external logger of its MetaLogger
(`nnUNet_wandb_enabled=1`: a W&B run, resumed by id when training continues). nnslurm's stop
saves the local lists without the epoch in progress, so the resumed process logs that epoch
again: an external logger would get its first values twice, and W&B, which drops steps below
the resumed run's step, would drop the rest of it. Holding an epoch's values back until its end
gives each external logger every epoch exactly once, as for an uninterrupted run: a stop drops
the held values with the process, and the epoch is logged whole when it is done after the resume.
Summaries (the final validation's Dice) and configuration are passed on at once.
"""

from __future__ import annotations

from typing import Any


class HeldUntilEpochEnd:
    """One external logger of nnU-Net's MetaLogger, its `log` calls held until `release`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.held: list[tuple[str, Any, int]] = []

    def log(self, key: str, value: Any, step: int) -> None:
        self.held.append((key, value, step))

    def release(self) -> None:
        for key, value, step in self.held:
            self.inner.log(key, value, step)
        self.held.clear()

    def __getattr__(self, name: str) -> Any:  # update_config, log_summary, run, ...
        return getattr(self.inner, name)


def hold_until_epoch_end(logger: Any) -> None:
    """Wrap the external loggers of nnU-Net's `trainer.logger` (none before nnU-Net 2.7.0)."""
    external = getattr(logger, "loggers", None)
    if isinstance(external, list):
        logger.loggers = [
            each if isinstance(each, HeldUntilEpochEnd) else HeldUntilEpochEnd(each) for each in external
        ]


def epoch_ended(logger: Any) -> None:
    """Pass the ended epoch's values on to the external loggers."""
    for each in getattr(logger, "loggers", None) or []:
        if isinstance(each, HeldUntilEpochEnd):
            each.release()
