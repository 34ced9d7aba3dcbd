"""Where a job runs: on SLURM, or on this machine through submitit's local executor.

Decided once and carried as this type: for a submission by `choose_executor`
(nnslurm.jobs.submission, from --executor), for a running process by
`SlurmEnvironment.runs_under` (nnslurm.slurm.environment, from its variables; None: started by
hand).
The values are the on-disk names (the event log's and the chain record's "executor") and
--executor's choices, so a StrEnum compares equal to them at those boundaries.
"""

from __future__ import annotations

from enum import StrEnum


class Executor(StrEnum):
    SLURM = "slurm"  # a SLURM job: scontrol tells what a stop means, `scontrol requeue` requeues
    LOCAL = "local"  # submitit's local executor: no scheduler; exit 144 makes its controller restart the job
