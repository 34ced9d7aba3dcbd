"""nnU-Net's external loggers (W&B) get each epoch once, whole, at its end (nnslurm.training.epoch_logs)."""

from __future__ import annotations

from typing import Any

from nnslurm.training.epoch_logs import HeldUntilEpochEnd, epoch_ended, hold_until_epoch_end


class Recorder:
    """Stands for nnU-Net's WandbLogger: what reached it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def log(self, key: str, value: Any, step: int) -> None:
        self.calls.append(("log", key, value, step))

    def log_summary(self, key: str, value: Any) -> None:
        self.calls.append(("summary", key, value))

    def update_config(self, config: dict[str, Any]) -> None:
        self.calls.append(("config", config))


class MetaLoggerLike:
    def __init__(self, *loggers: Any) -> None:
        self.loggers = list(loggers)

    def log(self, key: str, value: Any, step: int) -> None:
        for each in self.loggers:
            each.log(key, value, step)


def test_an_epoch_reaches_the_external_logger_only_when_it_ended() -> None:
    wandb = Recorder()
    meta = MetaLoggerLike(wandb)
    hold_until_epoch_end(meta)
    meta.log("lrs", 0.01, 0)
    meta.log("train_losses", 0.5, 0)
    assert wandb.calls == []
    epoch_ended(meta)
    assert wandb.calls == [("log", "lrs", 0.01, 0), ("log", "train_losses", 0.5, 0)]
    meta.log("lrs", 0.009, 1)  # epoch 1 in progress when the process stops: never passed on
    assert len(wandb.calls) == 2


def test_summaries_and_configuration_pass_at_once() -> None:
    wandb = Recorder()
    meta = MetaLoggerLike(wandb)
    hold_until_epoch_end(meta)
    meta.loggers[0].update_config({"fold": 0})
    meta.loggers[0].log_summary("final_val/foreground_dice", 0.9)
    assert wandb.calls == [("config", {"fold": 0}), ("summary", "final_val/foreground_dice", 0.9)]


def test_holding_twice_wraps_once() -> None:
    meta = MetaLoggerLike(Recorder())
    hold_until_epoch_end(meta)
    hold_until_epoch_end(meta)
    assert isinstance(meta.loggers[0], HeldUntilEpochEnd)
    assert not isinstance(meta.loggers[0].inner, HeldUntilEpochEnd)


def test_a_logger_without_external_loggers_is_left_alone() -> None:
    class LocalOnly:  # nnU-Net < 2.7: nnUNetLogger
        def __init__(self) -> None:
            self.my_fantastic_logging: dict[str, list[float]] = {"lrs": []}

    logger = LocalOnly()
    hold_until_epoch_end(logger)
    epoch_ended(logger)
    assert not hasattr(logger, "loggers")
