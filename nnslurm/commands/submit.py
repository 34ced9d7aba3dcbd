"""`nnslurm submit`: nnU-Net training as SLURM jobs (or local ones) that survive walltime and preemption."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnslurm.commands.held import RunAlreadyQueued, held_runs
from nnslurm.commands.options import (
    RUN_USAGE,
    add_cluster_arguments,
    add_executor_argument,
    add_job_arguments,
    add_run_arguments,
    add_training_arguments,
    check_submission,
    cluster_settings_from_args,
    stage_settings_from_args,
    training_jobs_from_args,
)
from nnslurm.core.cluster import ClusterSettings
from nnslurm.core.config import TrainJob
from nnslurm.core.errors import NnslurmError, UsageError
from nnslurm.core.executor import Executor
from nnslurm.core.locations import default_log_dir
from nnslurm.runs.events import checkpoint_write_times, read_events
from nnslurm.workflow.plan import WorkflowSpec

if TYPE_CHECKING:  # nnslurm.jobs.submission imports submitit: only when a command submits
    from nnslurm.jobs.submission import Submission

logger = logging.getLogger(__name__)

CHECKPOINTS_MEASURED = 5  # the recent checkpoint writes the limit check takes the slowest of

DESCRIPTION = """\
Submit nnU-Net training through submitit. The job trains in its own process; on the walltime
warning (--signal, --signal-delay before --time) it stops at the next iteration boundary, writes a
complete checkpoint and requeues itself (at most --max-requeues times); on preemption it
checkpoints and lets SLURM requeue it; after scancel it stays cancelled. Each start resumes from the
newest valid checkpoint. Without SLURM (no sbatch on the PATH) the job runs on this machine
through submitit's local executor, with the same --time, stop, requeue and resume."""

EPILOG = """\
folds:
  --fold 0                  one run (nnU-Net fold 0)
  --fold 0 --fold 2, --fold 0,2, --fold 0-2
                            several runs: one SLURM job array, one task per fold
  --cross-validation        folds 0,1,2,3,4 (nnU-Net's 5-fold cross-validation), one array
  --fold all                nnU-Net's fold "all": ONE model trained on every case (no validation
                            split), not the five folds
  Several --configuration values multiply: every configuration x every fold.

settings: defaults < profile (./nnslurm.toml, then ~/.config/nnslurm/config.toml, table
[profiles.NAME]; [profiles.default] without --profile) < these flags.

exit status: 0 submitted (with --wait: every job finished), 1 a job failed or was cancelled
(--wait), or a run is already queued or running (its job is named), 2 bad input. Nothing is
submitted when the input is bad or any run is held by a job; a stopped run is submitted as usual.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="submit training to SLURM (or run it locally) with stop, checkpoint, requeue, resume",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=RUN_USAGE.format(folds="(-f FOLDS | --cross-validation)"),
    )
    add_run_arguments(parser, several_configurations=True, several_folds=True, positional=True)
    add_training_arguments(parser)
    add_cluster_arguments(parser)
    group = parser.add_argument_group("submission")
    add_executor_argument(group)
    add_job_arguments(
        group,
        log_dir_help="submitit's folder for scripts, pickles and logs "
        "(default: $nnUNet_results/.nnslurm/submitit)",
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved settings and the sbatch script; submit nothing (works without SLURM)",
    )
    group.add_argument(
        "--wait",
        action="store_true",
        help="block, showing progress, until every job ended; exit 0 only if all finished",
    )
    workflow = parser.add_argument_group(
        "the whole workflow (a chain of dependent jobs: preprocess -> train -> find best -> predict)"
    )
    workflow.add_argument(
        "--preprocess",
        action="store_true",
        help="first plan and preprocess the dataset (nnUNetv2_plan_and_preprocess, a CPU job; -np from "
        "its CPUs); training waits for it",
    )
    workflow.add_argument(
        "--find-best",
        action="store_true",
        help="after every training task succeeded, run nnUNetv2_find_best_configuration on exactly "
        "the configurations and folds trained (a CPU job; train with --npz to allow ensembles)",
    )
    workflow.add_argument(
        "--predict",
        nargs=2,
        type=Path,
        metavar=("INPUT_DIR", "OUTPUT_DIR"),
        help="after find best (implied), predict INPUT_DIR with the chosen configuration or ensemble "
        "and its post-processing into OUTPUT_DIR; stoppable, and no output file is ever torn",
    )
    workflow.add_argument(
        "--cpu-partition",
        help="partition of the CPU-only jobs (preprocess, find best) (default: --partition)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    jobs = training_jobs_from_args(args)
    workflow = workflow_from_args(args, jobs)
    # A chain's jobs are named <base>-<stage>: nnslurm-501-train-2d, nnslurm-501-find-best, ...
    base = args.job_name or (f"nnslurm-{workflow.jobs[0].run.dataset}" if workflow.is_chain else None)
    submission = make_submission(
        workflow.jobs, cluster_settings_from_args(args), executor=args.executor, job_name=base
    )
    if workflow.is_chain:
        from nnslurm.commands import submit_chain

        if args.dry_run:
            return submit_chain.dry_run(workflow, submission, args.cpu_partition)
        return submit_chain.send(workflow, submission, args.cpu_partition, wait=args.wait)
    if args.dry_run:
        return dry_run(submission)
    return send(submission, wait=args.wait)


def workflow_from_args(args: argparse.Namespace, jobs: Sequence[TrainJob]) -> WorkflowSpec:
    """The training runs plus the stages around them; the cascade's 3d_lowres added when missing."""
    from nnslurm.workflow.plan import CASCADE, LOWRES, with_cascade_first_stage

    predict = args.predict or (None, None)
    spec = WorkflowSpec(
        jobs=tuple(jobs),
        preprocess=args.preprocess,
        find_best=args.find_best,
        predict_input=predict[0].absolute() if predict[0] else None,
        predict_output=predict[1].absolute() if predict[1] else None,
        stage_settings=stage_settings_from_args(args),
    )
    if args.cpu_partition and not spec.is_chain:
        raise UsageError(
            "--cpu-partition is for the CPU jobs of a chain (--preprocess, --find-best, --predict).",
            hint="drop --cpu-partition, or add the stage it is for.",
        )
    if spec.is_chain:
        completed, added = with_cascade_first_stage(spec.jobs)
        if added:
            logger.info(
                "%s trains on %s's predictions of each fold: %s is trained first", CASCADE, LOWRES, LOWRES
            )
            spec = dataclasses.replace(spec, jobs=completed)
    return spec


def measured_checkpoint_s(jobs: Sequence[TrainJob]) -> float | None:
    """The slowest recent checkpoint write of the runs, from their event logs (None: none yet)."""
    from nnslurm.jobs import submission as launch

    times = [
        seconds
        for job in jobs
        if (folder := launch.run_folder(job)) is not None
        for seconds in checkpoint_write_times(read_events(folder))[-CHECKPOINTS_MEASURED:]
    ]
    return max(times, default=None)


def make_submission(
    jobs: Sequence[TrainJob], cluster: ClusterSettings, executor: str, job_name: str | None = None
) -> Submission:
    """The checked Submission of these runs; the log folder is the cluster's, or the default."""
    from nnslurm.jobs import submission as launch

    check_submission(cluster, jobs[0].options, measured_checkpoint_s(jobs))
    chosen = launch.choose_executor(executor)
    log_dir = Path(cluster.log_dir).expanduser() if cluster.log_dir else default_log_dir()
    return launch.Submission(
        jobs=tuple(jobs),
        cluster=cluster,
        executor=chosen,
        log_dir=log_dir.absolute(),
        job_name=job_name or launch.default_job_name(jobs),
    )


def send(submission: Submission, wait: bool) -> int:
    """Submit, say where each run went and, with `wait`, follow the jobs to their end."""
    from nnslurm.jobs import submission as launch
    from nnslurm.jobs import waiting

    jobs = submission.jobs
    launch.check_runs(jobs)
    held = held_runs(jobs)
    if held:
        raise RunAlreadyQueued(held)
    submitted = launch.submit(submission)
    where = "SLURM" if submission.executor is Executor.SLURM else "this machine (submitit's local executor)"
    print(f"submitted {len(submitted)} job(s) to {where}")
    for submitted_job, train_job in zip(submitted, jobs, strict=True):
        folder = launch.run_folder(train_job)
        run = train_job.run
        print(f"  job {submitted_job.job_id}: {run.configuration} fold {run.fold} -> {folder}")
    print(f"logs: {submission.log_dir}/<job id>/ (stdout, stderr, submission script)")
    if not wait:
        if submission.executor is Executor.LOCAL:
            print(
                "the local jobs run in the background of this machine; "
                "follow them in the run folders' nnslurm_events.jsonl"
            )
        return 0
    reports = waiting.wait(submitted, submission)
    print("summary:")
    for report in reports:
        print("  " + waiting.describe_report(report))
    return 0 if all(report.state == waiting.FINISHED for report in reports) else 1


def dry_run(submission: Submission) -> int:
    from nnslurm.jobs import submission as launch

    print("# nnslurm submit --dry-run: nothing is submitted")
    print(
        f"# executor: {submission.executor}"
        + (
            ""
            if submission.executor is Executor.SLURM
            else " (no sbatch here; the script below is what SLURM would run)"
        )
    )
    print(f"# job name: {submission.job_name}")
    print(f"# log folder: {submission.log_dir}/<job id>/")
    for key, value in submission.cluster.describe():
        print(f"# {key}: {value}")
    for index, job in enumerate(submission.jobs):
        run, options = job.run, job.options
        task = f"array task {index}: " if len(submission.jobs) > 1 else ""
        folder = launch.run_folder(job)
        nodes = submission.cluster.nodes
        ranks = (
            f", {nodes} nodes x {options.num_gpus} ranks"
            if nodes > 1
            else f", {options.num_gpus} ranks on one node"
            if options.num_gpus > 1
            else ""
        )
        print(
            f"# {task}dataset {run.dataset}, {run.configuration}, fold {run.fold}, -tr {run.trainer}, "
            f"-p {run.plans}{ranks}, max requeues {options.max_requeues} -> {folder or '$nnUNet_results/...'}"
        )
    try:
        launch.check_runs(submission.jobs)
    except NnslurmError as error:
        print(f"# WARNING: this submission would fail: {error}".replace("\n", "\n# "))
    held = held_runs(submission.jobs)
    if held:
        print(f"# WARNING: this submission would be refused: {RunAlreadyQueued(held)}".replace("\n", "\n# "))
    print()
    print(launch.render_sbatch(submission), end="")
    return 0
