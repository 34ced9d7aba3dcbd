"""`nnslurm status`: one row per run under $nnUNet_results, as a table, JSON, or refreshed in place."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from nnslurm.core.errors import NnslurmError, UsageError
from nnslurm.core.locations import RESULTS, chains_folder, env_folder
from nnslurm.core.timeparse import describe
from nnslurm.runs.chains import ChainRecord, read_chains
from nnslurm.runs.discovery import discover
from nnslurm.runs.state import RunState
from nnslurm.runs.status import SCHEMA, RunStatus, iso_time, statuses
from nnslurm.workflow.chain_status import StageStatus, chain_status

ChainView = tuple[ChainRecord, list[StageStatus]]
CHAINS_SHOWN = 5  # the newest chains; older ones stay in their records

DESCRIPTION = """\
One row per run folder under $nnUNet_results: job id(s), state, epoch and iteration of the
total, interruptions by kind, age of the newest checkpoint, throughput and ETA, and the last
error. States come from each run's event log, merged with squeue/sacct where SLURM answers.
Colours only on a terminal; --watch redraws the table in place there.
"""
EPILOG = """\
states:
  pending    submitted, not started yet        running    a training process is at work
  requeued   interrupted and queued again      preempted  preempted; SLURM requeues it
  stopped    stopped with a complete checkpoint; nothing restarts it: run the same command
  killed     died without a stop record (SIGKILL, OOM, node failure) and nothing restarts it
  finished   failed   cancelled   unknown (a folder of plain nnU-Net, without an event log)
The event log decides; for SLURM jobs squeue/sacct (when they answer) tell queued from running
from gone. Interruption kinds: walltime, preemption, requeue (scontrol requeue from outside),
cancel, kill (a start that followed a segment without a stop record), signal (a stop signal
with no scheduler behind it), failure (the trainer raised, then the run was started again).

--json: one document (with --watch: one per line and refresh), schema "nnslurm.status/1";
fields are only ever added, never renamed or removed within /1. Times are ISO 8601 with the
UTC offset, durations in seconds; null where unknown.
  schema            "nnslurm.status/1"
  generated_at      time of this document
  results           the $nnUNet_results folder searched
  scheduler         true when squeue/sacct answered for at least one SLURM job
  chains[]          the newest workflow chains (nnslurm submit --find-best/--predict/--preprocess):
    chain_id, dataset, executor, created, stages[]: {stage, kind, job_id, state (waiting |
    pending | running | requeued | finished | failed | cancelled | unknown), detail, tasks}
  runs[]            one object per run folder, sorted by folder:
    folder, dataset, configuration, trainer, plans, fold     nnU-Net's names, from the folder
    state           one of the states above
    detail          the state in words ("cancelled by alice", "walltime: requeued", ...)
    executor        slurm | local (submitit's local executor) | none (plain `nnslurm train`)
    job_id          the newest job (SLURM "123" or array task "123_4", "local-<pid>"), or null
    job_ids         every job of the run, oldest first
    scheduler_state squeue/sacct state of job_id (PENDING, RUNNING, ...), or null
    epoch, iteration          the newest recorded position: epoch to run next, iterations of it done
    num_epochs, iterations_per_epoch    the training length
    progress        fraction done, 0..1
    starts          how many processes trained (segments of the event log)
    interruptions   {walltime, preemption, requeue, cancel, kill, "node failure", signal, failure}:
                    counts (preemption includes one resubmitted where SLURM does not requeue)
    interruptions_total, iterations_redone (furthest position before an interruption minus
                    the position resumed from, summed; a kill's last position is its last record)
    newest_checkpoint {file, epoch, iteration, reason, time, age_s} or null
    iterations_per_s  over the newest segment that made progress (validation included)
    remaining_s     training time left at that rate; eta: when it ends (running runs only)
    last_error      the trainer's error when failed (or why requeueing stopped), else null
    last_event, last_event_time   the newest record of the event log
    time_limit_s    the newest job's time limit now (squeue), or null: less than time_asked_s
                    when SLURM's backfill granted a shorter limit (submit --time-min)
    time_asked_s    the --time that job was submitted with, or null
    world_size      ranks of the newest start (-num_gpus N: N), or null before any start

exit status: 0, also when no run is found; 2 bad input.
"""

_STYLES = {
    "running": "bold green",
    "pending": "cyan",
    "requeued": "yellow",
    "preempted": "yellow",
    "stopped": "yellow",
    "killed": "bold red",
    "failed": "bold red",
    "cancelled": "magenta",
    "finished": "green",
    "unknown": "dim",
    "waiting": "cyan",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="where every run under $nnUNet_results stands (job, state, epoch, interruptions, ETA)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-d", "--dataset", help="only this dataset (id such as 501, or its name)")
    parser.add_argument(
        "--results", type=Path, help="the results folder to search (default: $nnUNet_results)"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON document described below")
    parser.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between refreshes with --watch (default: %(default)s)",
    )
    parser.add_argument(
        "--no-scheduler", action="store_true", help="do not ask squeue/sacct; the event logs alone decide"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval:g}: must be more than 0 seconds.")
    results = results_folder(args.results)
    if not args.watch:
        show_once(args, results)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        watch(args, results)
    return 0


def results_folder(given: Path | None) -> Path:
    if given is None:
        return env_folder(RESULTS)
    if not given.is_dir():
        raise UsageError(f"--results {given}: not a folder.")
    return given


def collect(args: argparse.Namespace, results: Path) -> tuple[list[RunStatus], bool]:
    folders = discover(results, args.dataset)
    return statuses(folders, use_scheduler=not args.no_scheduler)


def collect_chains(args: argparse.Namespace, results: Path) -> list[tuple[ChainRecord, list[StageStatus]]]:
    """The chains submitted under this results folder (newest first), each stage's status."""
    records = read_chains(chains_folder(results))
    if args.dataset:
        records = [record for record in records if _same_dataset(record.dataset, args.dataset)]
    no_answer: Callable[[Iterable[str]], None] = lambda _ids: None  # noqa: E731
    return [
        (record, chain_status(record, no_answer) if args.no_scheduler else chain_status(record))
        for record in records[:CHAINS_SHOWN]
    ]


def _same_dataset(recorded: str, asked: str) -> bool:
    from nnslurm.core.nnunet import dataset_name

    try:
        return dataset_name(recorded) == dataset_name(asked)
    except NnslurmError:
        return recorded == asked


def show_once(args: argparse.Namespace, results: Path) -> None:
    rows, scheduler = collect(args, results)
    chains = collect_chains(args, results)
    if args.json:
        print(json.dumps(document(rows, results, scheduler, chains), indent=2))
        return
    show(make_console(), render(rows, results, scheduler, chains))


def show(console: Any, renderable: Any) -> None:
    """Print; off a terminal without the padding rich leaves at the ends of lines."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()), flush=True)


def watch(args: argparse.Namespace, results: Path) -> None:
    if args.json:
        while True:
            rows, scheduler = collect(args, results)
            print(json.dumps(document(rows, results, scheduler)), flush=True)
            time.sleep(args.interval)
    console = make_console()
    if not console.is_terminal:  # no cursor to move: one table after the other
        while True:
            rows, scheduler = collect(args, results)
            show(console, render(rows, results, scheduler))
            time.sleep(args.interval)
    from rich.live import Live

    rows, scheduler = collect(args, results)
    with Live(render(rows, results, scheduler), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(args.interval)
            rows, scheduler = collect(args, results)
            live.update(render(rows, results, scheduler), refresh=True)


def make_console(stream: IO[str] | None = None) -> Any:
    """Colours and cursor movement only on a terminal; a wide, plain table otherwise."""
    from rich.console import Console

    file = stream or sys.stdout
    tty = file.isatty()
    width = None if tty else int(os.environ.get("COLUMNS") or 220)
    return Console(
        file=file, force_terminal=tty, no_color=not tty, highlight=False, width=width, soft_wrap=False
    )


def document(
    rows: Sequence[RunStatus], results: Path, scheduler: bool, chains: Sequence[ChainView] = ()
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "generated_at": iso_time(time.time()),
        "results": str(results),
        "scheduler": scheduler,
        "runs": [row.to_json() for row in rows],
        "chains": [
            {
                "chain_id": record.chain_id,
                "dataset": record.dataset,
                "executor": record.executor,
                "created": iso_time(record.created),
                "stages": [stage.to_json() for stage in stages],
            }
            for record, stages in chains
        ],
    }


def render_chains(chains: Sequence[ChainView]) -> list[Any]:
    """One small table per chain: stage, job, state, detail (which stage failed, and why)."""
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    for record, stages in chains:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created))
        parts += [
            Text(""),
            Text(f"chain {record.chain_id} (dataset {record.dataset}, {created})", style="bold"),
        ]
        table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
        for column in ("stage", "job", "state", "detail"):
            table.add_column(column, no_wrap=column != "detail", overflow="fold")
        for stage in stages:
            style = _STYLES.get(str(stage.state), "")
            table.add_row(stage.stage, stage.job_id, Text(str(stage.state), style=style), stage.detail)
        parts.append(table)
    return parts


def render(
    rows: Sequence[RunStatus], results: Path, scheduler: bool, chains: Sequence[ChainView] = ()
) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    source = "squeue/sacct + event logs" if scheduler else "event logs"
    trainers = {(row.name.trainer, row.name.plans) for row in rows}
    shared = f", {next(iter(trainers))[0]} / {next(iter(trainers))[1]}" if len(trainers) == 1 else ""
    title = Text.assemble(
        ("nnslurm status", "bold"),
        f"  {len(rows)} run(s) under {results}{shared}  ({source}, {time.strftime('%Y-%m-%d %H:%M:%S')})",
    )
    if not rows:
        empty = Text("no run folders with an nnslurm event log or checkpoints found.")
        return Group(title, empty, *render_chains(chains))
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    columns = ["dataset", "config", "fold", *(["trainer / plans"] if not shared else []), "job", "state"]
    columns += ["epoch", "iter", "interruptions", "ckpt age", "it/s", "ETA"]
    for column in columns:
        table.add_column(column, no_wrap=True, justify="right" if column == "it/s" else "left")
    table.add_column("detail", overflow="fold")
    for row in rows:
        table.add_row(*cells(row, with_trainer=not shared))
    return Group(title, Text(""), table, *render_chains(chains))


def cells(row: RunStatus, with_trainer: bool = True) -> list[Any]:
    from rich.text import Text

    name = row.name
    jobs = row.job_id or "-"
    if len(row.job_ids) > 1:
        jobs += f" (+{len(row.job_ids) - 1})"
    epoch = "-" if row.epoch is None else f"{row.epoch}/{row.num_epochs or '?'}"
    iteration = "-" if row.iteration is None else f"{row.iteration}/{row.iterations_per_epoch or '?'}"
    kinds = [f"{kind} {count}" for kind, count in row.interruptions.items() if count]
    age = "-" if row.checkpoint is None else describe(row.checkpoint_age_s)
    rate = "-" if row.iterations_per_s is None else f"{row.iterations_per_s:.2f}"
    detail = row.last_error or row.detail
    return [
        name.dataset,
        name.configuration,
        name.fold,
        *([f"{name.trainer} / {name.plans}"] if with_trainer else []),
        jobs,
        Text(row.state, style=_STYLES.get(row.state, "")),
        epoch,
        iteration,
        ", ".join(kinds) or "-",
        age,
        rate,
        eta_text(row),
        Text(detail, style="red" if row.state in (RunState.FAILED, RunState.KILLED) else "dim"),
    ]


def eta_text(row: RunStatus) -> str:
    """Running: the clock time it should end (and how long until then); else the training time left."""
    if row.state == RunState.FINISHED:
        return "done"
    if row.remaining_s is None:
        return "-"
    left = describe(row.remaining_s)
    if row.eta is not None:
        return f"{time.strftime('%H:%M', time.localtime(row.eta))} ({left})"
    return f"{left} left"
