"""`nnslurm train`: nnU-Net training in this process, stopped by signals and resumed exactly."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from nnslurm.commands.options import (
    RUN_USAGE,
    add_run_arguments,
    add_training_arguments,
    training_job_from_args,
)
from nnslurm.core.config import TrainJob
from nnslurm.runs.outcome import Stopped
from nnslurm.slurm.end_time import END_TIME_SIGNAL
from nnslurm.training.stoppable import AfterStop, run_stoppable

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
    """Returns 0 when training finished; a stop leaves through `nnslurm.training.stoppable` with status 75."""
    from nnslurm.scheduler.restart import note_restart
    from nnslurm.training.ranks import step_placement

    job = training_job_from_args(args)
    placement = step_placement()  # one of several srun tasks (nodes): one launcher of the job's
    if placement.leads:
        note_restart(job)  # an sbatch template's job, restarted after a node failure: say so (sacct)
    if job.options.num_gpus > 1 or placement.launchers > 1:
        from nnslurm.training.launch_ranks import launch  # rank 0 trains, decides and records

        return launch(job, job.options.num_gpus, _after_stop_hook, placement)
    outcome = run_stoppable(job, after_stop=_after_stop_hook(job))
    logger.info("training finished: %s", outcome.output_folder)
    return 0


def _after_stop_hook(job: TrainJob) -> AfterStop:
    """A stop is resumable (75); inside SLURM the scheduler's evidence first decides what it means
    (walltime -> requeue ourselves, preemption -> wait for SLURM's requeue, scancel -> nothing):
    nnslurm.jobs.base.exit_after_stop, the after-stop wiring of every stopped process."""
    from nnslurm.jobs.base import exit_after_stop  # submitit: only when a command trains

    def after_stop(stopped: Stopped) -> int:
        logger.warning(
            "stopped at epoch %d iteration %d by %s during %s; checkpoint %s. Run the same command "
            "to resume.",
            stopped.epoch,
            stopped.iteration,
            "the end-time rule" if stopped.signal == END_TIME_SIGNAL else f"SIG{stopped.signal}",
            stopped.phase,
            stopped.checkpoint or "not rewritten (the newest valid one is kept)",
        )
        return exit_after_stop(stopped, job.options.max_requeues)

    return after_stop
