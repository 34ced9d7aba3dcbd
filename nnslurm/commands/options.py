"""The command-line options of train, submit, template and demo, declared once, and the one place
where a parsed command line becomes settings (RunSpec, TrainingOptions, StageSettings,
ClusterSettings).

A command that takes only a few of these options (demo) declares them here with its own defaults
and gives the rest their usual defaults (`with_defaults`), so it converts through the same functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from nnslurm.core.cluster import (
    DEFAULT_SIGNAL_DELAY_S,
    ClusterSettings,
    parse_sbatch_arg,
    resolve,
)
from nnslurm.core.config import (
    DEFAULT_STOP_SIGNALS,
    RunSpec,
    StageSettings,
    TrainingOptions,
    TrainJob,
    parse_signal_list,
)
from nnslurm.core.errors import UsageError
from nnslurm.core.timeparse import parse_time
from nnslurm.slurm.end_time import check_limits
from nnslurm.training.weights_file import check_weights_file

logger = logging.getLogger(__name__)

DEFAULT_CONFIGURATION = "3d_fullres"
# The usage line of train and submit: nnUNetv2_train's form first.
RUN_USAGE = (
    "%(prog)s DATASET CONFIGURATION FOLD [options]\n"
    "       %(prog)s -d DATASET [-c CONFIGURATION] {folds} [options]"
)
CROSS_VALIDATION_FOLDS = ("0", "1", "2", "3", "4")

T = TypeVar("T")


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type` from a parser that raises UsageError: argparse then names the flag."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__  # argparse shows it in "invalid <name> value"
    return convert


# --- declarations -------------------------------------------------------------------------------


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    several_configurations: bool,
    several_folds: bool,
    positional: bool,
    fold_help: str | None = None,
) -> None:
    """The nnU-Net names of the run(s), as nnUNetv2_train takes them: `DATASET CONFIGURATION
    FOLD` (with `positional`) or -d/-c/-f. submit and template take several folds (and submit
    several configurations), each repeatable. The dataset and fold are checked when the settings
    are made (run_specs_from_args), since either spelling may give them."""
    parser.set_defaults(several_folds=several_folds)
    group = parser.add_argument_group("what to train (nnUNetv2_train's names)")
    if positional:
        for name, flag in (("dataset", "-d"), ("configuration", "-c"), ("fold", "-f")):
            group.add_argument(
                f"positional_{name}",
                nargs="?",
                metavar=name.upper(),
                help=f"as nnUNetv2_train takes it; or {flag}",
            )
    group.add_argument(
        "-d",
        "--dataset",
        help="dataset id or name, e.g. 501 or Dataset501_Synthetic"
        + ("" if positional else " (required unless --raw)"),
    )
    if several_configurations:
        group.add_argument(
            "-c",
            "--configuration",
            action="append",
            help=f"nnU-Net configuration; repeat for several (default: {DEFAULT_CONFIGURATION})",
        )
    else:
        group.add_argument(
            "-c",
            "--configuration",
            help=f"nnU-Net configuration (2d, 3d_fullres, 3d_lowres, ...; default: {DEFAULT_CONFIGURATION})",
        )
    if several_folds:
        group.add_argument(
            "-f",
            "--fold",
            action="append",
            help=fold_help
            or "fold 0..4, a list 0,2 or a range 0-4; repeat for several; 'all' is nnU-Net's "
            "fold trained on every case (see below)",
        )
        group.add_argument("--cross-validation", action="store_true", help="folds 0,1,2,3,4 (one job array)")
    else:
        group.add_argument("-f", "--fold", help="fold 0..4, or 'all' (nnU-Net: train on every case)")
    group.add_argument(
        "-tr",
        "--trainer",
        default="nnUNetTrainer",
        help="trainer class, as -tr of nnUNetv2_train, or package.module:Class (default: %(default)s)",
    )
    group.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: %(default)s)")


def add_device_argument(group: argparse._ActionsContainer, help: str) -> None:
    """-device as nnU-Net spells it (and --device): auto is cuda when available, else cpu."""
    group.add_argument("-device", "--device", default="auto", choices=("auto", "cpu", "cuda"), help=help)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Every TrainingOptions field as a flag (TrainingOptions.to_argv writes them back)."""
    group = parser.add_argument_group("training length (recorded with the run; a resume must match)")
    add_length_arguments(group)
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
    group.add_argument(
        "--start-over",
        action="store_true",
        help="when checkpoint files exist but none can be used (damaged, or unreadable here), move "
        "them aside as NAME.unusable-TIME and train from epoch 0; without it such a run refuses to "
        "start. A usable checkpoint is still resumed",
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
    add_device_argument(group, "as nnUNetv2_train -device (default: cuda when available, else cpu)")
    group.add_argument(
        "-pretrained_weights",
        type=Path,
        metavar="PATH",
        help="as nnUNetv2_train: a fresh start loads these weights (nnU-Net's "
        "load_pretrained_weights: all but the segmentation layers); recorded with the run (path, "
        "sha256). A resume keeps its checkpoint's weights and refuses another file",
    )
    group.add_argument(
        "-num_gpus",
        type=int,
        default=1,
        help="as nnUNetv2_train: N ranks on one node, launched by nnslurm (NCCL on CUDA, gloo with "
        "-device cpu), stopped together and resumed exactly; submit and template ask SLURM for N GPUs "
        "(none with -device cpu); not with the workflow chain yet (default: 1)",
    )
    group = parser.add_argument_group("validation")
    group.add_argument(
        "--no-final-validation",
        action="store_true",
        help="skip nnU-Net's final validation on the fold's validation cases",
    )
    group.add_argument(
        "--npz",
        action="store_true",
        help="as nnUNetv2_train: the final validation also writes the softmax .npz (and .pkl) "
        "of every validation case (nnUNetv2_find_best_configuration needs them)",
    )
    group.add_argument(
        "--val",
        action="store_true",
        help="as nnUNetv2_train: only validate the finished run (checkpoint_final.pth) into "
        "validation/; stoppable: the same command redoes it",
    )
    group.add_argument(
        "--val_best",
        action="store_true",
        help="as nnUNetv2_train: validate with checkpoint_best.pth instead of "
        "checkpoint_final.pth (without --val: after training), into the same validation/",
    )
    group = parser.add_argument_group("accepted for nnUNetv2_train's command lines")
    group.add_argument(
        "--c", action="store_true", help="continue training: nnslurm always resumes, so this changes nothing"
    )
    group.add_argument(
        "--disable_checkpointing",
        action="store_true",
        help="refused: without checkpoints a stop would lose the run",
    )
    group = parser.add_argument_group("stopping")
    group.add_argument(
        "--stop-signals",
        default=",".join(DEFAULT_STOP_SIGNALS),
        type=checked(parse_signal_list),
        help="signals that mean: stop at the next iteration boundary (a chain's other stages: the "
        "next unit), checkpoint, exit 75 (default: %(default)s)",
    )
    group.add_argument(
        "--stop-deadline",
        type=float,
        metavar="SECONDS",
        help="when a stop signal finds no iteration boundary this long (start-up, final "
        "validation), exit resumable without a new checkpoint (default: "
        f"{TrainingOptions.stop_deadline_s:g}; a chain's other stages: a unit, "
        f"{StageSettings.stop_deadline_s:g})",
    )
    group.add_argument(
        "--max-requeues",
        type=int,
        default=TrainingOptions.max_requeues,
        help="inside SLURM: requeue each job (every stage of a chain) at most N times after walltime "
        "warnings (default: %(default)s)",
    )
    group.add_argument(
        "--end-time-safety",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="inside SLURM, with or without a warning signal: stop, checkpoint and requeue when the "
        "time left to the job's EndTime falls under the slowest next iteration (validation step, "
        "epoch end) + a stop checkpoint + this many seconds (default: %(default)s)",
    )
    group.add_argument(
        "--no-end-time-stop",
        action="store_true",
        help="disable that rule: stop on signals only",
    )
    group.add_argument(
        "--end-time-refresh",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="re-read the job's EndTime (scontrol) this often; it changes after `scontrol update "
        "TimeLimit=`, and on preemption (default: %(default)s)",
    )


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """SLURM settings (submit and template); None = take the profile's or the default."""
    group = parser.add_argument_group("cluster (sbatch options; a --profile supplies defaults)")
    group.add_argument("--profile", help="[profiles.NAME] of ./nnslurm.toml or ~/.config/nnslurm/config.toml")
    group.add_argument("--partition", help="sbatch --partition")
    group.add_argument("--account", help="sbatch --account")
    group.add_argument("--qos", help="sbatch --qos")
    add_time_argument(group)
    group.add_argument(
        "--time-min",
        type=checked(parse_time_min),
        help="sbatch --time-min: SLURM may start the job sooner, in a backfill window, with a limit "
        "down to this (the job reads its real end and stops before it); same formats as --time",
    )
    group.add_argument("--gpus", type=int, help="sbatch --gpus-per-node")
    group.add_argument(
        "--nodes",
        type=int,
        help="sbatch --nodes: train across M nodes, one srun task per node launching its -num_gpus "
        "ranks (M x N ranks in all; the results and preprocessed folders must be shared)",
    )
    group.add_argument("--cpus-per-task", type=int, help="sbatch --cpus-per-task")
    group.add_argument("--mem", help="sbatch --mem, e.g. 64G")
    group.add_argument("--constraint", help="sbatch --constraint")
    group.add_argument(
        "--sbatch-arg",
        action="append",
        type=checked(parse_sbatch_arg),
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
    add_signal_delay_argument(group)
    group.add_argument(
        "--no-signal",
        action="store_true",
        help="no --signal in the script (sites whose job_submit plugin strips it): the end-time rule "
        "(--end-time-safety) alone stops the job before its limit, so not with --no-end-time-stop",
    )


def add_length_arguments(
    group: argparse._ActionsContainer, epochs: int | None = None, iterations: int | None = None
) -> None:
    """--epochs and --iterations-per-epoch; None: nnU-Net's."""
    shown = f"default: {epochs}" if epochs else "nnU-Net default: 1000"
    group.add_argument("--epochs", type=int, default=epochs, help=f"epochs to train ({shown})")
    group.add_argument(
        "--iterations-per-epoch",
        type=int,
        default=iterations,
        help=f"training iterations per epoch (default: {iterations or 250})",
    )


def add_time_argument(group: argparse._ActionsContainer, default: str | None = None) -> None:
    """--time; None: the profile's, else ClusterSettings' (24:00:00)."""
    group.add_argument(
        "--time",
        type=checked(parse_time),
        default=default,
        help="time limit per start, SLURM's formats: 90 (minutes), 0:45 (45 s), 1:30:00, "
        f"2-00:00:00 (default: {default or '24:00:00'}; SLURM rounds up to whole minutes)",
    )


def parse_time_min(text: str) -> int:
    return parse_time(text, flag="--time-min")


def add_signal_delay_argument(group: argparse._ActionsContainer, default: int | None = None) -> None:
    """--signal-delay; None: the profile's, else ClusterSettings'."""
    group.add_argument(
        "--signal-delay",
        type=int,
        default=default,
        metavar="SECONDS",
        help="send the warning signal this long before the time limit (default: "
        f"{DEFAULT_SIGNAL_DELAY_S if default is None else default}; SLURM may send it up to 60 s "
        "earlier). Must leave time for one iteration plus a checkpoint",
    )


def add_executor_argument(group: argparse._ActionsContainer, default: str = "auto") -> None:
    """--executor: where the jobs run (nnslurm.jobs.submission.choose_executor)."""
    group.add_argument(
        "--executor",
        default=default,
        choices=("auto", "slurm", "local"),
        help="slurm, local (this machine, through submitit), or auto: slurm when sbatch "
        "is on the PATH (default: %(default)s)",
    )


def add_job_arguments(group: argparse._ActionsContainer, log_dir_help: str) -> None:
    """--job-name and --log-dir (the log folder holds submitit's files, or a script's output)."""
    group.add_argument("--job-name", help="sbatch --job-name (default: nnslurm-DATASET-CONFIG[-fFOLD])")
    group.add_argument("--log-dir", type=Path, help=log_dir_help)


# --- parsed command line -> settings ------------------------------------------------------------


def with_defaults(
    args: argparse.Namespace, *declarations: Callable[[argparse.ArgumentParser], None]
) -> argparse.Namespace:
    """`args` plus every option of `declarations` it lacks, at that option's default: a command
    that takes a few of the options still converts through the functions below."""
    parser = argparse.ArgumentParser(add_help=False)
    for declare in declarations:
        declare(parser)
    return argparse.Namespace(**{**vars(parser.parse_args([])), **vars(args)})


def training_options_from_args(args: argparse.Namespace) -> TrainingOptions:
    if args.disable_checkpointing:
        raise UsageError(
            "--disable_checkpointing is refused: nnslurm's checkpoints are what lets a stopped run "
            "resume; without them every stop (walltime, preemption) would lose the training.",
            hint="drop --disable_checkpointing; --save-every-epochs and --save-every-minutes set how often.",
        )
    return TrainingOptions(
        num_epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        val_iterations_per_epoch=args.val_iterations_per_epoch,
        save_every_epochs=args.save_every_epochs,
        save_every_minutes=None if args.no_timed_saves else args.save_every_minutes,
        resume_from=args.resume_from,
        start_over=args.start_over,
        deterministic=args.deterministic,
        seed=args.seed,
        device=args.device,
        num_gpus=args.num_gpus,
        final_validation=not args.no_final_validation,
        stop_signals=tuple(args.stop_signals),
        stop_deadline_s=TrainingOptions.stop_deadline_s if args.stop_deadline is None else args.stop_deadline,
        max_requeues=args.max_requeues,
        end_time_safety_s=None if args.no_end_time_stop else args.end_time_safety,
        end_time_refresh_s=args.end_time_refresh,
        npz=args.npz,
        validation_only=args.val,
        validation_checkpoint="best" if args.val_best else "final",
        # absolute: a job may start in another folder, and a resume compares the recorded path
        pretrained_weights=args.pretrained_weights.absolute() if args.pretrained_weights else None,
    )


def stage_settings_from_args(args: argparse.Namespace) -> StageSettings:
    """How a chain's stages that are not a training stop: the same --stop-signals, --stop-deadline
    (when given; else a unit's default) and --max-requeues as its trainings."""
    return StageSettings(
        stop_signals=tuple(args.stop_signals),
        stop_deadline_s=StageSettings.stop_deadline_s if args.stop_deadline is None else args.stop_deadline,
        max_requeues=args.max_requeues,
    )


def run_specs_from_args(args: argparse.Namespace, default_folds: Sequence[str] = ()) -> tuple[RunSpec, ...]:
    """Every configuration x every fold of the command line, in the order given."""
    dataset = _one_spelling(args, "dataset", "-d")
    if not dataset:
        raise UsageError(
            "no dataset given.",
            hint="name the run as nnUNetv2_train does (DATASET CONFIGURATION FOLD, e.g. 501 3d_fullres 0) "
            "or with -d DATASET -f FOLD.",
        )
    configurations = _given(_one_spelling(args, "configuration", "-c")) or [DEFAULT_CONFIGURATION]
    folds_given = _given(_one_spelling(args, "fold", "-f"))
    if args.several_folds:
        folds = parse_folds(folds_given or list(default_folds), args.cross_validation)
    elif folds_given:  # `nnslurm train`: one fold, passed on to nnU-Net as given
        folds = folds_given
    else:
        raise UsageError("no fold given.", hint="pass the fold after the configuration, or -f FOLD.")
    return tuple(
        RunSpec(
            dataset=str(dataset),
            configuration=configuration,
            fold=fold,
            trainer=args.trainer,
            plans=args.plans,
        )
        for configuration in dict.fromkeys(configurations)
        for fold in folds
    )


def training_jobs_from_args(args: argparse.Namespace) -> tuple[TrainJob, ...]:
    options = training_options_from_args(args)
    return tuple(TrainJob(run=run, options=options) for run in run_specs_from_args(args))


def training_job_from_args(args: argparse.Namespace) -> TrainJob:
    """`nnslurm train`: exactly one run."""
    (job,) = training_jobs_from_args(args)
    return job


def cluster_settings_from_args(args: argparse.Namespace) -> ClusterSettings:
    """The cluster settings (profile < flags), with the GPUs the ranks need (`gpus_for_ranks`)."""
    if args.no_signal and (args.signal is not None or args.signal_delay is not None):
        raise UsageError(
            "--no-signal with --signal/--signal-delay: choose one.",
            hint="drop --no-signal to send the warning, or drop --signal/--signal-delay.",
        )
    overrides = {
        "partition": args.partition,
        "account": args.account,
        "qos": args.qos,
        "time_s": args.time,
        "time_min_s": getattr(args, "time_min", None),
        "gpus": args.gpus,
        "nodes": args.nodes,
        "cpus_per_task": args.cpus_per_task,
        "mem": args.mem,
        "constraint": args.constraint,
        "signal": args.signal,
        "signal_delay_s": args.signal_delay,
        "send_signal": False if args.no_signal else None,
        "sbatch_args": tuple(args.sbatch_arg) if args.sbatch_arg else None,
        "setup": tuple(args.setup) if args.setup else None,
        "log_dir": str(args.log_dir) if args.log_dir else None,
    }
    settings, path = resolve(args.profile, overrides)
    if path is not None:
        logger.info("profile %s from %s", args.profile or "default", path)
    return gpus_for_ranks(settings, args.num_gpus, args.device, gpus_flag=args.gpus)


def gpus_for_ranks(
    cluster: ClusterSettings, num_gpus: int, device: str, gpus_flag: int | None
) -> ClusterSettings:
    """-num_gpus N > 1: N GPUs on each node (--gpus-per-node), none with -device cpu, whose ranks
    share the node's CPUs. A different --gpus is refused (it would start ranks without GPUs, or
    leave GPUs idle); a profile's `gpus` gives way to -num_gpus, which is per command."""
    if num_gpus <= 1:
        return cluster
    if device == "cpu":
        return cluster
    if gpus_flag is not None and gpus_flag != num_gpus:
        raise UsageError(
            f"--gpus {gpus_flag} with -num_gpus {num_gpus}: each rank needs a GPU of its own, on one node.",
            hint=f"drop --gpus (-num_gpus {num_gpus} asks for {num_gpus}), or give -num_gpus {gpus_flag}.",
        )
    if cluster.gpus not in (None, num_gpus):
        logger.info("-num_gpus %d: as many GPUs per node, not the profile's %d", num_gpus, cluster.gpus)
    return dataclasses.replace(cluster, gpus=num_gpus)


def check_submission(
    cluster: ClusterSettings, options: TrainingOptions, checkpoint_s: float | None = None
) -> None:
    """What submit and template check before anything is queued: the warning signal, limits no
    start can progress in (with the run's own measured checkpoint time `checkpoint_s` when it has
    one, else an estimate), and a -pretrained_weights file the job could not load (caught at its
    start only, hours later)."""
    check_warning_signal(cluster, options)
    check_limits(
        cluster.time_s,
        cluster.time_min_s,
        options.end_time_safety_s,
        cluster.signal_delay_s if cluster.send_signal else None,
        **({"checkpoint_s": checkpoint_s} if checkpoint_s is not None else {}),
    )
    if options.pretrained_weights is not None:
        check_weights_file(options.pretrained_weights)


def check_warning_signal(cluster: ClusterSettings, options: TrainingOptions) -> None:
    """The walltime warning must be a stop signal, or it would kill the training instead; without
    one (--no-signal) the end-time rule is the only stop before the limit, so it must be on."""
    if not cluster.send_signal:
        if options.end_time_safety_s is None:
            raise UsageError(
                "--no-signal with --no-end-time-stop: nothing would stop the job before its time limit; "
                "the work since the last periodic checkpoint would be lost at every limit.",
                hint="drop --no-end-time-stop (the end-time rule then stops the job), or drop --no-signal.",
            )
        return
    if cluster.signal_name not in options.stop_signals:
        raise UsageError(
            f"--signal {cluster.signal_name} is not one of --stop-signals {','.join(options.stop_signals)}: "
            "the walltime warning would kill the training instead of stopping it.",
            hint=f"add {cluster.signal_name} to --stop-signals or choose another --signal.",
        )


def parse_folds(values: Sequence[str] | None, cross_validation: bool) -> list[str]:
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


def _one_spelling(args: argparse.Namespace, name: str, flag: str) -> str | list[str] | None:
    """A run name given positionally (nnUNetv2_train's form) or by its flag, not both."""
    by_flag = getattr(args, name)
    positional = getattr(args, f"positional_{name}", None)
    if positional is None:
        return by_flag
    if by_flag:
        shown = by_flag if isinstance(by_flag, str) else " ".join(by_flag)
        raise UsageError(
            f"the {name} is given twice: {positional!r} and {flag} {shown}.",
            hint=f"give it once: after the command as nnUNetv2_train takes it, or with {flag}.",
        )
    return positional


def _given(value: str | list[str] | None) -> list[str]:
    """A flag's value(s) as a list: `append` flags give lists, single ones a string."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
