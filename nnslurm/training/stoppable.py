"""The one stop path of a training process: `nnslurm train` and the submitit job both call `run_stoppable`.

It owns, once for both:
- the stop monitor, installed before the seconds of torch and nnU-Net imports, with one deadline
  handler for the whole process (start-up, training, final validation);
- the import-time rule: a deadline that passes while the main thread still imports has nothing
  to save and cannot decide (the modules the decision needs are being imported), so it exits 75;
- the late-signal rule: once training finished, a stop signal (the walltime warning a second
  later) is ignored: it must neither kill the finished process nor requeue it;
- the exit of a stopped process, `exit_process`: 75 (EXIT_RESUMABLE: run the same command to
  resume) or whatever the caller's `after_stop` returns (144: submitit's local controller
  restarts the job).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from nnslurm import EXIT_RESUMABLE
from nnslurm.core.config import TrainJob
from nnslurm.core.processes import kill_children
from nnslurm.training.signals import StopMonitor, StopRequest

if TYPE_CHECKING:
    from nnslurm.training.process import TrainingOutcome

logger = logging.getLogger(__name__)

# After a stop with a durable state: decides what the stop means (requeue, wait for the scheduler,
# nothing) and returns the exit status. Runs in the main thread, or in the deadline watchdog.
AfterStop = Callable[["TrainingOutcome"], int]


def run_stoppable(job: TrainJob, after_stop: AfterStop | None = None) -> TrainingOutcome:
    """Train `job` in this process; returns only when training finished.

    A stop leaves the process through `exit_process` with the status `after_stop` returns
    (without one: 75). Errors propagate (a failed training, RequeueLimitReached from `after_stop`
    in the main thread), so the CLI or submitit reports them.
    """
    stop = _StopPath(job, after_stop)
    options = job.options
    with StopMonitor(options.stop_signals, options.stop_deadline_s, stop.on_deadline) as monitor:
        from nnslurm.training.process import run_training  # seconds: torch and nnU-Net; the handlers are in

        stop.imported = True
        outcome = run_training(job, monitor, on_run_folder=stop.found_run_folder)
        if outcome.status == "stopped":
            stop.leave(outcome)  # inside the monitor: a second signal meanwhile is only recorded
        monitor.ignore_after_restore()
    return outcome


def stop_outside_training(job: TrainJob, signal_name: str, after_stop: AfterStop | None) -> NoReturn:
    """A stop signal that reached no monitor (submitit's own handler saw it, before or after
    `run_stoppable`): nothing new to save; what is on disk is resumable. Decide and leave."""
    logger.warning("SIG%s outside training: nothing new to save; leaving resumable", signal_name)
    from nnslurm.training.process import abandoned_outcome

    request = StopRequest(signal_name, time.time())
    _StopPath(job, after_stop).leave(abandoned_outcome(job, None, request, "startup"))


def exit_process(status: int) -> NoReturn:
    """The one exit of a stopped training process, from any thread.

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


class _StopPath:
    """What happens after a stop request, for one training process."""

    def __init__(self, job: TrainJob, after_stop: AfterStop | None) -> None:
        self.job = job
        self.after_stop = after_stop
        self.imported = False  # set once the training modules are imported
        self.run_folder: Path | None = None  # set once training holds the run folder's lock

    def found_run_folder(self, folder: Path) -> None:
        self.run_folder = folder

    def on_deadline(self, request: StopRequest, phase: str) -> None:
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

        self.leave(abandoned_outcome(self.job, self.run_folder, request, phase))

    def leave(self, outcome: TrainingOutcome) -> NoReturn:
        if threading.current_thread() is threading.main_thread():
            exit_process(self._status(outcome))  # an error in after_stop propagates to the caller
        try:
            status = self._status(outcome)
        except BaseException:  # nobody above a watchdog thread reports it: log it, leave resumable
            logger.exception("after the stop")
            status = EXIT_RESUMABLE
        exit_process(status)

    def _status(self, outcome: TrainingOutcome) -> int:
        return EXIT_RESUMABLE if self.after_stop is None else self.after_stop(outcome)
