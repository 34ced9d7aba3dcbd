"""One training process: lock the run folder, pick the checkpoint, run nnU-Net's trainer, report.

As nnUNetv2_train: a fresh start may load -pretrained_weights (nnslurm.training.pretrained); after training
comes the final validation (nnslurm.training.validation: --npz, --val_best), and --val only validates a
finished run.

`run_training` returns a TrainingOutcome ("finished" or "stopped" with a durable checkpoint);
what happens next (exit 75, requeue, nothing) is decided by the stop path (`nnslurm.training.stoppable`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnslurm.checkpoints import (
    BackgroundWriter,
    CheckpointInfo,
    RunIdentity,
    candidates,
    check_belongs,
    choose_checkpoint,
    newest_valid,
    read_checkpoint,
    remove_stale_temp_files,
)
from nnslurm.core import rng
from nnslurm.core.config import TrainingOptions, TrainJob
from nnslurm.core.errors import NnslurmError
from nnslurm.core.nnunet import find_trainer_class, load_plans, output_folder
from nnslurm.core.processes import children_die_with_this_process, environment_restored
from nnslurm.runs.events import Event, EventLog
from nnslurm.runs.outcome import Stopped
from nnslurm.slurm.cpus import WORKERS_ENV, CpuBudget, read_cpu_budget
from nnslurm.training.agreement import RankGroup, joined, rank_device
from nnslurm.training.lock import RunLock
from nnslurm.training.malloc import fix_malloc_thresholds
from nnslurm.training.nnunet_compat import trainer_plans
from nnslurm.training.pretrained import META_FIELD, PretrainedWeights, load_into, record_for_resume
from nnslurm.training.ranks import Rank
from nnslurm.training.several_ranks import NoEvents, act_as_rank, check_world_size, resumed_rank_state
from nnslurm.training.signals import StopMonitor, StopRequest
from nnslurm.training.stop_margin import end_time_guard
from nnslurm.training.trainer import NEVER, LoopContext, ResumePoint, TrainingStopped, preemptible_class
from nnslurm.training.validation import Validation, begin, checkpoint_for, is_done, requested

logger = logging.getLogger(__name__)

DETERMINISTIC_DEFAULT_SEED = 12345


class TrainingFailed(NnslurmError):
    """The nnU-Net trainer raised; the run folder keeps its newest valid checkpoint."""


@dataclass(frozen=True)
class TrainingOutcome:
    status: str  # "finished" or "stopped"
    output_folder: Path
    epoch: int  # position of the newest durable state: epoch to run next ...
    iteration: int  # ... and iterations of it already done
    stop_signal: str | None = None  # first stop signal received ("USR1", "TERM", ...)
    signals: tuple[str, ...] = ()  # every stop signal received, in order
    checkpoint: Path | None = None  # the checkpoint written at the stop
    phase: str | None = None  # what the process was doing when it stopped
    stop_reason: str | None = None  # a stop no signal asked for (the end-time rule): why, with numbers

    def stopped(self) -> Stopped:
        """What this stop leaves, as the after-stop decision takes it (nnslurm.runs.outcome)."""
        return Stopped(
            folder=self.output_folder,
            signal=self.stop_signal,
            reason=self.stop_reason,
            epoch=self.epoch,
            iteration=self.iteration,
            phase=self.phase,
            checkpoint=self.checkpoint,
        )


def run_training(
    job: TrainJob,
    monitor: StopMonitor,
    on_run_folder: Callable[[Path], None] | None = None,
    rank: Rank | None = None,
) -> TrainingOutcome:
    """Train (or resume) one nnU-Net run in this process, under an installed stop `monitor`.

    `on_run_folder` learns the run folder once this process holds its lock (the stop path records
    a stop without an iteration boundary there). Callers go through `nnslurm.training.stoppable`.
    nnU-Net reads its augmentation workers only from the environment (nnUNet_n_proc_DA, set here to
    the job's CPUs, or 0 when deterministic): the caller finds it as it was when this returns.
    `rank`: this process is one of several (nnslurm.training.launch_ranks); only rank 0 locks,
    chooses the checkpoint, writes and records.
    """
    with environment_restored(WORKERS_ENV):
        if rank is None:
            return _run_training(job, monitor, on_run_folder, _device(job.options.device), None)
        device = rank_device(_device_name(job.options.device), rank)
        with joined(rank, device, job.options.stop_deadline_s) as group:
            return _run_training(job, monitor, on_run_folder, device, group)


def _run_training(
    job: TrainJob,
    monitor: StopMonitor,
    on_run_folder: Callable[[Path], None] | None,
    device: torch.device,
    group: RankGroup | None,
) -> TrainingOutcome:
    run, options = job.run, job.options
    plans, dataset_json = load_plans(run)
    base_class = find_trainer_class(run.trainer)
    folder = output_folder(run, base_class.__name__)
    expected = RunIdentity(
        dataset=plans["dataset_name"],
        plans=plans["plans_name"],
        configuration=run.configuration,
        fold=str(run.fold_value),
        trainer=base_class.__name__,
    )
    trained = _Training(job, plans, dataset_json, base_class, folder, monitor, device, group)
    if group is not None and not group.leads:  # rank 0 holds the folder and chooses for all
        return _train(trained, group.share(_from_rank_zero), NoEvents(folder))
    # Checked before anything is written:
    pretrained = _given_pretrained(options, folder)
    if options.validation_only:
        _finished_checkpoint(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = RunLock(folder)
        lock.acquire()
    except OSError as error:
        raise NnslurmError(
            f"cannot write to the run folder {folder}: {error.strerror or error}",
            hint="nnU-Net needs $nnUNet_results to be writable by this job; check the filesystem "
            "(read-only? full?) and the permissions.",
        ) from error
    with lock:
        events = EventLog(folder)
        remove_stale_temp_files(folder)
        if on_run_folder is not None:
            on_run_folder(folder)
        world_size = 1 if group is None else group.world_size

        def choose() -> _Start:
            return _choose_start(options, folder, expected, pretrained, world_size)

        start = choose() if group is None else group.share(choose)
        return _train(trained, start, events)


def _from_rank_zero() -> _Start:
    raise AssertionError("only rank 0 chooses the start")  # RankGroup.share runs it on rank 0 only


def _choose_start(
    options: TrainingOptions,
    folder: Path,
    expected: RunIdentity,
    pretrained: PretrainedWeights | None,
    world_size: int,
) -> _Start:
    """The checkpoint to start from (or none), under the run's lock; refuses before anything is written."""
    chosen: CheckpointInfo | None
    carried: Mapping[str, Any] | None
    if options.validation_only:
        chosen = read_checkpoint(_finished_checkpoint(folder))
        # --val takes nnU-Net's command line: the run's own epoch settings, whatever it says
        check_belongs(chosen, expected, chosen.meta.get("overrides") or {})
        carried = chosen.meta.get(META_FIELD)
    else:
        chosen = choose_checkpoint(
            folder, options.resume_from, expected, options.overrides, start_over=options.start_over
        )
        if chosen is not None:
            check_world_size(chosen, world_size)
            carried = record_for_resume(pretrained, chosen)  # refuses other weights: nothing written yet
        else:
            if options.pretrained_weights is not None and pretrained is None:  # gone, nothing to resume
                pretrained = PretrainedWeights.of_file(options.pretrained_weights)  # says: no such file
            carried = pretrained.record() if pretrained else None
    return _Start(chosen, pretrained if chosen is None else None, carried)


@dataclass(frozen=True)
class _Training:
    """What every start of this process trains with (the run, its folder, its place among the ranks)."""

    job: TrainJob
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    base_class: type
    folder: Path
    monitor: StopMonitor
    device: torch.device
    group: RankGroup | None


@dataclass(frozen=True)
class _Start:
    """Where this process starts from: a checkpoint, or fresh (perhaps from pretrained weights)."""

    chosen: CheckpointInfo | None  # the checkpoint to load (None: a fresh start)
    load_pretrained: PretrainedWeights | None  # loaded at a fresh start only
    pretrained_record: Mapping[str, Any] | None  # what every checkpoint of the run records


def _given_pretrained(options: TrainingOptions, folder: Path) -> PretrainedWeights | None:
    """-pretrained_weights, read (sha256). A resume needs only its checkpoint, which records the
    weights the run started from: a file removed since does not stop a requeued job."""
    path = options.pretrained_weights
    if path is None:
        return None
    if not path.is_file() and candidates(folder):
        logger.warning("-pretrained_weights %s no longer exists; resuming from the checkpoint", path)
        return None
    return PretrainedWeights.of_file(path)


def _finished_checkpoint(folder: Path) -> Path:
    """--val validates a finished run only, as nnUNetv2_train."""
    path = folder / "checkpoint_final.pth"
    if not path.is_file():
        raise NnslurmError(
            f"--val: the run in {folder} is not finished: there is no checkpoint_final.pth.",
            hint="train it first (the same command without --val resumes it); its final validation "
            "follows the training.",
        )
    return path


def _train(trained: _Training, start_from: _Start, events: EventLog) -> TrainingOutcome:
    job, folder, monitor, group = trained.job, trained.folder, trained.monitor, trained.group
    run, options = job.run, job.options
    base_class = trained.base_class
    leads = group is None or group.leads
    chosen = start_from.chosen
    overrides = options.overrides
    if options.validation_only and chosen is not None:
        overrides = dict(chosen.meta.get("overrides") or {})
    validation = requested(options)
    _prepare_process(options, rank=0 if group is None else group.rank.rank)
    world_size = 1 if group is None else group.world_size
    _follow_allocation(read_cpu_budget(), threads=trained.device.type == "cpu", ranks=world_size)
    trainer = preemptible_class(base_class)(
        plans=trainer_plans(trained.plans, continue_training=chosen is not None),
        configuration=run.configuration,
        fold=run.fold_value,
        dataset_json=trained.dataset_json,
        device=trained.device,
    )
    if group is not None:
        act_as_rank(trainer, group, trained.device)
    for name, value in overrides.items():
        setattr(trainer, name, value)
    trainer.save_every = options.save_every_epochs or NEVER
    writer = BackgroundWriter()
    trainer.nnslurm = LoopContext(
        monitor=monitor,
        writer=writer,
        events=events,
        overrides=overrides,
        save_every_minutes=options.save_every_minutes,
        deterministic=options.deterministic,
        pretrained=start_from.pretrained_record,
        # rank 0's rule, agreed by every rank one boundary later (nnslurm.training.agreement)
        end_time=end_time_guard(options, monitor, folder, lag_phases=RankGroup.LAG_PHASES if group else 0)
        if leads
        else None,
        ranks=group,
    )
    start = {"epoch": 0, "iteration": 0}
    if chosen is not None:
        trainer.load_checkpoint(str(chosen.path))
        rng_state, train_outputs = resumed_rank_state(chosen, group)
        trainer.nnslurm.resume = ResumePoint(
            epoch=chosen.epoch,
            iteration=chosen.iteration,
            rng_state=rng_state,
            train_outputs=train_outputs,
        )
        start = {"epoch": chosen.epoch, "iteration": chosen.iteration}
        events.append(Event.RESUMED, checkpoint=chosen.path.name, finished=chosen.finished, **start)
        logger.info("resuming from %s at epoch %d iteration %d", chosen.path, chosen.epoch, chosen.iteration)
    recorded = {"pretrained_weights": start_from.pretrained_record} if start_from.pretrained_record else {}
    events.append(
        Event.STARTED,
        num_epochs=trainer.num_epochs,
        iterations_per_epoch=trainer.num_iterations_per_epoch,
        trainer=base_class.__name__,
        deterministic=options.deterministic,
        **({"world_size": world_size} if world_size > 1 else {}),
        **({"validation_only": True} if options.validation_only else {}),
        **recorded,
        **start,
    )
    try:
        if start_from.load_pretrained is not None:  # a fresh start (_Start): never over a checkpoint
            load_into(trainer, start_from.load_pretrained)  # as nnUNetv2_train: after initialize
        if not options.validation_only and (chosen is None or not chosen.finished):
            try:
                trainer.run_training()
            except TrainingStopped as stop:
                events.append(
                    Event.STOPPED,
                    signal=stop.request.signal,
                    epoch=stop.epoch,
                    iteration=stop.iteration,
                    checkpoint_seconds=round(stop.seconds, 4),
                    signal_to_durable_s=round(_since(stop.request), 4),
                )
                return TrainingOutcome(
                    status="stopped",
                    output_folder=folder,
                    epoch=stop.epoch,
                    iteration=stop.iteration,
                    stop_signal=stop.request.signal,
                    signals=tuple(r.signal for r in monitor.received),
                    checkpoint=stop.checkpoint,
                    phase="training",
                    stop_reason=stop.request.reason,
                )
        validated: dict[str, Any] = {}

        def validation_needed() -> bool:
            return validation is not None and (options.validation_only or not is_done(folder, validation))

        needed = validation_needed() if group is None else group.share(validation_needed)  # one answer
        if validation is not None and needed:
            request = _validate(trainer, folder, validation, monitor, group)
            if request is not None:
                return abandoned_outcome(job, folder, request, monitor.phase, reason="export workers stopped")
            validated = {"validation": validation.record()}
        events.append(Event.FINISHED, epoch=trainer.num_epochs, iteration=0, **validated)
        return TrainingOutcome(
            status="finished",
            output_folder=folder,
            epoch=trainer.num_epochs,
            iteration=0,
            signals=tuple(r.signal for r in monitor.received),
        )
    except NnslurmError as error:
        events.append(Event.FAILED, error=str(error))
        raise
    except Exception as error:
        events.append(Event.FAILED, error=f"{type(error).__name__}: {error}")
        logger.exception("nnU-Net training failed")
        raise TrainingFailed(
            f"training of {folder} failed: {type(error).__name__}: {error}",
            hint="the traceback above shows where; the newest valid checkpoint is kept, fix the cause "
            "and run the same command again to resume.",
        ) from error
    finally:
        writer.close()
        if trainer.nnslurm.end_time is not None:
            trainer.nnslurm.end_time.close()
        if hasattr(trainer, "shutdown_dataloaders"):
            trainer.shutdown_dataloaders()


def _validate(
    trainer: Any, folder: Path, validation: Validation, monitor: StopMonitor, group: RankGroup | None
) -> StopRequest | None:
    """nnU-Net's final validation, redone wholly (nnslurm.training.validation); returns the stop request
    when the validation failed because of it. Several ranks: each predicts its share (nnU-Net's DDP
    validation), once rank 0 has cleared the old outputs."""
    monitor.phase = "final validation"
    path = checkpoint_for(folder, validation)
    if validation.checkpoint == "best":  # as nnUNetv2_train --val_best: load it over the trained weights
        read_checkpoint(path)  # a damaged file is refused, not validated
        trainer.load_checkpoint(str(path))
    if group is None:
        begin(folder, validation)
    else:
        group.share(lambda: begin(folder, validation))  # rank 0 clears; the others wait for it
    logger.info("final validation of %s%s", path.name, " with softmax .npz files" if validation.npz else "")
    try:
        trainer.perform_actual_validation(validation.npz)
    except Exception:
        if monitor.request is None:
            raise
        monitor.acknowledge()  # acted on here: the deadline watchdog must not stop it a second time
        # A stop signal reaches every process of a SLURM step; nnU-Net's spawned export workers
        # have no handler and die of it, so the validation fails: that is the stop, not a failure.
        logger.warning(
            "the final validation ended after SIG%s (its export workers stopped); the next start redoes it",
            monitor.request.signal,
            exc_info=True,
        )
        return monitor.request
    return None


def _prepare_process(options: TrainingOptions, rank: int = 0) -> None:
    children_die_with_this_process()
    fix_malloc_thresholds()  # before the trainer allocates anything (nnslurm.training.malloc: why)
    seed = (
        options.seed
        if options.seed is not None
        else (DETERMINISTIC_DEFAULT_SEED if options.deterministic else None)
    )
    if options.deterministic:
        os.environ[WORKERS_ENV] = "0"  # single-process augmentation: one RNG stream
    if seed is not None:
        rng.seed_everything(seed + rank)  # each rank draws its own crops (nnU-Net seeds no rank)


def _device_name(name: str) -> str:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NnslurmError(
            "--device cuda, but no CUDA device is visible to this process.",
            hint="check --gpus / CUDA_VISIBLE_DEVICES, or use --device cpu.",
        )
    return name


def _device(name: str) -> torch.device:
    return torch.device(_device_name(name))


def _follow_allocation(budget: CpuBudget, threads: bool, ranks: int = 1) -> None:
    """nnU-Net would take every core of the node (threads) and 12 augmentation workers: take
    what this job was given (nnslurm.slurm.cpus), shared by the `ranks` of this node. Torch threads
    on the CPU device only, as nnU-Net."""
    cpus = max(1, budget.cpus // ranks)
    if threads:
        torch.set_num_threads(cpus)
    if budget.workers is not None:
        os.environ[WORKERS_ENV] = str(budget.workers // ranks)
    workers = os.environ.get(WORKERS_ENV)
    logger.info(
        "CPUs: %d (%s)%s: torch threads %s, augmentation workers %s",
        budget.cpus,
        budget.source,
        f", {cpus} for each of {ranks} ranks" if ranks > 1 else "",
        cpus if threads else "torch's default (CUDA device)",
        "nnU-Net's default" if workers is None else f"{workers} ({WORKERS_ENV})",
    )


def _since(request: StopRequest) -> float:
    return time.time() - request.received_at


def abandoned_outcome(
    job: TrainJob, folder: Path | None, request: StopRequest, phase: str, reason: str = "deadline"
) -> TrainingOutcome:
    """A stop that found no iteration boundary: the run stands at its newest valid checkpoint.

    `folder` is the run folder this process holds (None: not yet, during start-up); there the
    stop is recorded. Without it the outcome names the folder the run will have, so that what
    follows the stop (the scheduler's decision) is recorded with the run.
    """
    where = folder if folder is not None else _named_run_folder(job)
    newest = newest_valid(candidates(where))[0] if where is not None else None
    epoch, iteration = newest.position if newest else (0, 0)
    if folder is not None:
        EventLog(folder).append(
            Event.STOPPED,
            signal=request.signal,
            phase=phase,
            reason=reason,
            epoch=epoch,
            iteration=iteration,
        )
    return TrainingOutcome(
        status="stopped",
        output_folder=where or Path("."),
        epoch=epoch,
        iteration=iteration,
        stop_signal=request.signal,
        phase=phase,
    )


def _named_run_folder(job: TrainJob) -> Path | None:
    try:
        return output_folder(job.run)
    except Exception as error:  # the record is a nicety here; the decision is not
        logger.warning("run folder unknown during start-up (%s); events go to %s", error, Path.cwd())
        return None
