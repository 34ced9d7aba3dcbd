"""The one stop path of a process: a training (`run_stoppable`) and every workflow stage
(nnslurm.workflow.stage) go through it.

It owns, once for all of them:
- the stop monitor and its deadline watchdog (`stop_monitor`), installed before the work, with one
  deadline handler for the whole process: a stop the work does not act on within the deadline
  (a phase without boundaries) is abandoned, and what is on disk is resumable;
- the late-signal rule: once the work finished, a stop signal (the walltime warning a second
  later) is ignored: it must neither kill the finished process nor requeue it;
- the way out of a stopped process (`leave`): the after-stop decision the caller passes
  (nnslurm.jobs.base.exit_after_stop: requeue, wait for SLURM, nothing) gives the exit status,
  from the main thread or the watchdog; without one, 75;
- the one exit of a stopped process, `exit_process`: 75 (EXIT_RESUMABLE: run the same command to
  resume) or 144 (submitit's local controller restarts the job).

For a training it adds the import-time rule: a deadline that passes while the main thread still
imports torch and nnU-Net has nothing to save and cannot decide (the modules the decision needs
are being imported), so it exits 75.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from nnslurm import EXIT_RESUMABLE
from nnslurm.core.config import TrainJob
from nnslurm.core.processes import kill_children
from nnslurm.runs.outcome import Stopped
from nnslurm.training.ranks import Rank, release_stop_signals
from nnslurm.training.signals import StopMonitor, StopRequest

if TYPE_CHECKING:
    from nnslurm.training.process import TrainingOutcome

logger = logging.getLogger(__name__)

# After a stop with a durable state: decides what the stop means (requeue, wait for the scheduler,
# nothing) and returns the exit status. Runs in the main thread, or in the deadline watchdog.
AfterStop = Callable[[Stopped], int]
# The deadline watchdog's view of a stop the work did not act on in time: record it, and say what
# stands on disk (it may also leave at once: the import-time rule). Runs in the watchdog thread.
Abandon = Callable[[StopRequest, str], Stopped]


@contextlib.contextmanager
def stop_monitor(
    signals: Sequence[str], deadline_s: float, after_stop: AfterStop | None, abandon: Abandon
) -> Iterator[StopMonitor]:
    """The stop monitor of one process's work: handlers installed on entry and restored on exit,
    and a deadline watchdog that abandons a stop not acted on within `deadline_s` and leaves.

    When the body returns (the work is complete), late stop signals are ignored from then on."""

    def on_deadline(request: StopRequest, phase: str) -> None:
        leave(abandon(request, phase), after_stop)

    with StopMonitor(signals, deadline_s, on_deadline) as monitor:
        yield monitor
        monitor.ignore_after_restore()


def leave(stopped: Stopped, after_stop: AfterStop | None) -> NoReturn:
    """The way out of a stopped process, from any thread: decide (`after_stop`), then exit.

    In the main thread an error of the decision (RequeueLimitReached) propagates to the caller, so
    the CLI or submitit reports it; in the watchdog thread nobody above would, so it is logged and
    the process leaves resumable."""
    if threading.current_thread() is threading.main_thread():
        exit_process(_status(stopped, after_stop))
    try:
        status = _status(stopped, after_stop)
    except BaseException:
        logger.exception("after the stop")
        status = EXIT_RESUMABLE
    exit_process(status)


def _status(stopped: Stopped, after_stop: AfterStop | None) -> int:
    return EXIT_RESUMABLE if after_stop is None else after_stop(stopped)


def exit_process(status: int) -> NoReturn:
    """The one exit of a stopped process, from any thread.

    In the main thread it raises SystemExit: `finally` blocks and context managers still run
    (the run lock, the checkpoint writer, the signal handlers), and submitit's `process_job`,
    which catches Exception only, writes no result pickle, so the job is not over for submitit.
    In any other thread (the stop-deadline watchdog) SystemExit would end only that thread while
    the main thread stays stuck in the phase that has no boundary, so the process ends with
    os._exit, after stopping the augmentation workers and flushing the logs.
    """
    if threading.current_thread() is threading.main_thread():
        raise SystemExit(status)
    kill_children()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


# --- a training ---------------------------------------------------------------------------------


def run_stoppable(
    job: TrainJob, after_stop: AfterStop | None = None, rank: Rank | None = None
) -> TrainingOutcome:
    """Train `job` in this process; returns only when training finished.

    A stop leaves the process through `leave` with the status `after_stop` returns (without one:
    75). Errors propagate (a failed training, RequeueLimitReached from `after_stop` in the main
    thread), so the CLI or submitit reports them. `rank`: this process is one of several
    (nnslurm.training.launch_ranks), started with the stop signals held until its handlers are in.
    """
    start = _TrainingStart(job)
    options = job.options
    with stop_monitor(options.stop_signals, options.stop_deadline_s, after_stop, start.abandon) as monitor:
        if rank is not None:
            release_stop_signals(options.stop_signals)  # held since the launcher started us: now recorded
        from nnslurm.training.process import run_training  # seconds: torch and nnU-Net; the handlers are in

        start.imported = True
        ranked = {} if rank is None else {"rank": rank}  # one process: run_training's call as ever
        outcome = run_training(job, monitor, on_run_folder=start.found_run_folder, **ranked)
        if outcome.status == "stopped":
            # inside the monitor: a second signal meanwhile is only recorded
            leave(outcome.stopped(), after_stop)
    return outcome


def stopped_outside_training(job: TrainJob, request: StopRequest) -> Stopped:
    """A stop signal that reached no monitor (submitit's own handler saw it, before or after
    `run_stoppable`): nothing new to save; what is on disk is resumable."""
    logger.warning("SIG%s outside training: nothing new to save; leaving resumable", request.signal)
    from nnslurm.training.process import abandoned_outcome

    return abandoned_outcome(job, None, request, "startup").stopped()


class _TrainingStart:
    """What the deadline watchdog of a training needs to know: how far its start has come."""

    def __init__(self, job: TrainJob) -> None:
        self.job = job
        self.imported = False  # set once the training modules are imported
        self.run_folder: Path | None = None  # set once training holds the run folder's lock

    def found_run_folder(self, folder: Path) -> None:
        self.run_folder = folder

    def abandon(self, request: StopRequest, phase: str) -> Stopped:
        """Watchdog thread: no iteration boundary within the deadline; what is on disk is resumable."""
        if not self.imported:
            logger.warning(
                "SIG%s during start-up (imports): nothing to save yet; exiting resumable (host %s)",
                request.signal,
                socket.gethostname(),
            )
            exit_process(EXIT_RESUMABLE)
        logger.warning(
            "SIG%s during %s: no iteration boundary within the deadline; exiting resumable (host %s)",
            request.signal,
            phase,
            socket.gethostname(),
        )
        from nnslurm.training.process import abandoned_outcome  # imported already, by the main thread

        return abandoned_outcome(self.job, self.run_folder, request, phase).stopped()
