"""Whether a run is held by a job that is queued or running: a second `nnslurm submit` of it would
only collide with that job at the run lock, so it is refused at submission instead.

Evidence, not the log alone: the run's newest job (nnslurm.runs.status, from the event log) must
be confirmed by SLURM (queued, running, completing) or, without SLURM, by a living process on this
host (the training process, or submitit's local controller between two starts). A run that is
stopped, cancelled, failed or finished, or whose job SLURM no longer runs, is free to submit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nnslurm.runs.state import RunState
from nnslurm.runs.status import RunStatus, live_process, statuses
from nnslurm.slurm.job_ids import is_slurm_job
from nnslurm.slurm.states import is_live

# Run states in which the newest job may still train (what SLURM or the process then confirms).
MAY_HOLD = (RunState.PENDING, RunState.RUNNING, RunState.REQUEUED, RunState.PREEMPTED)


@dataclass(frozen=True)
class Holder:
    folder: Path
    job_id: str | None  # None: a plain `nnslurm train`
    state: RunState
    evidence: str  # "SLURM: RUNNING", "process 1234 is alive on this host"

    def describe(self) -> str:
        who = f"job {self.job_id}" if self.job_id else "an `nnslurm train` process"
        return f"{self.folder}: already {self.state} as {who} ({self.evidence})"


def holder(row: RunStatus) -> Holder | None:
    """The job that holds this run, by evidence; None when a submission is free to go."""
    if row.state not in MAY_HOLD:
        return None
    job = row.job_id
    if is_slurm_job(job):
        # queued, running or completing (a requeue passes through COMPLETING): it holds the run
        if not is_live(row.scheduler_state):
            return None
        return Holder(row.folder, job, row.state, f"SLURM: {row.scheduler_state}")
    if row.history is None:
        return None
    pid = live_process(row.history, job)
    if pid is None:
        return None
    return Holder(row.folder, job, row.state, f"process {pid} is alive on this host")


def holders(folders: Sequence[Path]) -> list[Holder]:
    """The holders of these run folders (one squeue/sacct call for all); folders without a log are free."""
    rows, _ = statuses([folder for folder in folders if folder.is_dir()])
    return [found for row in rows if (found := holder(row)) is not None]
