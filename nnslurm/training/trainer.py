"""The preemption-aware trainer: the user's nnU-Net trainer class with nnslurm's loop mixed in.

nnU-Net's `run_training` is one loop with no per-iteration hook, so the mixin runs the same
hooks in the same order (on_epoch_start, on_train_epoch_start, train_step, ...) with a check for
a stop request at every iteration boundary. Checkpoints go through nnU-Net's own
`save_checkpoint` call sites (best, latest, final), made atomic and written in the background.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnslurm.checkpoints import FORMAT_VERSION, META_KEY, BackgroundWriter
from nnslurm.checkpoints.read import numpy_values_allowed
from nnslurm.core import rng
from nnslurm.core.timeparse import format_time
from nnslurm.runs.events import Event, EventLog
from nnslurm.training.agreement import Agreed, RankGroup, RankState
from nnslurm.training.epoch_logs import epoch_ended, hold_until_epoch_end
from nnslurm.training.pretrained import META_FIELD
from nnslurm.training.progress import TrainingProgress
from nnslurm.training.signals import StopMonitor, StopRequest
from nnslurm.training.stop_margin import EPOCH_END, ITERATION, VALIDATION, EndTimeGuard

logger = logging.getLogger(__name__)

NEVER = 10**9  # nnU-Net's save_every when nnslurm's policy disables epoch-based saves
STOP_CHECKPOINT = "checkpoint_latest.pth"


class TrainingStopped(Exception):
    """Raised inside the loop after the stop checkpoint is durable; carries where training stopped."""

    def __init__(self, request: StopRequest, epoch: int, iteration: int, checkpoint: Path, seconds: float):
        super().__init__(f"stopped by SIG{request.signal} at epoch {epoch} iteration {iteration}")
        self.request = request
        self.epoch = epoch
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.seconds = seconds


@dataclass(frozen=True)
class ResumePoint:
    """What a checkpoint adds to nnU-Net's own keys, needed to continue mid-epoch."""

    epoch: int
    iteration: int
    rng_state: dict[str, Any] | None
    train_outputs: list[dict[str, Any]]


@dataclass
class LoopContext:
    """What the mixin needs from the runner (set on the trainer before run_training)."""

    monitor: StopMonitor
    writer: BackgroundWriter
    events: EventLog
    overrides: Mapping[str, int]
    save_every_minutes: float | None
    deterministic: bool
    pretrained: Mapping[str, Any] | None = None  # -pretrained_weights the run started from (path, sha256)
    resume: ResumePoint | None = None
    end_time: EndTimeGuard | None = None  # inside SLURM: stop before the job's EndTime (stop_margin)
    position: tuple[int, int] = (0, 0)  # (epoch, iteration) of the last iteration boundary
    last_save: float = field(default_factory=time.monotonic)
    ranks: RankGroup | None = None  # -num_gpus N: this process is one of N ranks (nnslurm.training.agreement)


class PreemptibleTrainerMixin:
    """Put first in the bases: `type(Base.__name__, (PreemptibleTrainerMixin, Base), {})`.

    Keeping the base class's name keeps nnU-Net's output folder and `trainer_name`.
    """

    nnslurm: LoopContext
    # attributes of nnUNetTrainer used here (for type checkers)
    current_epoch: int
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    output_folder: str
    local_rank: int
    is_ddp: bool
    disable_checkpointing: bool
    network: Any
    optimizer: Any
    grad_scaler: Any
    logger: Any
    dataloader_train: Any
    dataloader_val: Any
    _best_ema: Any
    my_init_kwargs: dict[str, Any]
    inference_allowed_mirroring_axes: Any
    device: torch.device

    # --- nnU-Net hooks we change -----------------------------------------------------------
    def get_training_transforms(self, *args: Any, **kwargs: Any) -> Any:
        transforms = super().get_training_transforms(*args, **kwargs)  # type: ignore[misc]
        if self.nnslurm.deterministic:
            _disable_benchmarking(transforms)  # GaussianBlur times FFT vs conv: not reproducible
        return transforms

    def initialize(self) -> None:
        """nnU-Net's; on the CPU with several ranks, its DDP wrapper without `device_ids` (which
        DDP refuses for a CPU module)."""
        if self.is_ddp and self.device.type != "cuda":
            with _ddp_without_device_ids():
                super().initialize()  # type: ignore[misc]
        else:
            super().initialize()  # type: ignore[misc]

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net calls this for best/latest (epoch end) and final; we write atomically with metadata.

        nnU-Net calls it on every rank under the same conditions, so every rank hands rank 0 its state."""
        if self.disable_checkpointing:
            return
        path = Path(filename)
        epoch = self.current_epoch + 1  # nnU-Net saves before incrementing current_epoch
        states = self._rank_states((epoch, 0), [])
        if states is None:
            return  # not rank 0
        finished = path.name == "checkpoint_final.pth"
        if finished:
            self.nnslurm.writer.wait()  # before the snapshot: its buffers are free again
            state = self._snapshot(epoch, 0, states, finished=True)
            seconds = self.nnslurm.writer.write_now(state, path)
            self._saved(path, seconds, epoch, 0, reason="final")
        else:
            # Copied in the background while nnU-Net's epoch end goes on (plotting); on_epoch_end
            # and every iteration boundary wait for the copy before the weights can change.
            state = self._snapshot(epoch, 0, states, background=True)
            reason = "best" if path.name == "checkpoint_best.pth" else "periodic"
            self._save_in_background(state, path, epoch, 0, reason)

    def load_checkpoint(self, filename_or_checkpoint: dict[str, Any] | str) -> None:
        """nnU-Net's, or the trainer's own. Some of nnU-Net's trainers override it with a torch.load
        in torch's safe default mode (nnUNetTrainer_warmup), which refuses the numpy scalars in
        nnU-Net's logging state: the numpy values nnslurm's safe loader allows are allowed here too,
        for this call only (nothing that could run code; the file was verified before)."""
        with numpy_values_allowed():
            super().load_checkpoint(filename_or_checkpoint)  # type: ignore[misc]

    def on_epoch_end(self) -> None:
        super().on_epoch_end()  # type: ignore[misc]
        self.nnslurm.writer.copies.wait()  # the epoch-end snapshots are complete
        epoch_ended(self.logger)  # W&B & co. get the epoch now that it is whole (nnslurm.training.epoch_logs)

    def run_training(self) -> None:
        context = self.nnslurm
        context.monitor.phase = "startup"
        hold_until_epoch_end(self.logger)  # no epoch reaches W&B & co. half (nnslurm.training.epoch_logs)
        self.on_train_start()  # type: ignore[attr-defined]
        train_outputs: list[dict[str, Any]] = []
        start_iteration = 0
        if context.resume is not None:
            # Building the data loaders drew random numbers: restore the RNG states after them.
            if context.resume.rng_state is not None:
                rng.restore(context.resume.rng_state)
            start_iteration = context.resume.iteration
            train_outputs = list(context.resume.train_outputs)
        with TrainingProgress(self.num_epochs, self.num_iterations_per_epoch) as progress:
            for epoch in range(self.current_epoch, self.num_epochs):
                self._run_epoch(epoch, start_iteration, train_outputs, progress)
                train_outputs, start_iteration = [], 0
        context.monitor.phase = "saving"
        context.writer.wait()
        self.on_train_end()  # type: ignore[attr-defined]

    def _run_epoch(
        self,
        epoch: int,
        start_iteration: int,
        train_outputs: list[dict[str, Any]],
        progress: TrainingProgress,
    ) -> None:
        """nnU-Net's epoch, hook by hook, with a stop check at every iteration and validation step."""
        context = self.nnslurm
        epoch_started = time.monotonic()
        context.monitor.phase = "training"
        self.on_epoch_start()  # type: ignore[attr-defined]
        self.on_train_epoch_start()  # type: ignore[attr-defined]
        progress.epoch(epoch, start_iteration)
        for iteration in range(start_iteration, self.num_iterations_per_epoch):
            self._at_boundary(epoch, iteration, train_outputs)
            train_outputs.append(self.train_step(next(self.dataloader_train)))  # type: ignore[attr-defined]
            progress.advance()
        self._at_boundary(epoch, self.num_iterations_per_epoch, train_outputs)
        before_validation = rng.capture()
        self.on_train_epoch_end(train_outputs)  # type: ignore[attr-defined]
        context.monitor.phase = "validation"
        with torch.no_grad():
            self.on_validation_epoch_start()  # type: ignore[attr-defined]
            val_outputs = []
            for _ in range(self.num_val_iterations_per_epoch):
                if self._decide(VALIDATION).stop is not None:
                    # Validation changes no weights: stop at "training part of the epoch done".
                    self._stop(epoch, self.num_iterations_per_epoch, train_outputs, before_validation)
                val_outputs.append(self.validation_step(next(self.dataloader_val)))  # type: ignore[attr-defined]
            self.on_validation_epoch_end(val_outputs)  # type: ignore[attr-defined]
        if self._decide(EPOCH_END, signals=False).stop is not None:  # only the rule: a signal waits
            self._stop(epoch, self.num_iterations_per_epoch, train_outputs, before_validation)
        context.monitor.phase = "epoch end"
        self.on_epoch_end()
        self._log_progress(
            epoch, time.monotonic() - epoch_started, self.num_iterations_per_epoch - start_iteration
        )

    # --- the loop's own steps --------------------------------------------------------------
    def _at_boundary(self, epoch: int, iteration: int, train_outputs: list[dict[str, Any]]) -> None:
        context = self.nnslurm
        context.position = (epoch, iteration)
        context.writer.copies.wait()  # no snapshot is still being copied when train_step changes weights
        minutes = context.save_every_minutes
        timed_due = (
            minutes is not None and time.monotonic() - context.last_save >= minutes * 60 and iteration > 0
        )
        agreed = self._decide(
            ITERATION if iteration < self.num_iterations_per_epoch else VALIDATION, timed_due=timed_due
        )
        if agreed.stop is not None:
            self._stop(epoch, iteration, train_outputs, rng.capture())
        if agreed.timed_save:
            states = self._rank_states((epoch, iteration), train_outputs)
            if states is not None:
                state = self._snapshot(epoch, iteration, states)
                self._save_in_background(
                    state, Path(self.output_folder) / STOP_CHECKPOINT, epoch, iteration, "timed"
                )

    def _decide(self, upcoming: str, signals: bool = True, timed_due: bool = False) -> Agreed:
        """Stop before `upcoming`? A stop signal (unless `signals` is False), or the end-time rule
        (which then requested the stop); and is a timed save due? Several ranks decide together
        (one all_reduce, nnslurm.training.agreement): rank 0's rule and clock, any rank's signal."""
        context = self.nnslurm
        ended = self._end_time_check(upcoming)
        request = context.monitor.request if (signals or ended) else None
        if context.ranks is None:
            return Agreed(stop=request, timed_save=timed_due)
        agreed = context.ranks.agree(request, timed_due, ended)
        if agreed.stop is not None and context.monitor.request is None:
            context.monitor.request_stop(agreed.stop)  # a peer's signal or rank 0's rule: act on it here
        return agreed

    def _end_time_check(self, upcoming: str) -> bool:
        """Whether the end-time rule stops the loop before `upcoming` (it then requested the stop)."""
        guard = self.nnslurm.end_time
        return guard is not None and guard.before(upcoming)

    def _rank_states(
        self, position: tuple[int, int], train_outputs: list[dict[str, Any]]
    ) -> list[RankState] | None:
        """Every rank's state, in rank order, on rank 0 (a collective with several ranks); None on
        the other ranks."""
        own = RankState(position=position, rng=rng.capture(), train_outputs=train_outputs)
        ranks = self.nnslurm.ranks
        return [own] if ranks is None else ranks.gather(own)

    def _stop(
        self, epoch: int, iteration: int, train_outputs: list[dict[str, Any]], rng_state: dict[str, Any]
    ) -> None:
        context = self.nnslurm
        request = context.monitor.request
        assert request is not None
        context.monitor.acknowledge()
        context.monitor.phase = "saving"
        own = RankState(position=(epoch, iteration), rng=rng_state, train_outputs=train_outputs)
        states = [own] if context.ranks is None else context.ranks.gather(own)
        path = Path(self.output_folder) / STOP_CHECKPOINT
        if states is None:  # a rank other than 0: rank 0 writes; leave once it is durable
            assert context.ranks is not None
            context.ranks.durable()
            self.shutdown_dataloaders()
            raise TrainingStopped(request, epoch, iteration, path, 0.0)
        context.events.append(
            Event.SIGNAL,
            signal=request.signal,
            received_at=request.received_at,
            epoch=epoch,
            iteration=iteration,
            **({"reason": request.reason, **request.measures} if request.reason else {}),
        )
        logger.warning(
            "%s: stopping at epoch %d iteration %d and writing a checkpoint",
            "end-time rule" if request.reason else f"SIG{request.signal} received",
            epoch,
            iteration,
        )
        context.writer.wait()  # an older periodic save must not land after this one
        state = self._snapshot(epoch, iteration, states)
        seconds = context.writer.write_now(state, path)
        self._saved(path, seconds, epoch, iteration, reason="stop")
        if context.ranks is not None:
            context.ranks.durable()
        self.shutdown_dataloaders()
        raise TrainingStopped(request, epoch, iteration, path, seconds)

    def shutdown_dataloaders(self) -> None:
        """Stop data-augmentation workers (nnU-Net only does this in on_train_end)."""
        for loader in (self.dataloader_train, self.dataloader_val):
            finish = getattr(loader, "_finish", None)
            if callable(finish):
                finish()

    def _snapshot(
        self,
        epoch: int,
        iteration: int,
        states: list[RankState],
        finished: bool = False,
        background: bool = False,
    ) -> dict[str, Any]:
        """nnU-Net's checkpoint keys at position (epoch, iteration), copied off the device; `states`:
        every rank's (rank 0's alone in one process). nnU-Net's keys and "rng"/"train_outputs" are rank
        0's, as a single process writes them; several ranks add the world size and each rank's state.

        The loop pays for the copy only (background=True: not even that, see HostCopies); the weights
        checksum is left to the writer (write_checkpoint).
        """
        module = self.network.module if self.is_ddp else self.network
        module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
        copied = self.nnslurm.writer.copies.copy(
            {
                "weights": module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": states[0].rng,
                "train_outputs": states[0].train_outputs,
                "ranks": [{"rng": s.rng, "train_outputs": s.train_outputs} for s in states[1:]],
            },
            background=background,
        )
        several = len(states) > 1
        # The logger's lists hold one entry per finished epoch; entries of the epoch in progress
        # are dropped so that nnU-Net (and we) log them again when the epoch is redone/continued.
        logging_state = {
            key: list(values[:epoch]) if isinstance(values, list) else values
            for key, values in self.logger.get_checkpoint().items()
        }
        return {
            "network_weights": copied["weights"],
            "optimizer_state": copied["optimizer"],
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": logging_state,
            "_best_ema": self._best_ema,
            "current_epoch": epoch,
            "init_args": self.my_init_kwargs,
            "trainer_name": type(self).__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            META_KEY: {
                "format": FORMAT_VERSION,
                "epoch": epoch,
                "iteration": iteration,
                "finished": finished,
                "overrides": dict(self.nnslurm.overrides),
                "rng": copied["rng"],
                "train_outputs": copied["train_outputs"],
                "world_size": len(states),
                # each rank's own state, rank 0's included (resume: nnslurm.training.process)
                "rank_states": (
                    [{"rng": copied["rng"], "train_outputs": copied["train_outputs"]}, *copied["ranks"]]
                    if several
                    else None
                ),
                META_FIELD: dict(self.nnslurm.pretrained) if self.nnslurm.pretrained else None,
                "weights_crc32": None,  # filled in by the writer (checkpoints.write_checkpoint)
                "saved_at": time.time(),
            },
        }

    def _save_in_background(
        self, state: dict[str, Any], path: Path, epoch: int, iteration: int, reason: str
    ) -> None:
        self.nnslurm.last_save = time.monotonic()
        self.nnslurm.writer.submit(
            state, path, lambda written, seconds: self._saved(written, seconds, epoch, iteration, reason)
        )

    def _saved(self, path: Path, seconds: float, epoch: int, iteration: int, reason: str) -> None:
        self.nnslurm.last_save = time.monotonic()
        if self.nnslurm.end_time is not None:
            self.nnslurm.end_time.checkpoint(seconds)
        self.nnslurm.events.append(
            Event.CHECKPOINT,
            path=path.name,
            epoch=epoch,
            iteration=iteration,
            seconds=round(seconds, 4),
            reason=reason,
        )

    def _log_progress(self, epoch: int, seconds: float, iterations: int) -> None:
        """One line per epoch, readable in a SLURM .out file."""
        values = self.logger.get_checkpoint()
        loss = values.get("train_losses", [None])[-1] if values.get("train_losses") else None
        dice = values.get("ema_fg_dice", [None])[-1] if values.get("ema_fg_dice") else None
        eta = eta_text(self.num_epochs - epoch - 1, seconds)
        logger.info(
            "epoch %d/%d done: %.2f it/s, train loss %s, pseudo-Dice (EMA) %s, ETA %s",
            epoch + 1,
            self.num_epochs,
            iterations / seconds if seconds > 0 else 0.0,
            "n/a" if loss is None else f"{loss:.4f}",
            "n/a" if dice is None else f"{dice:.4f}",
            eta,
        )


def eta_text(remaining_epochs: int, seconds_per_epoch: float) -> str:
    """The time the remaining epochs take at this pace, as SLURM writes times: [D-]HH:MM:SS
    (1000 epochs run for days; a bare HH:MM:SS would wrap after 24 h)."""
    return format_time(round(max(0.0, remaining_epochs * seconds_per_epoch)))


def _disable_benchmarking(transform: Any) -> None:
    """Walk batchgeneratorsv2's transform tree and switch off timing-based algorithm choices."""
    if hasattr(transform, "benchmark"):
        transform.benchmark = False
    for child in getattr(transform, "transforms", None) or []:
        _disable_benchmarking(child)
    inner = getattr(transform, "transform", None)
    if inner is not None:
        _disable_benchmarking(inner)


@contextlib.contextmanager
def _ddp_without_device_ids() -> Iterator[None]:
    """nnU-Net's trainer module wraps the network as `DDP(network, device_ids=[local_rank])`, which
    DDP refuses for a CPU module: for this block only, its `DDP` leaves `device_ids` out."""
    module = importlib.import_module("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    original = getattr(module, "DDP")  # noqa: B009 (a module attribute mypy does not know)

    def cpu_ddp(network: Any, device_ids: Any = None, **kwargs: Any) -> Any:
        return original(network, **kwargs)

    setattr(module, "DDP", cpu_ddp)  # noqa: B010
    try:
        yield
    finally:
        setattr(module, "DDP", original)  # noqa: B010


def preemptible_class(base: type) -> type:
    """The user's trainer class with the mixin first; same name, so same output folder."""
    return type(base.__name__, (PreemptibleTrainerMixin, base), {"__module__": base.__module__})
