"""The submitit callable: nnU-Net training in the job's process, requeued by evidence.

submitit's `process_job` installs its handlers (SIGTERM and SIGCONT: log only; its USR signal:
checkpoint and requeue inside the handler), then calls this object. It replaces them at once with
nnslurm's recording handlers for the stop signals (restored on return), so a signal during the
seconds of imports is not lost, and the loop, not a handler, checkpoints.

After a stop (see `nnslurm.scheduler.policy` for the evidence):
- walltime: requeue through submitit's own job environment (`scontrol requeue` on SLURM, exit
  status 144 that the local controller restarts), then leave with SystemExit: no result pickle,
  so submitit keeps waiting for the next run;
- preemption: wait until SLURM has requeued the job (exiting during the grace time ends the job
  as COMPLETED, never to return), then SystemExit;
- scancel, a requeue from outside: SystemExit at once, no requeue;
- --max-requeues used up: RequeueLimitReached, an Exception, so submitit records the error and
  `job.result()` raises it with the message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import submitit

from nnslurm import EXIT_RESUMABLE
from nnslurm.config import TrainingOptions, TrainJob, parse_signal
from nnslurm.errors import CommandError
from nnslurm.signals import StopMonitor

if TYPE_CHECKING:
    from nnslurm.training import TrainingOutcome

logger = logging.getLogger(__name__)

# submitit's local controller starts a job at most 6 times (Controller.run(max_retry=6)).
LOCAL_MAX_REQUEUES = 5
LOCAL_REQUEUE_EXIT = 144  # submitit.local.local.LOCAL_REQUEUE_RETURN_CODE


class TrainingJob(submitit.helpers.Checkpointable):
    """One nnU-Net run (dataset, configuration, fold) as a submitit job; every start resumes it."""

    def __init__(self, job: TrainJob) -> None:
        self.job = job

    def __call__(self) -> TrainingOutcome:
        if not logging.getLogger().handlers:  # in a submitit job nobody configured logging yet
            from nnslurm.cli import configure_logging

            configure_logging(verbose=False)  # the per-epoch progress lines reach the job's log
        if os.environ.get("SUBMITIT_EXECUTOR") == "local":
            _remove_literal_job_id_folder()
        options = self.job.options
        monitor = StopMonitor(options.stop_signals, options.stop_deadline_s, _exit_during_imports)
        with monitor:
            from nnslurm.training import new_monitor, run_training

            monitor.on_deadline = new_monitor(options, self._on_abandon).on_deadline
            outcome = run_training(self.job, on_abandon=self._on_abandon, monitor=monitor)
            if outcome.status == "stopped":
                self._after_stop(outcome)  # leaves by SystemExit or RequeueLimitReached
        # Finished: a walltime warning that arrives now (it may come right after the last iteration)
        # must neither kill the process nor make submitit's handler requeue a finished job.
        for name in options.stop_signals:
            signal.signal(parse_signal(name), signal.SIG_IGN)
        logger.info("training finished: %s", outcome.output_folder)
        return outcome

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """submitit's handler calls this only outside `__call__`'s training: resubmit as is."""
        return submitit.helpers.DelayedSubmission(self)

    # --- after a stop ------------------------------------------------------------------------------

    def _options(self) -> tuple[TrainingOptions, bool]:
        local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
        options = self.job.options
        if local and options.max_requeues > LOCAL_MAX_REQUEUES:
            logger.info(
                "local executor: at most %d requeues (submitit restarts a job 6 times)", LOCAL_MAX_REQUEUES
            )
            options = dataclasses.replace(options, max_requeues=LOCAL_MAX_REQUEUES)
        return options, local

    def _after_stop(self, outcome: TrainingOutcome) -> None:
        from nnslurm.scheduler.after_stop import after_stop

        options, _local = self._options()
        decision = after_stop(self._with_folder(outcome), options, requeue_job=_submitit_requeue)
        # Not requeued by us (preemption: SLURM has requeued it by now; scancel; requeue from
        # outside): leave without a result, as a killed job would.
        logger.info("leaving without a result (%s); the run resumes from its checkpoint", decision.kind)
        raise SystemExit(EXIT_RESUMABLE)

    def _on_abandon(self, outcome: TrainingOutcome) -> None:
        """Watchdog thread: no iteration boundary before the deadline; the core exits 75 after this."""
        from nnslurm.processes import kill_children
        from nnslurm.scheduler.after_stop import after_stop

        options, local = self._options()

        def requeue_now(job_id: str) -> None:
            if local:  # SystemExit in a thread would end only the thread
                kill_children()
                logging.shutdown()
                os._exit(LOCAL_REQUEUE_EXIT)
            _scontrol_requeue(job_id)

        after_stop(self._with_folder(outcome), options, requeue_job=requeue_now)

    def _with_folder(self, outcome: TrainingOutcome) -> TrainingOutcome:
        """A stop during start-up knows no run folder yet: find it, so the events land there."""
        if Path(outcome.output_folder) != Path("."):
            return outcome
        try:
            from nnslurm.nnunet import output_folder

            return dataclasses.replace(outcome, output_folder=output_folder(self.job.run))
        except Exception as error:  # the event log is a nicety here; the decision is not
            logger.warning("run folder unknown during start-up (%s); events go to %s", error, Path.cwd())
            return outcome

    def __repr__(self) -> str:
        run = self.job.run
        return f"TrainingJob(dataset={run.dataset}, configuration={run.configuration}, fold={run.fold})"


def _submitit_requeue(job_id: str) -> None:
    """Requeue through submitit's job environment, so its own bookkeeping stays right."""
    env = submitit.JobEnvironment()
    try:
        env._requeue(0)  # SLURM: scontrol requeue <id>; local: sys.exit(144)
    except subprocess.CalledProcessError as error:
        argv = [str(arg) for arg in error.cmd] if isinstance(error.cmd, list) else [str(error.cmd)]
        raise CommandError(argv, error.returncode, _text(error.output), _text(error.stderr)) from error
    except subprocess.TimeoutExpired as error:
        raise CommandError(["scontrol", "requeue", job_id], None, "", str(error)) from error


def _scontrol_requeue(job_id: str) -> None:
    from nnslurm.scheduler.commands import requeue

    requeue(job_id)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _exit_during_imports(request: object, phase: str) -> None:
    """A stop signal and no progress at all yet: nothing to save; the next start redoes the imports."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_RESUMABLE)


def _remove_literal_job_id_folder() -> None:
    """submitit's local controller creates its folder pattern unformatted (a folder named "%j"
    next to the job's own); it stays empty, so remove it if it is."""
    with contextlib.suppress(OSError, RuntimeError):
        folder = submitit.JobEnvironment().paths.folder  # <log dir>/<job id>
        (folder.parent / "%j").rmdir()
