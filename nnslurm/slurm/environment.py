"""The one reader of a job's environment: what SLURM (or submitit's local executor) tells a process.

Every `SLURM_*`/`SUBMITIT_*` variable nnslurm decides on is read here, on demand, never at import
time. This process's job id as scontrol wants it (`qualified_id`) and as the event log records it
(`event_job_id`) are derived here from them, spelled as nnslurm.slurm.job_ids spells ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from nnslurm.core.executor import Executor
from nnslurm.slurm.job_ids import local_event_id, task_id

# Set by `nnslurm submit` and the templates: the signal of the job's --signal (walltime warning).
WARNING_SIGNAL_ENV = "NNSLURM_WARNING_SIGNAL"
# ... and its lead in seconds (`--signal=SIG@DELAY`): with it, a warning arriving while more time is
# left than a stop needs is a hint (nnslurm.training.stop_margin).
SIGNAL_DELAY_ENV = "NNSLURM_SIGNAL_DELAY"
# Set by `nnslurm submit` and the templates with --time-min: the --time and --time-min asked, in
# seconds (the job's granted limit may be anything between them; a requeue asks for --time again).
TIME_ASKED_ENV = "NNSLURM_TIME_ASKED"
TIME_MIN_ENV = "NNSLURM_TIME_MIN"


@dataclass(frozen=True)
class SlurmEnvironment:
    """What SLURM tells a process of a job through its environment (read on demand)."""

    job_id: str | None  # SLURM_JOB_ID: this job (each array task has its own)
    array_job_id: str | None  # SLURM_ARRAY_JOB_ID: the array's id, for array tasks
    array_task_id: str | None  # SLURM_ARRAY_TASK_ID: the task's index
    restart_count: int  # SLURM_RESTART_COUNT: unset on the first run, then 1, 2, ...
    restart_count_set: bool  # whether SLURM_RESTART_COUNT is set (the event log records it only then)
    procid: int  # SLURM_PROCID: the task's global rank (0 acts)
    warning_signal: str | None  # NNSLURM_WARNING_SIGNAL: the --signal of this job, if nnslurm set it
    executor: str | None  # SUBMITIT_EXECUTOR: "slurm" or "local" inside a submitit job
    local_job_id: str | None  # SUBMITIT_LOCAL_JOB_ID: submitit's local executor, no SLURM
    cpus_per_task: int | None  # SLURM_CPUS_PER_TASK: --cpus-per-task, when given
    job_cpus_per_node: str | None  # SLURM_JOB_CPUS_PER_NODE: as SLURM writes it ("4", "4(x2),2")
    start_time: float | None = None  # SLURM_JOB_START_TIME: this start, Unix seconds
    end_time: float | None = None  # SLURM_JOB_END_TIME (Slurm >= 23.02): its limit as granted, Unix seconds
    time_asked_s: int | None = None  # NNSLURM_TIME_ASKED: --time, set only with --time-min
    time_min_s: int | None = None  # NNSLURM_TIME_MIN: --time-min
    signal_delay_s: int | None = None  # NNSLURM_SIGNAL_DELAY: the warning signal's lead, if nnslurm set it
    step_tasks: int = 1  # SLURM_STEP_NUM_TASKS: srun's tasks in this step (one per node: `--nodes`)
    localid: int = 0  # SLURM_LOCALID: this task's index on its node
    nodelist: str | None = None  # SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST): "gpu[01-02]"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SlurmEnvironment:
        env = os.environ if environ is None else environ
        cpus = _int(env.get("SLURM_CPUS_PER_TASK"), 0)
        return cls(
            job_id=env.get("SLURM_JOB_ID") or None,
            array_job_id=env.get("SLURM_ARRAY_JOB_ID") or None,
            array_task_id=env.get("SLURM_ARRAY_TASK_ID") or None,
            restart_count=_int(env.get("SLURM_RESTART_COUNT"), 0),
            restart_count_set=bool(env.get("SLURM_RESTART_COUNT")),
            procid=_int(env.get("SLURM_PROCID"), 0),
            warning_signal=(env.get(WARNING_SIGNAL_ENV) or "").upper().removeprefix("SIG") or None,
            executor=env.get("SUBMITIT_EXECUTOR") or None,
            local_job_id=env.get("SUBMITIT_LOCAL_JOB_ID") or None,
            cpus_per_task=cpus or None,
            job_cpus_per_node=env.get("SLURM_JOB_CPUS_PER_NODE") or None,
            start_time=_seconds(env.get("SLURM_JOB_START_TIME")),
            end_time=_seconds(env.get("SLURM_JOB_END_TIME")),
            time_asked_s=_int(env.get(TIME_ASKED_ENV), 0) or None,
            time_min_s=_int(env.get(TIME_MIN_ENV), 0) or None,
            signal_delay_s=_int(env.get(SIGNAL_DELAY_ENV), 0) or None,
            step_tasks=max(1, _int(env.get("SLURM_STEP_NUM_TASKS"), 1)),
            localid=_int(env.get("SLURM_LOCALID"), 0),
            nodelist=env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or None,
        )

    @property
    def in_slurm(self) -> bool:
        return self.job_id is not None

    @property
    def local(self) -> bool:
        """A job of submitit's local executor (no SLURM: nothing to ask, nothing to requeue)."""
        return not self.in_slurm and (self.executor == Executor.LOCAL or self.local_job_id is not None)

    @property
    def runs_under(self) -> Executor | None:
        """Where this process runs, decided here once: a SLURM job, a job of submitit's local
        executor, or None: started by hand (a stop there only exits 75)."""
        if self.in_slurm:
            return Executor.SLURM
        return Executor.LOCAL if self.local else None

    @property
    def qualified_id(self) -> str | None:
        """ "ARRAY_TASK" for array tasks (what scontrol and sacct accept), else the job id."""
        if self.array_job_id and self.array_task_id:
            return task_id(self.array_job_id, self.array_task_id)
        return self.job_id

    @property
    def event_job_id(self) -> str | None:
        """The job id as the event log records it: the qualified SLURM id, or "local-<id>"."""
        if self.in_slurm:
            return self.qualified_id
        return local_event_id(self.local_job_id) if self.local_job_id else None

    def record_fields(self) -> dict[str, str | int]:
        """What every event record says about its job: job id and (once restarted) restart count."""
        fields: dict[str, str | int] = {}
        if self.event_job_id:
            fields["job_id"] = self.event_job_id
        if self.restart_count_set:
            fields["restart_count"] = self.restart_count
        return fields


def _seconds(text: str | None) -> float | None:
    """A Unix time SLURM exported; None when unset, 0 or not a number."""
    value = _int(text, 0)
    return float(value) if value > 0 else None


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default
