"""`nnslurm cancel RUN_FOLDER|JOBID`: stop a run's newest job for good; the run stays resumable.

A SLURM job is cancelled with `scancel` (SLURM sends SIGTERM: the job checkpoints at the next
iteration boundary and does not requeue). A job without SLURM (submitit's local executor, a plain
`nnslurm train`) gets SIGTERM from here, which does the same. Either way a "cancel_requested"
record (who, which job) goes into the run's event log, so `nnslurm status` shows "cancelled by
USER"; submitting or training the same run again continues from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from nnslurm.core.errors import NnslurmError, UsageError
from nnslurm.core.executor import Executor
from nnslurm.core.locations import results_or_none
from nnslurm.runs.discovery import resolve
from nnslurm.runs.events import Event, EventLog
from nnslurm.runs.history import History, Outcome, read_history
from nnslurm.runs.state import RunState
from nnslurm.runs.status import live_process, run_status
from nnslurm.slurm.commands import cancel as scancel
from nnslurm.slurm.job_ids import is_local_job, is_slurm_job

logger = logging.getLogger(__name__)

RESUMABLE = "The run stays resumable: submit or train it again to continue from its newest checkpoint."

EPILOG = """\
What is cancelled: for a run folder, the run's newest job (its newest submission or start);
for a job id, that job (an array id: the whole array, recorded in every task's run).
  SLURM job        scancel JOBID
  local executor   SIGTERM to the training process (or, between two starts, to submitit's
                   local controller, which passes it on)
  nnslurm train    SIGTERM to the training process (same host only)
The job writes a complete checkpoint before it exits; resume by submitting (or training) the
same run again.

--chain CHAIN cancels a whole workflow chain (nnslurm submit --find-best/--predict/--preprocess):
every job of it not yet ended, the last stage first.

exit status: 0 cancelled, 1 nothing to cancel or scancel failed, 2 bad input.
"""


class NothingToCancel(NnslurmError):
    """The run has no job or process that could be cancelled."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a run's job (scancel, or SIGTERM without SLURM); it checkpoints and stays resumable",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run", metavar="RUN_FOLDER|JOBID", nargs="?", help="a run folder, or a job id of the run"
    )
    parser.add_argument(
        "--chain",
        metavar="CHAIN",
        help="cancel every job of a workflow chain (its id, or any of its job ids: `nnslurm status` "
        "shows them), the last stage first; trainings checkpoint and stay resumable",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be done; do nothing")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if (args.run is None) == (args.chain is None):
        raise UsageError("give a run folder or job id, or --chain CHAIN (one of them).")
    if args.chain is not None:
        return cancel_chain(args.chain.strip(), args.dry_run)
    targets = resolve(args.run, results_or_none())
    if Path(args.run).expanduser().is_dir():
        cancel_run(targets[0][0], None, args.dry_run)
        return 0
    slurm = list(dict.fromkeys(folder for folder, job in targets if is_slurm_job(job)))
    if slurm:  # one scancel for the id given: a whole array when it names one
        cancel_slurm(args.run.strip(), slurm, args.dry_run)
    for folder, job in targets:
        if not is_slurm_job(job):
            cancel_run(folder, job, args.dry_run)
    return 0


def cancel_chain(chain_id: str, dry_run: bool) -> int:
    """scancel every job of the chain that has not ended, dependants first (so none of them starts
    in between); the training tasks record the cancel in their run folders."""
    from nnslurm.runs.chains import find_chain
    from nnslurm.workflow.chain_status import StageState, chain_status

    chain = find_chain(chain_id)
    if chain is None:
        raise NothingToCancel(
            f"no chain with job {chain_id} under $nnUNet_results.", hint="`nnslurm status` lists the chains."
        )
    if chain.executor != Executor.SLURM:
        job = chain.jobs[0]
        folders = [Path(folder) for chain_job in chain.jobs for folder in chain_job.folders if folder]
        running = [
            folder for folder in folders if run_status(folder, scheduler=None).state == RunState.RUNNING
        ]
        if not running:
            raise NothingToCancel(f"chain {chain.chain_id}: no stage of it is training now.")
        cancel_run(running[0], job.job_id, dry_run)
        return 0
    ended = (StageState.FINISHED, StageState.FAILED, StageState.CANCELLED)
    rows = {row.stage: row for row in chain_status(chain)}
    pending = [job for job in reversed(chain.jobs) if rows[job.stage].state not in ended]
    if not pending:
        raise NothingToCancel(f"chain {chain.chain_id}: every stage has ended; nothing to cancel.")
    for job in pending:
        folders = [Path(folder) for folder in job.folders if folder]
        if dry_run:
            print(f"would run: scancel {job.job_id} ({job.stage})")
            continue
        scancel(job.job_id)
        for folder in folders:
            record(folder, job.job_id, "scancel")
        print(f"cancelled {job.stage}: scancel {job.job_id}")
    if not dry_run:
        print(RESUMABLE)
    return 0


def cancel_run(folder: Path, job_id: str | None, dry_run: bool) -> None:
    """Cancel the run's job `job_id` (None: its newest job)."""
    history = read_history(folder)
    status = run_status(folder, scheduler=None, history=history)
    if status.state == RunState.FINISHED:
        raise NothingToCancel(f"{folder}: the run has finished; nothing to cancel.")
    job = job_id if job_id is not None else history.newest_job_id
    if is_slurm_job(job):
        assert job is not None
        cancel_slurm(job, [folder], dry_run)
        return
    pid = local_target(history, job)
    method = f"SIGTERM to pid {pid} on {socket.gethostname()}"
    if dry_run:
        print(f"would send {method} ({_describe(job)}) and record the cancel in {folder}")
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError as error:
        raise NothingToCancel(f"process {pid} of {folder} ended before it could be signalled.") from error
    except PermissionError as error:
        raise NothingToCancel(
            f"not allowed to signal process {pid} of {folder}.", hint="cancel it as the user who runs it."
        ) from error
    record(folder, job, "SIGTERM", target_pid=pid)
    print(f"cancelled {_describe(job)}: {method}; it checkpoints and exits. {RESUMABLE}")


def cancel_slurm(job_id: str, folders: list[Path], dry_run: bool) -> None:
    if dry_run:
        print(f"would run: scancel {job_id}, and record the cancel in {', '.join(map(str, folders))}")
        return
    scancel(job_id)
    for folder in folders:
        record(folder, job_id, "scancel")
    print(f"cancelled SLURM job {job_id} (scancel); it checkpoints and exits without requeueing.")
    print(RESUMABLE)


def local_target(history: History, job_id: str | None) -> int:
    """The pid to signal: the training process if alive, else submitit's local controller."""
    segments = [s for s in history.segments if job_id is None or s.job_id == job_id]
    here = socket.gethostname()
    last = segments[-1] if segments else None
    if last is not None and last.pid is not None and last.outcome == Outcome.OPEN and last.host != here:
        raise NothingToCancel(
            f"{_describe(job_id)} runs on {last.host}, not on this host ({here}).",
            hint=f"run `nnslurm cancel {history.folder}` on {last.host}.",
        )
    pid = live_process(history, job_id if job_id is not None else (last.job_id if last else None))
    if pid is None:
        raise NothingToCancel(
            f"{history.folder}: no running process of {_describe(job_id)} on this host; nothing to cancel.",
            hint="`nnslurm status` shows the run's state.",
        )
    return pid


def record(folder: Path, job_id: str | None, method: str, target_pid: int | None = None) -> None:
    fields: dict[str, Any] = {"job_id": job_id, "by": _user(), "method": method}
    if target_pid is not None:
        fields["target_pid"] = target_pid
    EventLog(folder).append(Event.CANCEL_REQUESTED, **fields)
    logger.debug("recorded cancel_requested in %s", folder)


def _describe(job_id: str | None) -> str:
    if job_id is None:
        return "the `nnslurm train` process"
    return f"local job {job_id}" if is_local_job(job_id) else f"job {job_id}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
