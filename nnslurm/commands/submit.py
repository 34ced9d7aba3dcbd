"""`nnslurm submit`: nnU-Net training as SLURM jobs (or local ones) that survive walltime and preemption."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from nnslurm.cluster import ClusterSettings, parse_sbatch_arg, resolve
from nnslurm.commands.train import add_training_arguments, training_job_from_args
from nnslurm.config import TrainJob
from nnslurm.errors import NnslurmError, UsageError
from nnslurm.timeparse import parse_time

logger = logging.getLogger(__name__)

CROSS_VALIDATION_FOLDS = ("0", "1", "2", "3", "4")

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
(--wait), 2 bad input. Nothing is submitted when the input is bad.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="submit training to SLURM (or run it locally) with stop, checkpoint, requeue, resume",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_submit_run_arguments(parser)
    add_training_arguments(parser)
    add_cluster_arguments(parser)
    group = parser.add_argument_group("submission")
    group.add_argument(
        "--executor",
        default="auto",
        choices=("auto", "slurm", "local"),
        help="slurm, local (this machine, through submitit), or auto: slurm when sbatch "
        "is on the PATH (default: %(default)s)",
    )
    group.add_argument("--job-name", help="SLURM job name (default: nnslurm-DATASET-CONFIG[-fFOLD])")
    group.add_argument(
        "--log-dir",
        type=Path,
        help="submitit's folder for scripts, pickles and logs (default: $nnUNet_results/.nnslurm/submitit)",
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
    parser.set_defaults(handler=run)


def add_submit_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to train (nnUNetv2_train's names)")
    group.add_argument(
        "-d", "--dataset", required=True, help="dataset id or name, e.g. 501 or Dataset501_Synthetic"
    )
    group.add_argument(
        "-c",
        "--configuration",
        action="append",
        help="nnU-Net configuration; repeat for several (default: 3d_fullres)",
    )
    group.add_argument(
        "-f",
        "--fold",
        action="append",
        help="fold 0..4, a list 0,2 or a range 0-4; repeat for several; 'all' is nnU-Net's "
        "fold trained on every case (see below)",
    )
    group.add_argument("--cross-validation", action="store_true", help="folds 0,1,2,3,4 (one job array)")
    group.add_argument(
        "-tr",
        "--trainer",
        default="nnUNetTrainer",
        help="trainer class, as -tr of nnUNetv2_train, or package.module:Class (default: %(default)s)",
    )
    group.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: %(default)s)")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """SLURM settings (also used by `nnslurm template`); None = take the profile's or the default."""
    group = parser.add_argument_group("cluster (sbatch options; a --profile supplies defaults)")
    group.add_argument("--profile", help="[profiles.NAME] of ./nnslurm.toml or ~/.config/nnslurm/config.toml")
    group.add_argument("--partition", help="sbatch --partition")
    group.add_argument("--account", help="sbatch --account")
    group.add_argument("--qos", help="sbatch --qos")
    group.add_argument(
        "--time",
        type=_time,
        help="time limit per start, SLURM's formats: 90 (minutes), 0:45 (45 s), 1:30:00, "
        "2-00:00:00 (default: 24:00:00; SLURM rounds up to whole minutes)",
    )
    group.add_argument("--gpus", type=int, help="sbatch --gpus-per-node")
    group.add_argument("--cpus-per-task", type=int, help="sbatch --cpus-per-task")
    group.add_argument("--mem", help="sbatch --mem, e.g. 64G")
    group.add_argument("--constraint", help="sbatch --constraint")
    group.add_argument(
        "--sbatch-arg",
        action="append",
        type=_sbatch_arg,
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. mail-type=END; KEY alone for a flag; repeatable",
    )
    group.add_argument(
        "--setup",
        action="append",
        metavar="LINE",
        help="shell line run in the job before training (module load ...); repeatable",
    )
    group.add_argument("--signal", help="walltime warning signal, as sbatch --signal (default: USR1)")
    group.add_argument(
        "--signal-delay",
        type=int,
        metavar="SECONDS",
        help="send it this long before the time limit (default: 120; SLURM may send it up "
        "to 60 s earlier). Must leave time for one iteration plus a checkpoint",
    )


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _sbatch_arg(text: str) -> tuple[str, str | None]:
    try:
        return parse_sbatch_arg(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    overrides = {
        "partition": args.partition,
        "account": args.account,
        "qos": args.qos,
        "time_s": args.time,
        "gpus": args.gpus,
        "cpus_per_task": args.cpus_per_task,
        "mem": args.mem,
        "constraint": args.constraint,
        "signal": args.signal,
        "signal_delay_s": args.signal_delay,
        "sbatch_args": tuple(args.sbatch_arg) if args.sbatch_arg else None,
        "setup": tuple(args.setup) if args.setup else None,
        "log_dir": str(args.log_dir) if getattr(args, "log_dir", None) else None,
    }
    settings, path = resolve(args.profile, overrides)
    if path is not None:
        logger.info("profile %s from %s", args.profile or "default", path)
    return settings


def parse_folds(values: list[str] | None, cross_validation: bool) -> list[str]:
    """['0', '2-3', '1,4'] -> ['0', '2', '3', '1', '4']; 'all' stays nnU-Net's fold 'all'."""
    folds: list[str] = []
    for value in values or []:
        for part in value.split(","):
            text = part.strip()
            if not text:
                continue
            if text == "all":
                folds.append("all")
            elif text.isdigit():
                folds.append(str(int(text)))
            elif "-" in text and all(side.strip().isdigit() for side in text.split("-", 1)):
                low, high = (int(side) for side in text.split("-", 1))
                if low > high:
                    raise UsageError(f"--fold {text}: the range is empty.", hint="write LOW-HIGH, e.g. 0-4.")
                folds.extend(str(fold) for fold in range(low, high + 1))
            else:
                raise UsageError(
                    f"--fold {text!r} is not a fold.",
                    hint="use 0..4, a list 0,2, a range 0-4, 'all', or --cross-validation.",
                )
    if cross_validation:
        folds.extend(CROSS_VALIDATION_FOLDS)
    if not folds:
        raise UsageError("no fold given.", hint="pass --fold 0 (or several), or --cross-validation.")
    return list(dict.fromkeys(folds))


def training_jobs(args: argparse.Namespace) -> list[TrainJob]:
    folds = parse_folds(args.fold, args.cross_validation)
    configurations = list(dict.fromkeys(args.configuration or ["3d_fullres"]))
    jobs = []
    for configuration in configurations:
        per_configuration = argparse.Namespace(**{**vars(args), "configuration": configuration})
        for fold in folds:
            jobs.append(training_job_from_args(per_configuration, fold=fold))
    return jobs


def run(args: argparse.Namespace) -> int:
    from nnslurm import launch

    jobs = training_jobs(args)
    cluster = cluster_settings(args)
    stop_signals = jobs[0].options.stop_signals
    if cluster.signal_name not in stop_signals:
        raise UsageError(
            f"--signal {cluster.signal_name} is not one of --stop-signals {','.join(stop_signals)}: "
            "the walltime warning would kill the training instead of stopping it.",
            hint=f"add {cluster.signal_name} to --stop-signals or choose another --signal.",
        )
    executor = launch.choose_executor(args.executor)
    log_dir = Path(cluster.log_dir).expanduser() if cluster.log_dir else launch.default_log_dir()
    submission = launch.Submission(
        jobs=tuple(jobs),
        cluster=cluster,
        executor=executor,
        log_dir=log_dir.absolute(),
        job_name=args.job_name or launch.default_job_name(jobs),
    )
    if args.dry_run:
        return dry_run(submission)
    launch.check_runs(jobs)
    submitted = launch.submit(submission)
    where = "SLURM" if executor == "slurm" else "this machine (submitit's local executor)"
    print(f"submitted {len(submitted)} job(s) to {where}")
    for submitted_job, train_job in zip(submitted, jobs, strict=True):
        folder = launch.run_folder(train_job)
        run = train_job.run
        print(f"  job {submitted_job.job_id}: {run.configuration} fold {run.fold} -> {folder}")
    print(f"logs: {submission.log_dir}/<job id>/ (stdout, stderr, submission script)")
    if not args.wait:
        if executor == "local":
            print(
                "the local jobs run in the background of this machine; "
                "follow them in the run folders' nnslurm_events.jsonl"
            )
        return 0
    reports = launch.wait(submitted, submission)
    print("summary:")
    for report in reports:
        print("  " + launch.describe_report(report))
    return 0 if all(report.state == launch.FINISHED for report in reports) else 1


def dry_run(submission: Any) -> int:
    from nnslurm import launch

    print("# nnslurm submit --dry-run: nothing is submitted")
    print(
        f"# executor: {submission.executor}"
        + (
            ""
            if submission.executor == "slurm"
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
        print(
            f"# {task}dataset {run.dataset}, {run.configuration}, fold {run.fold}, -tr {run.trainer}, "
            f"-p {run.plans}, max requeues {options.max_requeues} -> {folder or '$nnUNet_results/...'}"
        )
    try:
        launch.check_runs(submission.jobs)
    except NnslurmError as error:
        print(f"# WARNING: this submission would fail: {error}".replace("\n", "\n# "))
    print()
    print(launch.render_sbatch(submission), end="")
    return 0
