"""The one base of nnslurm's submitit callables, and the one after-stop wiring of every stopped process.

`exit_after_stop` is what every stopped process of nnslurm does once its state is on disk: a
training (`nnslurm train`, TrainingJob) and every workflow stage (nnslurm.workflow.stage), inside
a submitit job or not. It takes where the process runs once (`SlurmEnvironment.runs_under`):
- started by hand: nothing to decide; exit 75, the same command goes on;
- a SLURM job: nnslurm.scheduler.after_stop decides by evidence and requeues with `scontrol
  requeue` (walltime), waits for SLURM's requeue (preemption), resubmits (preemption SLURM will not
  requeue), or does nothing (scancel); then exit 75, without a result for submitit;
- submitit's local executor: the same decision, where the requeue is the exit status 144, which
  its controller takes as "start again".
The cap is nnslurm.scheduler.policy.requeue_cap, the exit itself nnslurm.training.stoppable.

`StoppableJob` is the base of the submitit callables (TrainingJob, PreprocessJob, FindBestJob,
PredictJob): it sets up logging where nobody did, and implements submitit's `checkpoint()` and
the after-stop wiring once.

One requeue authority. Two counters could cap self-requeues: nnslurm's, counted from the event log
(`policy.self_requeues`, which also covers `nnslurm train` in the sbatch templates, where submitit
is not involved), and submitit's `max_num_timeout`, a countdown in the pickled submission that only
submitit's own signal handler reads and decrements (`SignalHandler.checkpoint_and_try_requeue`,
submitit 1.5.4), after judging "timed out" by its 80 %-of-walltime heuristic. The event log is the
truth. submitit's counter cannot disagree because its handler never gets to decide: the stop
monitor replaces it for the whole work, and where it still fires (a signal just before or after
the work), it calls `checkpoint()`, which hands the signal to nnslurm's stop path and never returns
to submitit's countdown. `max_num_timeout` is set to the same cap (nnslurm.jobs.submission) so that
the two numbers at least read the same.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
from typing import Any, NoReturn, Protocol

import submitit

from nnslurm import EXIT_RESUMABLE
from nnslurm.core.executor import Executor
from nnslurm.core.logs import configure_logging
from nnslurm.jobs.submitit_insides import LOCAL_REQUEUE_EXIT
from nnslurm.runs.outcome import Stopped
from nnslurm.scheduler.after_stop import after_stop
from nnslurm.scheduler.policy import requeue_cap
from nnslurm.scheduler.resubmit import Resubmit, ResubmittedJob
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.training.signals import StopRequest
from nnslurm.training.stoppable import leave

logger = logging.getLogger(__name__)


def exit_after_stop(stopped: Stopped, max_requeues: int, resubmit: Resubmit | None = None) -> int:
    """What the stop means (inside a job), and the exit status of the stopped process: 75, or 144
    on submitit's local executor when the job requeues itself.

    `resubmit` submits the run again after a preemption SLURM will not requeue; None: `sbatch` of
    the job's own script (nnslurm.scheduler.resubmit.sbatch_again). Errors of the decision
    (RequeueLimitReached) propagate."""
    executor = SlurmEnvironment.from_environ().runs_under
    if executor is None:
        return EXIT_RESUMABLE  # started by hand: run the same command again to go on
    cap = requeue_cap(max_requeues, executor)
    if cap != max_requeues:
        logger.info("local executor: at most %d requeues (submitit restarts a job 6 times)", cap)
    requeued: list[str] = []
    # Local: the requeue is the exit status; on SLURM after_stop's own `scontrol requeue`.
    requeue_job = requeued.append if executor is Executor.LOCAL else None
    decision = after_stop(stopped, cap, requeue_job=requeue_job, resubmit=resubmit)
    if requeued:
        return LOCAL_REQUEUE_EXIT
    # Requeued by scontrol, or not by us (preemption: SLURM has requeued it by now; scancel;
    # requeue from outside): leave without a result, as a killed job would.
    logger.info("leaving without a result (%s); the next start resumes from what is on disk", decision.kind)
    return EXIT_RESUMABLE


class Again(Protocol):
    """How a job submits itself again as a new job (nnslurm.jobs.submission.Submission)."""

    def submit_again(self, job: Any, old_job_id: str) -> ResubmittedJob: ...


class StoppableJob(submitit.helpers.Checkpointable, abc.ABC):
    """A submitit callable whose process leaves through nnslurm's one stop path; every start
    resumes what is on disk.

    Subclasses say what the work is (`run`), which cap applies (`max_requeues`), and what a stop
    that reached no monitor leaves (`stopped_outside`)."""

    # How a job preempted where SLURM will not requeue it submits itself again: its submission,
    # set by whoever submits it through submitit (a new submitit job needs its own pickle). None:
    # `sbatch` of the job's own script (nnslurm.scheduler.resubmit), right for the sbatch templates.
    again: Again | None = None

    def __call__(self) -> Any:
        if not logging.getLogger().handlers:  # in a submitit job nobody configured logging yet
            configure_logging(verbose=False)  # the progress lines reach the job's log
        if SlurmEnvironment.from_environ().runs_under is Executor.LOCAL:
            _remove_literal_job_id_folder()
        return self.run()

    @abc.abstractmethod
    def run(self) -> Any:
        """The work, in this process; returns its result once complete (a stop exits)."""

    @property
    @abc.abstractmethod
    def max_requeues(self) -> int:
        """--max-requeues of this job."""

    @abc.abstractmethod
    def stopped_outside(self, request: StopRequest) -> Stopped:
        """A stop signal that reached no monitor: record it and say what stands on disk."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> NoReturn:
        """submitit's handler calls this when its signal arrives outside the stop monitor (just
        before or after the work): nothing new to save; nnslurm's stop path decides, and the
        process leaves from there (never back to submitit's countdown)."""
        signal_name = submitit.JobEnvironment.USR_SIG.removeprefix("SIG")
        leave(self.stopped_outside(StopRequest(signal_name, time.time())), self.after_stop)

    def after_stop(self, stopped: Stopped) -> int:
        """What the stop means for this job, and the exit status."""
        return exit_after_stop(stopped, self.max_requeues, resubmit=self._resubmit if self.again else None)

    def _resubmit(self, old_job_id: str) -> ResubmittedJob:
        """A new submitit job of this callable, with the settings it was submitted with (not the
        job's own script: the new job id needs its own pickle where submitit looks for it)."""
        assert self.again is not None  # after_stop passes this only then
        return self.again.submit_again(self, old_job_id)


def _remove_literal_job_id_folder() -> None:
    """submitit's local controller creates its folder pattern unformatted (a folder named "%j"
    next to the job's own); it stays empty, so remove it if it is."""
    with contextlib.suppress(OSError, RuntimeError, KeyError):  # KeyError: not in a submitit job
        folder = submitit.JobEnvironment().paths.folder  # <log dir>/<job id>
        (folder.parent / "%j").rmdir()
