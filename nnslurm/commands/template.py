"""`nnslurm template NAME`: a plain sbatch script (no submitit) filled in with your values.

The templates (slurm_templates/, packaged as nnslurm/templates/) are working scripts with marked
blocks; rendering replaces the blocks, quoting every value for the shell.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nnslurm.commands.options import (
    add_cluster_arguments,
    add_job_arguments,
    add_run_arguments,
    add_training_arguments,
    check_submission,
    cluster_settings_from_args,
    run_specs_from_args,
    training_options_from_args,
)
from nnslurm.core.cluster import ClusterSettings
from nnslurm.core.directives import directive
from nnslurm.core.errors import UsageError
from nnslurm.core.timeparse import format_time
from nnslurm.slurm.environment import TIME_ASKED_ENV, TIME_MIN_ENV

TEMPLATES = {
    "train": "nnslurm-train.sbatch",
    "folds-array": "nnslurm-folds-array.sbatch",
}
BEGIN, END = "# --- ", "# --- end of"
BLOCKS = ("sbatch options", "setup", "the run")


def template_text(name: str) -> str:
    """The template as shipped (package data), by short name or file name."""
    file_name = TEMPLATES.get(name, name)
    if file_name not in TEMPLATES.values():
        raise UsageError(f"no template {name!r}.", hint=f"choose one of: {', '.join(TEMPLATES)}.")
    return resources.files("nnslurm").joinpath("templates", file_name).read_text()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "template",
        help="print a plain sbatch script (no submitit) for one run or a fold array",
        description="Render one of nnslurm's sbatch templates with your values: `--signal=B:SIG@DELAY`, "
        "`--requeue`, `--open-mode=append` and `exec nnslurm train ...`, so the job stops at an iteration "
        "boundary on the walltime warning, checkpoints, requeues itself and resumes. Submit the result "
        "with sbatch. Templates: " + ", ".join(f"{k} ({v})" for k, v in TEMPLATES.items()) + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(TEMPLATES), help="which template")
    parser.add_argument("-o", "--output", type=Path, help="write the script here (default: stdout)")
    parser.add_argument("--raw", action="store_true", help="print the template as shipped, unrendered")
    add_run_arguments(
        parser,
        several_configurations=False,
        several_folds=True,
        positional=False,
        fold_help="train: one fold (default 0); folds-array: folds, lists, ranges",
    )
    add_training_arguments(parser)
    add_cluster_arguments(parser)
    group = parser.add_argument_group("script")
    add_job_arguments(group, log_dir_help="folder of the job's output file (default: where you sbatch)")
    group.add_argument(
        "--command",
        help="how the job runs nnslurm (default: this Python: "
        f"{shlex.quote(sys.executable)} -m nnslurm); e.g. 'nnslurm' when it is on the job's PATH",
    )
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class Rendering:
    """The values a template is filled with."""

    name: str  # "train" or "folds-array"
    cluster: ClusterSettings  # #SBATCH options, setup lines, the signal
    job_name: str  # --job-name
    folds: tuple[str, ...]  # train: one; folds-array: one per task
    train_args: tuple[str, ...]  # `nnslurm train` arguments except the fold
    command: tuple[str, ...]  # how to run nnslurm in the job
    output: str  # --output pattern
    environment: tuple[tuple[str, str], ...]  # nnUNet_* variables exported in the setup block


def run(args: argparse.Namespace) -> int:
    if args.raw:
        text = template_text(args.name)
    else:
        text = render(template_text(args.name), rendering_from_args(args))
    if args.output:
        args.output.write_text(text)
        args.output.chmod(0o755)
        print(f"wrote {args.output}; submit it with: sbatch {shlex.quote(str(args.output))}")
    else:
        print(text, end="")
    return 0


def rendering_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Rendering:
    if not args.dataset:
        raise UsageError(
            "--dataset is required to render a template.", hint="or pass --raw for the template."
        )
    runs = run_specs_from_args(args, default_folds=["0"] if args.name == "train" else [])
    if args.name == "train" and len(runs) != 1:
        raise UsageError(
            "the train template runs one fold.", hint="use `nnslurm template folds-array` for several."
        )
    options = training_options_from_args(args)
    cluster = cluster_settings_from_args(args)
    check_submission(cluster, options)
    env = dict(os.environ) if environ is None else environ
    run = runs[0]
    default_name = f"nnslurm-{run.dataset}-{run.configuration}" + (
        f"-f{run.fold}" if args.name == "train" else ""
    )
    pattern = "nnslurm-%x-%j.out" if args.name == "train" else "nnslurm-%x-%A_%a.out"
    log_dir = Path(cluster.log_dir) if cluster.log_dir else None  # checked in ClusterSettings
    run_args = ["-d", run.dataset, "-c", run.configuration, "-tr", run.trainer, "-p", run.plans]
    return Rendering(
        name=args.name,
        cluster=cluster,
        job_name=args.job_name or default_name,  # checked where it is written (directive)
        folds=tuple(run.fold for run in runs),
        train_args=tuple(run_args + options.to_argv()),
        command=tuple(shlex.split(args.command)) if args.command else (sys.executable, "-m", "nnslurm"),
        output=str(log_dir / pattern) if log_dir else pattern,
        environment=tuple(sorted((k, v) for k, v in env.items() if k.startswith("nnUNet_"))),
    )


def render(template: str, values: Rendering) -> str:
    """Replace the template's marked blocks; everything else stays as shipped."""
    blocks = {
        "sbatch options": sbatch_lines(values),
        "setup": setup_lines(values),
        "the run": run_lines(values),
    }
    out: list[str] = []
    replacing: str | None = None
    seen = set()
    for line in template.splitlines():
        if replacing is not None:
            if line.startswith(END):
                out.append(line)
                replacing = None
            continue
        out.append(line)
        if line.startswith(BEGIN) and not line.startswith(END):
            block = next((name for name in BLOCKS if line[len(BEGIN) :].startswith(name)), None)
            if block is not None:
                out.extend(blocks[block])
                seen.add(block)
                replacing = block
    missing = set(BLOCKS) - seen
    if missing or replacing is not None:
        raise UsageError(
            f"the template lacks the marked block(s) {', '.join(sorted(missing))} or an end marker."
        )
    return "\n".join(out) + "\n"


def sbatch_lines(values: Rendering) -> list[str]:
    cluster = values.cluster
    lines = [directive("job-name", values.job_name)]
    if values.name == "folds-array":
        lines.append(directive("array", f"0-{len(values.folds) - 1}"))
    warning = f"B:{cluster.signal_name}@{cluster.signal_delay_s}"
    lines += [
        directive("time", format_time(cluster.time_s)),
        *([directive("time-min", format_time(cluster.time_min_s))] if cluster.time_min_s is not None else []),
        *([directive("signal", warning)] if cluster.send_signal else []),  # none with --no-signal
        directive("requeue"),
        directive("open-mode", "append"),
        directive("output", values.output),
    ]
    optional = (
        ("partition", cluster.partition),
        ("account", cluster.account),
        ("qos", cluster.qos),
        *((("nodes", str(cluster.nodes)), ("ntasks-per-node", "1")) if cluster.nodes > 1 else ()),
        ("gpus-per-node", str(cluster.gpus) if cluster.gpus else None),
        ("cpus-per-task", str(cluster.cpus_per_task) if cluster.cpus_per_task else None),
        ("mem", cluster.mem),
        ("constraint", cluster.constraint),
    )
    lines += [directive(key, value) for key, value in optional if value is not None]
    lines += [directive(key, value) for key, value in cluster.sbatch_args]
    return lines


def setup_lines(values: Rendering) -> list[str]:
    lines = [f"export {name}={shlex.quote(value)}" for name, value in values.environment]
    lines += list(values.cluster.setup)
    return lines


def run_lines(values: Rendering) -> list[str]:
    cluster = values.cluster
    # several nodes: srun starts one launcher per node, and passes the B: signal on to each
    launch = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=0"] if cluster.nodes > 1 else []
    lines = [
        f"NNSLURM=({shlex.join(values.command)})",
        f"LAUNCH=({shlex.join(launch)})  # "
        + ("one launcher of -num_gpus ranks per node" if launch else "none: one node (--nodes M: srun)"),
        f"export NNSLURM_WARNING_SIGNAL={values.cluster.signal_name} NNSLURM_SIGNAL_DELAY="
        f"{values.cluster.signal_delay_s}  # the signal of --signal above, and its lead"
        if values.cluster.send_signal
        else "# --no-signal: no warning signal; the end-time rule stops the job before its limit",
    ]
    if cluster.time_min_s is not None:  # the job compares its granted limit with these
        lines.append(f"export {TIME_ASKED_ENV}={cluster.time_s} {TIME_MIN_ENV}={cluster.time_min_s}")
    if values.name == "folds-array":
        lines.append(f"FOLDS=({' '.join(shlex.quote(fold) for fold in values.folds)})")
        lines.append(f"NNSLURM_TRAIN_ARGS=({shlex.join(values.train_args)})")
    else:
        lines.append(f"NNSLURM_TRAIN_ARGS=({shlex.join([*values.train_args, '-f', values.folds[0]])})")
    return lines
