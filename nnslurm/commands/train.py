"""`nnslurm train`: nnU-Net training in this process, stopped by signals and resumed exactly."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from nnslurm import EXIT_RESUMABLE
from nnslurm.commands.options import (
    RUN_USAGE,
    add_run_arguments,
    add_training_arguments,
    training_job_from_args,
)
from nnslurm.config import TrainJob
from nnslurm.signals import StopMonitor

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
        usage=RUN_USAGE.format(folds="-f FOLD"),
    )
    add_run_arguments(parser, several_configurations=False, several_folds=False, positional=True)
    add_training_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    job = training_job_from_args(args)
    in_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    on_abandon = _after_stop_hook(job) if in_slurm else None
    # Handlers first: importing torch and nnU-Net takes seconds, and a stop signal that arrives
    # then must not kill the process (the deadline makes it exit 75 instead).
    monitor = StopMonitor(job.options.stop_signals, job.options.stop_deadline_s, _exit_during_imports)
    with monitor:
        from nnslurm.training import new_monitor, run_training

        monitor.on_deadline = new_monitor(job.options, on_abandon).on_deadline
        outcome = run_training(job, on_abandon=on_abandon, monitor=monitor)
        if outcome.status == "finished":
            monitor.ignore_after_restore()
    return exit_status(outcome, job, in_slurm)


def _exit_during_imports(request: object, phase: str) -> None:
    os._exit(EXIT_RESUMABLE)


def exit_status(outcome: TrainingOutcome, job: TrainJob, in_slurm: bool) -> int:
    if outcome.status == "finished":
        logger.info("training finished: %s", outcome.output_folder)
        return 0
    logger.warning(
        "stopped at epoch %d iteration %d by SIG%s; checkpoint %s. Run the same command to resume.",
        outcome.epoch,
        outcome.iteration,
        outcome.stop_signal,
        outcome.checkpoint,
    )
    if in_slurm:
        _after_stop_hook(job)(outcome)
    return EXIT_RESUMABLE


def _after_stop_hook(job: TrainJob) -> Any:
    """Inside SLURM the scheduler decides what a stop means (walltime -> requeue ourselves)."""

    def after_stop(outcome: TrainingOutcome) -> None:
        from nnslurm.scheduler.after_stop import after_stop as decide

        decide(outcome, job.options)

    return after_stop
