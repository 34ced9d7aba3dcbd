"""`nnslurm logs RUN_FOLDER|JOBID [-f]`: a run's job output (stdout, stderr) across all requeues.

Every start of a SLURM or local submitit job appends to the same two files
(<log dir>/<job id>/<job id>_<task>_log.out and .err), so one job's files hold all its requeues;
a run submitted several times has one pair per job, printed oldest first.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnslurm.core.errors import CommandError, NnslurmError, SchedulerError, UsageError
from nnslurm.core.locations import results_or_none, submitit_folder
from nnslurm.runs.discovery import resolve
from nnslurm.runs.history import History, read_history
from nnslurm.runs.state import TERMINAL_STATES
from nnslurm.runs.status import run_status
from nnslurm.slurm.commands import job_info
from nnslurm.slurm.job_ids import is_slurm_job, submitit_id

EPILOG = """\
Where the files are found, for each job of the run:
  1. the log folder of its "submitted" record (nnslurm submit: $nnUNet_results/.nnslurm/submitit/
     <job id>/ unless --log-dir), files *_log.out and *_log.err
  2. $nnUNet_results/.nnslurm/submitit/<job id>/
  3. SLURM jobs it still knows: StdOut/StdErr of `scontrol show job`
  4. jobs from the sbatch templates: ./nnslurm-*-<job id>.out in this folder
A plain `nnslurm train` writes to its own terminal: there is nothing to show.

-f keeps printing what the newest job appends (new jobs of the run are picked up), until the run
is finished, failed or cancelled, or Ctrl-C.

exit status: 0, 1 no log file found, 2 bad input.
"""


class NoLogs(NnslurmError):
    """No log file of the job(s) could be found."""


@dataclass(frozen=True)
class JobLogs:
    job_id: str
    files: tuple[Path, ...]  # stdout first, then stderr


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print a run's job output (stdout, stderr) across all requeues; -f follows it",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN_FOLDER|JOBID", help="a run folder, or one of its job ids")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="-f: seconds between looks (default: 1)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval:g}: must be more than 0 seconds.")
    results = results_or_none()
    targets = resolve(args.run, results)
    found = [logs for folder, job in targets for logs in job_logs(folder, job, results)]
    if not any(logs.files for logs in found):
        jobs = ", ".join(logs.job_id for logs in found) or "none recorded"
        raise NoLogs(
            f"no log files found for {args.run} (jobs: {jobs}).",
            hint="a plain `nnslurm train` writes to its terminal; jobs from the sbatch templates write "
            "to their --output file (nnslurm-<name>-<job id>.out where they were submitted).",
        )
    offsets: dict[Path, int] = {}
    for logs in found:
        for path in logs.files:
            offsets[path] = show(path, 0, header=True)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):
            follow(targets, results, offsets, args.interval)
    return 0


def job_logs(folder: Path, job_id: str | None, results: Path | None) -> list[JobLogs]:
    """The log files of one job of the run (`job_id`), or of every job of it, oldest first."""
    history = read_history(folder)
    jobs = [job_id] if job_id is not None else history.job_ids
    return [JobLogs(job, tuple(find_files(job, history, results))) for job in jobs]


def find_files(job_id: str, history: History, results: Path | None) -> list[Path]:
    bare = submitit_id(job_id)
    folders = [
        Path(str(record["log_folder"]))
        for record in history.submitted
        if record.get("job_id") == job_id and record.get("log_folder")
    ]
    if results is not None:
        folders.append(submitit_folder(results) / bare)
    for log_folder in dict.fromkeys(folders):
        files = sorted(log_folder.glob("*_log.out")) + sorted(log_folder.glob("*_log.err"))
        if files:
            return files
    if is_slurm_job(job_id):
        files = _scontrol_files(job_id)
        if files:
            return files
        return sorted(Path.cwd().glob(f"nnslurm-*-{job_id}.out"))
    return []


def _scontrol_files(job_id: str) -> list[Path]:
    try:
        fields = job_info(job_id, timeout=10).fields
    except (CommandError, SchedulerError):
        return []
    paths = [Path(fields[key]) for key in ("StdOut", "StdErr") if fields.get(key)]
    return [path for path in dict.fromkeys(paths) if path.is_file()]


def show(path: Path, offset: int, header: bool) -> int:
    """Print `path` from `offset` on; returns the new offset."""
    try:
        with open(path, "rb") as stream:
            stream.seek(offset)
            data = stream.read()
    except FileNotFoundError:
        return offset
    if header or data:
        print(f"==> {path} <==", flush=True)
    if data:
        sys.stdout.write(data.decode(errors="replace"))
        if not data.endswith(b"\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    return offset + len(data)


def follow(
    targets: Iterable[tuple[Path, str | None]],
    results: Path | None,
    offsets: dict[Path, int],
    interval: float,
) -> None:
    """Print what is appended until every run is finished/failed/cancelled and nothing more comes."""
    targets = list(targets)
    while True:
        time.sleep(interval)
        grew = False
        for folder, job in targets:
            for logs in job_logs(folder, job, results):
                for path in logs.files:
                    before = offsets.get(path, 0)
                    offsets[path] = show(path, before, header=False)
                    grew = grew or offsets[path] != before
        if not grew and all(_ended(folder) for folder, _ in targets):
            return


def _ended(folder: Path) -> bool:
    return run_status(folder, scheduler=None).state in TERMINAL_STATES
