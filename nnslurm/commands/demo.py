"""`nnslurm demo`: watch a run stop before its time limit, checkpoint, requeue and finish.

Without SLURM it uses submitit's local executor, which enforces --time on this machine; on a
SLURM login node `--executor slurm` shows the same on the cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnslurm.commands.options import (
    add_cluster_arguments,
    add_executor_argument,
    add_length_arguments,
    add_signal_delay_argument,
    add_time_argument,
    add_training_arguments,
    cluster_settings_from_args,
    training_options_from_args,
    with_defaults,
)
from nnslurm.commands.synthetic import PACED_TRAINER, TINY_PLANS, make_synthetic_dataset
from nnslurm.core.config import RunSpec, TrainJob
from nnslurm.core.locations import FOLDER_VARIABLES, demo_folder
from nnslurm.core.nnunet import output_folder
from nnslurm.core.timeparse import format_time
from nnslurm.runs.events import Event, read_events

if TYPE_CHECKING:  # nnslurm.jobs.submission imports submitit: only when a command submits
    from nnslurm.jobs.submission import Submission

logger = logging.getLogger(__name__)

DATASET_ID, DATASET_NAME = 501, "Synthetic"
DEMO_TRAINER = PACED_TRAINER  # so the run outlasts one start on any machine: the demo always shows a stop
SUBFOLDERS = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a short training that is stopped by its time limit, requeued and resumed (no SLURM needed)",
        description="Build a tiny synthetic nnU-Net dataset (once), then `nnslurm submit` a training whose "
        "--time is shorter than the training: it gets the warning signal, stops at an iteration boundary, "
        "writes a checkpoint, requeues itself and resumes, until it finishes. Prints the story at the end. "
        "nnUNet_raw/_preprocessed/_results default to folders under --data-dir.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("demo-data"),
        help="where the demo's nnU-Net folders go when nnUNet_* are unset (default: %(default)s)",
    )
    add_executor_argument(parser, default="local")
    add_time_argument(parser, default="0:25")
    add_signal_delay_argument(parser, default=8)
    add_length_arguments(parser, epochs=3, iterations=40)
    # What the demo sets without a flag: a tiny, quick run on the CPU.
    parser.set_defaults(handler=run, val_iterations_per_epoch=2, no_final_validation=True, device="cpu")


def run(args: argparse.Namespace) -> int:
    from nnslurm.commands.submit import make_submission, send

    started = time.time()
    data_dir = args.data_dir.expanduser().absolute()
    for variable in FOLDER_VARIABLES:
        if not os.environ.get(variable):
            os.environ[variable] = str(data_dir / SUBFOLDERS[variable])
            Path(os.environ[variable]).mkdir(parents=True, exist_ok=True)
        print(f"{variable}={os.environ[variable]}")
    os.environ.setdefault("nnUNet_def_n_proc", "1")  # tiny validation: one process is fastest
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # and single-process augmentation on a laptop

    plans = (
        Path(os.environ["nnUNet_preprocessed"])
        / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
        / f"{TINY_PLANS}.json"
    )
    if not plans.is_file():
        print("building the synthetic dataset Dataset501_Synthetic (once, about 20 s) ...", flush=True)
        make_synthetic_dataset(DATASET_ID, DATASET_NAME, cases=8, size=32, preprocess=True)
    run_spec = RunSpec(
        dataset=str(DATASET_ID), configuration="3d_fullres", fold="0", trainer=DEMO_TRAINER, plans=TINY_PLANS
    )
    folder = output_folder(run_spec)
    if folder.exists():  # the demo's own run of the synthetic dataset: start it over
        shutil.rmtree(folder)

    args.log_dir = demo_folder(Path(os.environ["nnUNet_results"]))
    # The settings `nnslurm submit` would make of the same flags: a [profiles.default] applies too.
    full = with_defaults(args, add_training_arguments, add_cluster_arguments)
    options, cluster = training_options_from_args(full), cluster_settings_from_args(full)
    submission = make_submission([TrainJob(run_spec, options)], cluster, executor=args.executor)
    print(f"\n$ {shlex.join(submit_command(submission))}\n", flush=True)
    status = send(submission, wait=True)
    print_story(folder, started)
    if status != 0:
        print("the run did not finish: on a busy machine each start does little; try --time 1:00")
    return status


def submit_command(submission: Submission) -> list[str]:
    """The `nnslurm submit` command line that makes the same submission (shown to the user)."""
    (job,) = submission.jobs
    run, cluster = job.run, submission.cluster
    return [
        *("nnslurm", "submit", "-d", run.dataset, "-f", run.fold, "-p", run.plans, "-tr", run.trainer),
        *job.options.to_argv(),
        *("--executor", submission.executor, "--time", format_time(cluster.time_s)),
        *("--signal-delay", str(cluster.signal_delay_s), "--log-dir", str(submission.log_dir), "--wait"),
    ]


def print_story(folder: Path, started: float) -> None:
    """The run's event log as a timeline, and what each interruption cost."""
    records = read_events(folder)
    if not records:
        print(f"no events in {folder}")
        return
    t0 = records[0]["time"]
    print("\nwhat happened (from nnslurm_events.jsonl):")
    for record in records:
        kind = record.get("event")
        if kind not in _STORY or (
            kind == Event.STARTED and record.get("epoch", 0) + record.get("iteration", 0)
        ):
            continue
        where = f"epoch {record['epoch']} iteration {record['iteration']}" if "epoch" in record else ""
        extra = record.get("kind") or record.get("signal") or record.get("checkpoint") or ""
        if kind == Event.REQUEUED:
            extra = f"by {record.get('by')} ({record.get('reason')})"
        print(f"  {record['time'] - t0:6.1f} s  {kind:<9} {where:<24} {extra}")
    stops = [r for r in records if r.get("event") == Event.STOPPED]
    resumes = [r for r in records if r.get("event") == Event.RESUMED]
    per_epoch = (
        next((r.get("iterations_per_epoch") for r in records if r.get("event") == Event.STARTED), 0) or 0
    )
    redone = [
        (s["epoch"] * per_epoch + s["iteration"]) - (r["epoch"] * per_epoch + r["iteration"])
        for s, r in zip(stops, resumes, strict=False)
    ]
    final = folder / "checkpoint_final.pth"
    print(f"\n{len(stops)} stop(s), {len(resumes)} resume(s), iterations redone per stop: {redone or '-'}")
    print(f"final checkpoint: {final if final.is_file() else 'not written'}")
    print(f"demo took {time.time() - started:.0f} s")


# The records the demo's story shows (a "started" only when training begins at 0).
_STORY = (
    Event.SUBMITTED,
    Event.STARTED,
    Event.RESUMED,
    Event.SIGNAL,
    Event.STOPPED,
    Event.DECISION,
    Event.REQUEUED,
    Event.FINISHED,
    Event.FAILED,
)
