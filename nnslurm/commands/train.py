"""`nnslurm train`: nnU-Net training in this process, stopped by signals and resumed exactly."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from nnslurm import EXIT_RESUMABLE
from nnslurm.config import DEFAULT_STOP_SIGNALS, RunSpec, TrainingOptions, TrainJob, parse_signal_list
from nnslurm.errors import UsageError
from nnslurm.stoppable import AfterStop, run_stoppable

if TYPE_CHECKING:
    from nnslurm.training import TrainingOutcome

logger = logging.getLogger(__name__)

EPILOG = """\
exit status:
  0   training finished (checkpoint_final.pth written, final validation done unless disabled)
  75  stopped by a signal after writing a complete checkpoint: run the same command to resume
  1   training failed (message above; the newest valid checkpoint is kept)
  2   bad input (message above; nothing was written)

The output folder is nnU-Net's own: $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG/fold_N.
`nnUNetv2_train --c`, `--val` and `nnUNetv2_predict` work on what nnslurm leaves there.
"""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The nnU-Net names of a run, as nnUNetv2_train takes them."""
    group = parser.add_argument_group("what to train (nnUNetv2_train's names)")
    group.add_argument(
        "-d", "--dataset", required=True, help="dataset id or name, e.g. 501 or Dataset501_Synthetic"
    )
    group.add_argument(
        "-c",
        "--configuration",
        default="3d_fullres",
        help="nnU-Net configuration (2d, 3d_fullres, 3d_lowres, ...; default: %(default)s)",
    )
    group.add_argument(
        "-tr",
        "--trainer",
        default="nnUNetTrainer",
        help="trainer class, as -tr of nnUNetv2_train, or package.module:Class (default: %(default)s)",
    )
    group.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: %(default)s)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Every training flag except the run's names and the fold (shared by train and submit)."""
    group = parser.add_argument_group("training length (recorded with the run; a resume must match)")
    group.add_argument("--epochs", type=int, help="epochs to train (nnU-Net default: 1000)")
    group.add_argument(
        "--iterations-per-epoch", type=int, help="training iterations per epoch (default: 250)"
    )
    group.add_argument(
        "--val-iterations-per-epoch", type=int, help="validation iterations per epoch (default: 50)"
    )
    group = parser.add_argument_group("checkpoints")
    group.add_argument(
        "--save-every-epochs",
        type=int,
        default=1,
        help="write checkpoint_latest.pth every N epochs, in the background (default: %(default)s; "
        "nnU-Net alone: 50)",
    )
    group.add_argument(
        "--save-every-minutes",
        type=float,
        default=15.0,
        help="also write it mid-epoch when this many minutes passed since the last save "
        "(default: %(default)s)",
    )
    group.add_argument("--no-timed-saves", action="store_true", help="disable --save-every-minutes")
    group.add_argument(
        "--resume-from",
        default="newest",
        metavar="newest|latest|best|PATH",
        help="newest: the valid checkpoint with the most progress among final/latest/best "
        "(default); latest/best: that file; PATH: a checkpoint file of this run",
    )
    group = parser.add_argument_group("reproducibility and device")
    group.add_argument(
        "--deterministic",
        action="store_true",
        help="single-process augmentation and fixed seeds: a run stopped and resumed any "
        "number of times ends with bitwise the same weights as one never stopped (slower)",
    )
    group.add_argument(
        "--seed",
        type=int,
        help="seed python/numpy/torch before training (default with --deterministic: 12345)",
    )
    group.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="as nnUNetv2_train -device (default: cuda when available, else cpu)",
    )
    group.add_argument(
        "--no-final-validation",
        action="store_true",
        help="skip nnU-Net's final validation on the fold's validation cases",
    )
    group = parser.add_argument_group("stopping")
    group.add_argument(
        "--stop-signals",
        default=",".join(DEFAULT_STOP_SIGNALS),
        type=_signal_list,
        help="signals that mean: stop at the next iteration boundary, checkpoint, exit 75 "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--stop-deadline",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="when a stop signal finds no iteration boundary this long (start-up, final "
        "validation), exit resumable without a new checkpoint (default: %(default)s)",
    )
    group.add_argument(
        "--max-requeues",
        type=int,
        default=20,
        help="inside SLURM: requeue this job at most N times after walltime warnings (default: %(default)s)",
    )


def _signal_list(text: str) -> tuple[str, ...]:
    try:
        return parse_signal_list(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def training_options_from_args(args: argparse.Namespace) -> TrainingOptions:
    return TrainingOptions(
        num_epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        val_iterations_per_epoch=args.val_iterations_per_epoch,
        save_every_epochs=args.save_every_epochs,
        save_every_minutes=None if args.no_timed_saves else args.save_every_minutes,
        resume_from=args.resume_from,
        deterministic=args.deterministic,
        seed=args.seed,
        device=args.device,
        final_validation=not args.no_final_validation,
        stop_signals=tuple(args.stop_signals),
        stop_deadline_s=args.stop_deadline,
        max_requeues=args.max_requeues,
    )


def training_job_from_args(args: argparse.Namespace, fold: str | None = None) -> TrainJob:
    run = RunSpec(
        dataset=str(args.dataset),
        configuration=args.configuration,
        fold=str(fold if fold is not None else args.fold),
        trainer=args.trainer,
        plans=args.plans,
    )
    return TrainJob(run=run, options=training_options_from_args(args))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one fold in this process (inside an sbatch script, or on this machine)",
        description="Run nnU-Net training in this process. On a stop signal it finishes the current "
        "iteration, writes a complete checkpoint atomically and exits 75; the same command resumes "
        "from the newest valid checkpoint, mid-epoch. Inside a SLURM job it also requeues itself after "
        "the walltime warning.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    parser.add_argument(
        "-f", "--fold", required=True, help="fold 0..4, or 'all' (nnU-Net: train on every case)"
    )
    add_training_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Returns 0 when training finished; a stop leaves through `nnslurm.stoppable` with status 75."""
    job = training_job_from_args(args)
    outcome = run_stoppable(job, after_stop=_after_stop_hook(job, _inside_slurm_job()))
    logger.info("training finished: %s", outcome.output_folder)
    return 0


def _inside_slurm_job() -> bool:
    """The one read of the job's environment here: does this process run in a SLURM job?"""
    return bool(os.environ.get("SLURM_JOB_ID"))


def _after_stop_hook(job: TrainJob, in_slurm: bool) -> AfterStop:
    """A stop is resumable (75); inside SLURM the scheduler's evidence first decides what it means
    (walltime -> requeue ourselves, preemption -> wait for SLURM's requeue, scancel -> nothing)."""

    def after_stop(outcome: TrainingOutcome) -> int:
        logger.warning(
            "stopped at epoch %d iteration %d by SIG%s during %s; checkpoint %s. Run the same command "
            "to resume.",
            outcome.epoch,
            outcome.iteration,
            outcome.stop_signal,
            outcome.phase,
            outcome.checkpoint or "not rewritten (the newest valid one is kept)",
        )
        if in_slurm:
            from nnslurm.slurm import after_stop as decide

            decide(outcome, job.options)
        return EXIT_RESUMABLE

    return after_stop
