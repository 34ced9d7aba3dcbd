"""The submitit callable: nnU-Net training in the job's process, requeued by evidence.

submitit's `process_job` installs its handlers (SIGTERM and SIGCONT: log only; its USR signal:
checkpoint and requeue inside the handler), then calls this object, which trains through
`nnslurm.training.stoppable.run_stoppable`: nnslurm's recording handlers replace submitit's at once (a
signal during the seconds of imports is not lost), and the loop, not a handler, checkpoints.

After a stop (see `nnslurm.scheduler.policy` for the evidence):
- walltime: requeue (`scontrol requeue` on SLURM; on submitit's local executor exit status 144,
  which its controller takes as "start again"), then leave without a result pickle, so submitit
  keeps waiting for the next run;
- preemption: wait until SLURM has requeued the job (exiting during the grace time ends the job
  as COMPLETED, never to return), then leave;
- preemption SLURM will not requeue (PreemptMode=CANCEL, Requeue=0): submit the run again as a
  new submitit job with the same settings (`again`), which starts once this one ended, then leave;
- scancel, a requeue from outside: leave at once, no requeue;
- --max-requeues used up: RequeueLimitReached, an Exception, so submitit records the error and
  `job.result()` raises it with the message.

One requeue authority. Two counters could cap self-requeues: nnslurm's, counted from the run's
event log (`slurm.self_requeues`, which also covers `nnslurm train` in the sbatch templates, where
submitit is not involved), and submitit's `max_num_timeout`, a countdown in the pickled
submission that only submitit's own signal handler reads and decrements
(`SignalHandler.checkpoint_and_try_requeue`, submitit 1.5.4), after judging "timed out" by its
80 %-of-walltime heuristic. The event log is the truth. submitit's counter cannot disagree because
its handler never gets to decide: `run_stoppable` replaces it for the whole training, and where it
still fires (a signal just before or after training), it calls `checkpoint()`, which hands the
signal to nnslurm's stop path and never returns to submitit's countdown. `max_num_timeout` is set
to the same cap (`requeue_cap`) so that the two numbers at least read the same. The one clamp the
event log must respect is the local controller's: it starts a job at most 6 times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, NoReturn

import submitit
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

from nnslurm import EXIT_RESUMABLE
from nnslurm.core.config import TrainJob
from nnslurm.core.errors import SchedulerError
from nnslurm.scheduler.restart import note_restart
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.training.stoppable import run_stoppable, stop_outside_training

if TYPE_CHECKING:
    from nnslurm.jobs.submission import Submission
    from nnslurm.scheduler.resubmit import ResubmittedJob
    from nnslurm.training.process import TrainingOutcome

logger = logging.getLogger(__name__)

# submitit's local controller starts a job at most 6 times (Controller.run(max_retry=6), 1.5.4):
# the first start and 5 restarts. tests/test_stoppable.py fails if that changes.
LOCAL_MAX_REQUEUES = 5
# The exit status that makes the local controller start the job again (LocalJobEnvironment._requeue
# exits with it; nnslurm exits with it itself, through nnslurm.training.stoppable.exit_process).
LOCAL_REQUEUE_EXIT = LOCAL_REQUEUE_RETURN_CODE


def requeue_cap(max_requeues: int, local: bool) -> int:
    """The most self-requeues a job may make: --max-requeues, and on submitit's local executor
    no more than its controller will restart."""
    return min(max_requeues, LOCAL_MAX_REQUEUES) if local else max_requeues


class TrainingJob(submitit.helpers.Checkpointable):
    """One nnU-Net run (dataset, configuration, fold) as a submitit job; every start resumes it.

    `again` is the run's own submission (one job, the settings it was submitted with): a job
    preempted where SLURM will not requeue it submits it as a new job (nnslurm.jobs.submission.resubmit)."""

    def __init__(self, job: TrainJob, again: Submission | None = None) -> None:
        self.job = job
        self.again = again

    def __call__(self) -> TrainingOutcome:
        if not logging.getLogger().handlers:  # in a submitit job nobody configured logging yet
            from nnslurm.core.logs import configure_logging

            configure_logging(verbose=False)  # the per-epoch progress lines reach the job's log
        if _on_local_executor():
            _remove_literal_job_id_folder()
        else:
            note_restart(self.job)  # a restart after a node failure: say so (sacct)
        outcome = run_stoppable(self.job, after_stop=self._after_stop)
        logger.info("training finished: %s", outcome.output_folder)
        return outcome

    def checkpoint(self) -> NoReturn:
        """submitit's handler calls this when its signal arrives outside `run_stoppable`'s training
        (just before or after it): nnslurm's stop path decides, and the process leaves from there."""
        stop_outside_training(self.job, submitit.JobEnvironment.USR_SIG, self._after_stop)

    def _after_stop(self, outcome: TrainingOutcome) -> int:
        """What the stop means for this job (nnslurm.scheduler.after_stop), and the exit status."""
        from nnslurm.scheduler.after_stop import after_stop

        local = _on_local_executor()
        options = self.job.options
        cap = requeue_cap(options.max_requeues, local)
        if cap != options.max_requeues:
            logger.info("local executor: at most %d requeues (submitit restarts a job 6 times)", cap)
            options = dataclasses.replace(options, max_requeues=cap)
        requeued: list[str] = []
        # Local: the requeue is the exit status; on SLURM after_stop's own `scontrol requeue`.
        requeue_job = requeued.append if local else None
        decision = after_stop(outcome, options, requeue_job=requeue_job, resubmit=self._resubmit)
        if requeued:
            return LOCAL_REQUEUE_EXIT
        # Requeued by scontrol, or not by us (preemption: SLURM has requeued it by now; scancel;
        # requeue from outside): leave without a result, as a killed job would.
        logger.info("leaving without a result (%s); the run resumes from its checkpoint", decision.kind)
        return EXIT_RESUMABLE

    def _resubmit(self, old_job_id: str) -> ResubmittedJob:
        """A new submitit job of this run, with the settings it was submitted with (not the job's
        own script: the new job id needs its own pickle where submitit looks for it)."""
        from nnslurm.jobs.submission import resubmit

        if self.again is None:
            raise SchedulerError(
                f"job {old_job_id} does not carry its submission settings, so it cannot resubmit itself.",
                hint="submit the same command again to continue from the checkpoint.",
            )
        return resubmit(self.again, old_job_id)

    def __repr__(self) -> str:
        run = self.job.run
        return f"TrainingJob(dataset={run.dataset}, configuration={run.configuration}, fold={run.fold})"


def _on_local_executor() -> bool:
    return SlurmEnvironment.from_environ().local


def _remove_literal_job_id_folder() -> None:
    """submitit's local controller creates its folder pattern unformatted (a folder named "%j"
    next to the job's own); it stays empty, so remove it if it is."""
    with contextlib.suppress(OSError, RuntimeError):
        folder = submitit.JobEnvironment().paths.folder  # <log dir>/<job id>
        (folder.parent / "%j").rmdir()
