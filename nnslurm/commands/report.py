"""`nnslurm report RUN_FOLDER|JOBID`: the run's timeline picture and a short text summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nnslurm.core.locations import results_or_none
from nnslurm.runs.discovery import resolve
from nnslurm.runs.status import statuses

DEFAULT_PICTURE = "nnslurm_timeline.png"
EPILOG = f"""\
The picture (1440 x 780 pixels): x = wall-clock time; y = progress in epochs (epoch + iteration
/ iterations per epoch) as a black line; a shaded band per start of a job, hatched bands where
nothing trained (queued, waiting for a requeue); a dashed line and marker per interruption, by
kind (walltime, preemption, requeue from outside, cancel, kill without a signal, stop signal,
failure); checkpoint ticks along the bottom (red: written at a stop); pseudo-Dice (EMA, from
nnU-Net's logger in the newest checkpoint) on the right axis. A dotted line joins the end of one
start to the next; where it drops, iterations were redone.

The summary: total wall time (first to last record), compute time (first to last record of each
training process, start-up imports excluded), queued / idle time (the rest), iterations redone,
and every interruption with its evidence.

--json prints the summary, schema "nnslurm.runs.timeline/1": folder, state, start, end, wall_s,
compute_s, queue_s (before the first start), idle_s (between starts), starts, interruptions
{{kind: count}}, iterations_redone, position {{epoch, iteration, time}}, events[] (kind, time,
job_id, signal, at, resumed_at, reason), picture (its path, or null). A job id of a whole
array prints a list of these documents.

Without -o the picture goes to RUN_FOLDER/{DEFAULT_PICTURE}.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="a run's timeline picture (progress, interruptions, checkpoints, pseudo-Dice) and summary",
        description="Draw the run's progress against wall-clock time and print where the time went.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN_FOLDER|JOBID", help="a run folder, or a job id of the run")
    parser.add_argument(
        "-o", "--output", type=Path, help=f"the PNG to write (default: RUN_FOLDER/{DEFAULT_PICTURE})"
    )
    parser.add_argument("--no-picture", action="store_true", help="only the summary")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--no-scheduler", action="store_true", help="do not ask squeue/sacct whether the job still runs"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nnslurm.runs import timeline as report

    targets = resolve(args.run, results_or_none())
    folders = list(dict.fromkeys(folder for folder, _ in targets))
    if args.output is not None and len(folders) > 1:
        from nnslurm.core.errors import UsageError

        raise UsageError(
            f"{args.run} names {len(folders)} runs (a job array); -o can hold one picture.",
            hint="pass one task's id (ARRAY_TASK) or its run folder, or leave out -o.",
        )
    rows, _ = statuses(folders, use_scheduler=not args.no_scheduler)
    documents = []
    for row in rows:
        summary = report.summarize(row)
        picture = None
        if not args.no_picture:
            dice = report.read_dice(row.folder)
            picture = report.draw_timeline(row, summary, dice, args.output or row.folder / DEFAULT_PICTURE)
        if args.json:
            documents.append(
                {**report.summary_json(row, summary), "picture": str(picture) if picture else None}
            )
            continue
        print("\n".join(report.summary_lines(row, summary)))
        if picture is not None:
            print(f"picture:           {picture}")
    if args.json:
        print(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
    return 0
