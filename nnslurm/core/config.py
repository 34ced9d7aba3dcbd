"""Settings as frozen dataclasses. Each field names the nnU-Net or SLURM name it maps to."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from nnslurm.core.errors import UsageError

DEFAULT_STOP_SIGNALS = ("USR1", "USR2", "TERM")


@dataclass(frozen=True)
class RunSpec:
    """Which nnU-Net training: the same four names as `nnUNetv2_train DATASET CONFIG FOLD -tr -p`."""

    dataset: str  # nnU-Net dataset id ("501") or name ("Dataset501_Synthetic")
    configuration: str = "3d_fullres"  # nnU-Net configuration: 2d, 3d_fullres, 3d_lowres, ...
    fold: str = "0"  # nnU-Net fold: "0".."4" or "all" (nnU-Net's fold trained on every case)
    trainer: str = "nnUNetTrainer"  # -tr: trainer class name (or module:Class for your own)
    plans: str = "nnUNetPlans"  # -p: plans identifier

    @property
    def fold_value(self) -> int | str:
        """The fold as nnU-Net's trainer takes it."""
        return self.fold if self.fold == "all" else int(self.fold)


@dataclass(frozen=True)
class TrainingOptions:
    """How to train and checkpoint; every field is a `nnslurm train` flag."""

    num_epochs: int | None = None  # --epochs; nnU-Net trainer.num_epochs (default 1000)
    iterations_per_epoch: int | None = None  # nnU-Net num_iterations_per_epoch (250)
    val_iterations_per_epoch: int | None = None  # nnU-Net num_val_iterations_per_epoch (50)
    save_every_epochs: int = 1  # replaces nnU-Net's save_every (50)
    save_every_minutes: float | None = 15.0  # also save mid-epoch when this much time has passed
    resume_from: str = "newest"  # newest | latest | best | a checkpoint path
    start_over: bool = False  # --start-over: checkpoints none of which is usable are moved aside, not resumed
    deterministic: bool = False  # single-process augmentation + seeding: bitwise reproducible resume
    seed: int | None = None  # seeds python/numpy/torch before the trainer is built
    device: str = "auto"  # nnUNetv2_train -device: cpu | cuda | auto (cuda when available)
    # nnUNetv2_train -num_gpus: ranks on one node (NCCL on CUDA, gloo on CPU); a job asks SLURM for
    # this many GPUs (--gpus-per-node) unless -device cpu
    num_gpus: int = 1
    final_validation: bool = True  # run nnU-Net's final validation (--no-final-validation: skip it)
    npz: bool = False  # nnUNetv2_train --npz: the final validation also writes softmax .npz (+ .pkl)
    validation_only: bool = False  # nnUNetv2_train --val: only validate the finished run
    validation_checkpoint: str = "final"  # nnUNetv2_train --val_best: "best" validates checkpoint_best
    pretrained_weights: Path | None = None  # nnUNetv2_train -pretrained_weights: a fresh start's weights
    stop_signals: tuple[str, ...] = DEFAULT_STOP_SIGNALS  # signals that mean "checkpoint and stop"
    stop_deadline_s: float = 20.0  # phases without iteration boundaries are abandoned after this
    max_requeues: int = 20  # --max-requeues: self-requeues after walltime warnings, per job
    # Inside SLURM: stop when the time left to scontrol's EndTime falls under the slowest next
    # phase + a stop checkpoint + this many seconds (None: --no-end-time-stop), re-read every ...
    end_time_safety_s: float | None = 60.0  # --end-time-safety
    end_time_refresh_s: float = 300.0  # --end-time-refresh

    def __post_init__(self) -> None:
        for name in ("num_epochs", "iterations_per_epoch", "val_iterations_per_epoch", "save_every_epochs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be a positive number, got {value}.")
        if self.save_every_minutes is not None and self.save_every_minutes <= 0:
            raise UsageError(f"--save-every-minutes must be positive, got {self.save_every_minutes}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device must be cpu, cuda or auto, got {self.device!r}.")
        if self.num_gpus < 1:
            raise UsageError(
                f"-num_gpus must be 1 or more, got {self.num_gpus}.", hint="drop -num_gpus to train on one."
            )
        check_stopping(self.stop_signals, self.stop_deadline_s, self.max_requeues)
        if self.end_time_safety_s is not None and self.end_time_safety_s < 0:
            raise UsageError(f"--end-time-safety must be 0 or more seconds, got {self.end_time_safety_s}.")
        if self.end_time_refresh_s <= 0:
            raise UsageError(f"--end-time-refresh must be positive, got {self.end_time_refresh_s}.")
        if self.validation_checkpoint not in ("final", "best"):
            raise UsageError(
                f"validation_checkpoint must be final or best, got {self.validation_checkpoint!r}."
            )
        self._refuse_contradictions()

    def _refuse_contradictions(self) -> None:
        """nnUNetv2_train's validation flags next to nnslurm's: combinations that cannot all be
        carried out are refused, never half ignored."""
        if not self.final_validation:
            for flag, given in (
                ("--val", self.validation_only),
                ("--val_best", self.validation_checkpoint == "best"),
                ("--npz", self.npz),
            ):
                if given:
                    raise UsageError(
                        f"{flag} and --no-final-validation contradict each other: {flag} is about "
                        "the final validation.",
                        hint=f"drop one of {flag} and --no-final-validation.",
                    )
        if not self.validation_only:
            return
        only_for_training = (
            ("-pretrained_weights", self.pretrained_weights is not None),
            ("--start-over", self.start_over),
            ("--resume-from", self.resume_from != "newest"),
        )
        for flag, given in only_for_training:
            if given:
                raise UsageError(
                    f"{flag} is about training, and --val trains nothing: it validates "
                    "checkpoint_final.pth (checkpoint_best.pth with --val_best) of the finished run.",
                    hint=f"drop {flag}, or drop --val to train.",
                )

    def to_argv(self) -> list[str]:
        """The `nnslurm train` flags that reproduce these options: each one that differs from its
        default, and --max-requeues always (a script that requeues itself should show its cap)."""
        default = TrainingOptions()
        words: list[str] = []

        def give(flag: str, value: object, default_value: object) -> None:
            if value != default_value and value is not None:
                words.extend([flag, str(value)])

        give("--epochs", self.num_epochs, default.num_epochs)
        give("--iterations-per-epoch", self.iterations_per_epoch, default.iterations_per_epoch)
        give("--val-iterations-per-epoch", self.val_iterations_per_epoch, default.val_iterations_per_epoch)
        give("--save-every-epochs", self.save_every_epochs, default.save_every_epochs)
        give("--save-every-minutes", self.save_every_minutes, default.save_every_minutes)
        if self.save_every_minutes is None:
            words.append("--no-timed-saves")
        give("--resume-from", self.resume_from, default.resume_from)
        if self.start_over:
            words.append("--start-over")
        if self.deterministic:
            words.append("--deterministic")
        give("--seed", self.seed, default.seed)
        give("--device", self.device, default.device)
        give("-num_gpus", self.num_gpus, default.num_gpus)
        if not self.final_validation:
            words.append("--no-final-validation")
        if self.npz:
            words.append("--npz")
        if self.validation_only:
            words.append("--val")
        if self.validation_checkpoint == "best":
            words.append("--val_best")
        give("-pretrained_weights", self.pretrained_weights, default.pretrained_weights)
        give("--stop-signals", ",".join(self.stop_signals), ",".join(default.stop_signals))
        give("--stop-deadline", self.stop_deadline_s, default.stop_deadline_s)
        give("--end-time-safety", self.end_time_safety_s, default.end_time_safety_s)
        if self.end_time_safety_s is None:
            words.append("--no-end-time-stop")
        give("--end-time-refresh", self.end_time_refresh_s, default.end_time_refresh_s)
        words.extend(["--max-requeues", str(self.max_requeues)])
        return words

    @property
    def overrides(self) -> dict[str, int]:
        """The trainer attributes this run changes; recorded in every checkpoint."""
        pairs = {
            "num_epochs": self.num_epochs,
            "num_iterations_per_epoch": self.iterations_per_epoch,
            "num_val_iterations_per_epoch": self.val_iterations_per_epoch,
        }
        return {key: value for key, value in pairs.items() if value is not None}


@dataclass(frozen=True)
class TrainJob:
    """Everything one training process needs: what to train and how."""

    run: RunSpec
    options: TrainingOptions = field(default_factory=TrainingOptions)


@dataclass(frozen=True)
class StageSettings:
    """How a workflow stage that is not a training (preprocess, find best, predict) stops: training's
    flags, read from the same command line (nnslurm.commands.options.stage_settings_from_args)."""

    stop_signals: tuple[str, ...] = DEFAULT_STOP_SIGNALS  # --stop-signals
    # --stop-deadline: a unit (one case) that outlasts this after a stop signal is abandoned and
    # redone next start; longer than training's default, a unit being longer than an iteration.
    stop_deadline_s: float = 60.0
    max_requeues: int = TrainingOptions.max_requeues  # --max-requeues (its default)

    def __post_init__(self) -> None:
        check_stopping(self.stop_signals, self.stop_deadline_s, self.max_requeues)


def check_stopping(stop_signals: tuple[str, ...], stop_deadline_s: float, max_requeues: int) -> None:
    """The stop flags every process takes (a training's and a stage's), checked alike."""
    if max_requeues < 0:
        raise UsageError(f"--max-requeues must be 0 or more, got {max_requeues}.")
    if stop_deadline_s <= 0:
        raise UsageError(f"--stop-deadline must be positive, got {stop_deadline_s}.")
    for name in stop_signals:
        parse_signal(name)


def parse_signal(name: str) -> signal.Signals:
    """'USR1', 'SIGUSR1', 'usr1' or '10' -> signal.SIGUSR1, with a clear error otherwise."""
    text = name.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text))
        except ValueError:
            pass
    else:
        candidate = text if text.startswith("SIG") else "SIG" + text
        if candidate in signal.Signals.__members__:
            return signal.Signals[candidate]
    raise UsageError(
        f"unknown signal {name!r}",
        hint="use a name SLURM's --signal understands, e.g. USR1, USR2, TERM, INT.",
    )


def parse_signal_list(text: str) -> tuple[str, ...]:
    """'USR1,USR2,TERM' -> ('USR1', 'USR2', 'TERM'), each checked."""
    names = tuple(part.strip().upper().removeprefix("SIG") for part in text.split(",") if part.strip())
    if not names:
        raise UsageError("--stop-signals needs at least one signal, e.g. USR1,USR2,TERM.")
    for name in names:
        parse_signal(name)
    return names
