"""The submitit callable of a training: nnU-Net training in the job's process, requeued by evidence.

submitit's `process_job` installs its handlers (SIGTERM and SIGCONT: log only; its USR signal:
checkpoint and requeue inside the handler), then calls this object, which trains through
`nnslurm.training.stoppable.run_stoppable`: nnslurm's recording handlers replace submitit's at once (a
signal during the seconds of imports is not lost), and the loop, not a handler, checkpoints.

After a stop (nnslurm.jobs.base.exit_after_stop; see `nnslurm.scheduler.policy` for the evidence):
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

With -num_gpus N > 1 the job's process launches the N ranks on its node and waits for them
(nnslurm.training.launch_ranks): every stop signal SLURM sends it goes on to every rank, rank 0
decides with this job's own `after_stop` (in its process), and the job's process leaves with rank
0's status through the same one exit, without a result for submitit. With --nodes M, srun runs this
callable once per node, each a launcher of N ranks (nnslurm.training.ranks.Placement); the others
leave with 0 once their ranks stopped, rank 0's launcher with the decision.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from nnslurm.core.config import TrainJob
from nnslurm.jobs.base import Again, StoppableJob
from nnslurm.runs.outcome import Stopped
from nnslurm.scheduler.restart import note_restart
from nnslurm.training.ranks import step_placement
from nnslurm.training.signals import StopRequest
from nnslurm.training.stoppable import AfterStop, exit_process, run_stoppable, stopped_outside_training

if TYPE_CHECKING:
    from nnslurm.training.process import TrainingOutcome

logger = logging.getLogger(__name__)


class TrainingJob(StoppableJob):
    """One nnU-Net run (dataset, configuration, fold) as a submitit job; every start resumes it.

    `again` is the run's own submission (one job, the settings it was submitted with): a job
    preempted where SLURM will not requeue it submits itself again with it
    (nnslurm.jobs.submission.Submission.submit_again)."""

    def __init__(self, job: TrainJob, again: Again | None = None) -> None:
        self.job = job
        self.again = again

    @property
    def max_requeues(self) -> int:
        return self.job.options.max_requeues

    def run(self) -> TrainingOutcome | None:
        """The outcome once training finished; None with several ranks (rank 0's stays in its process)."""
        placement = step_placement()  # one of several srun tasks (--nodes): one launcher of the job's
        if placement.leads:
            note_restart(self.job)  # a restart after a node failure: say so (sacct); nothing outside SLURM
        ranks = self.job.options.num_gpus
        if ranks > 1 or placement.launchers > 1:
            from nnslurm.training.launch_ranks import launch  # after submitit's start: torch-free

            # rank 0 decides with this job's after_stop; a module-level partial pickles into its process
            status = launch(self.job, ranks, functools.partial(_after_stop_of, self), placement)
            if status != 0:
                exit_process(status)  # no result: the job is not over for submitit
            logger.info("training finished with %d ranks", ranks * placement.launchers)
            return None
        outcome = run_stoppable(self.job, after_stop=self.after_stop)
        logger.info("training finished: %s", outcome.output_folder)
        return outcome

    def stopped_outside(self, request: StopRequest) -> Stopped:
        return stopped_outside_training(self.job, request)

    def __repr__(self) -> str:
        run = self.job.run
        return f"TrainingJob(dataset={run.dataset}, configuration={run.configuration}, fold={run.fold})"


def _after_stop_of(training_job: TrainingJob, job: TrainJob) -> AfterStop:
    """Rank 0's after-stop decision: the job's own (launch_ranks.AfterStopFor, made in rank 0)."""
    return training_job.after_stop
