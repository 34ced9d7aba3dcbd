"""What a stop was: the "kind" of a run's "decision" record.

nnslurm.scheduler.policy decides it from the evidence; nnslurm.runs reads it back from the event
log (interruptions, a run's state). It lives down here, beside SLURM's own vocabulary
(nnslurm.slurm.states), so that the reading side needs nothing of the deciding side.
"""

from __future__ import annotations

from enum import StrEnum


class StopKind(StrEnum):
    """What a stop was; the values are the event log's words."""

    WALLTIME = "walltime"  # the warning before the time limit, or the end-time rule: requeue ourselves
    TIMELIMIT = "timelimit"  # the time limit passed without a (usable) warning: requeue ourselves
    PREEMPTION = "preemption"  # chosen for preemption: SLURM requeues at the end of the grace time
    REQUEUED = "requeued"  # SLURM already requeued the job (scontrol requeue from outside, or preemption)
    CANCEL = "cancel"  # scancel: stay cancelled
    SIGNAL = "signal"  # a stop signal with no scheduler event behind it (kill, scancel --signal TERM)
    LIMIT = "requeue-limit"  # a self-requeue was due, but --max-requeues were used up
    NO_PROGRESS = "no-progress"  # a self-requeue was due, but the last starts made no progress
    REQUEUE_FAILED = "requeue-failed"  # the self-requeue was due and `scontrol requeue` failed
    RESUBMIT = "resubmit"  # preempted, and SLURM will not requeue it: submit the run again as a new job
    RESUBMIT_LIMIT = "resubmit-limit"  # a resubmission was due, but --max-requeues were used up
    RESUBMIT_FAILED = "resubmit-failed"  # the resubmission was due and submitting failed
