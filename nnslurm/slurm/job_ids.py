"""Job ids as nnslurm writes and reads them, decided here once.

A SLURM job is "123", an array task "123_4" (what scontrol and sacct accept). A job of submitit's
local executor is "local-<pid of its controller>" in the event log, so it can never be taken for a
SLURM job; submitit itself names that job (and its log folder) by the bare pid.
"""

from __future__ import annotations

import re

from nnslurm.core.executor import Executor

# The event log's job ids of submitit's local executor: "local-<pid of its controller>".
LOCAL_PREFIX = "local-"
_SLURM_JOB_ID = re.compile(r"(\d+)(?:_(\d+))?")


def task_id(array_job_id: str, array_task_id: str) -> str:
    """An array task's id: "ARRAY_TASK"."""
    return f"{array_job_id}_{array_task_id}"


def array_job(job_id: str) -> str:
    """The job an id belongs to: "123_4" -> "123"; any other id unchanged."""
    match = _SLURM_JOB_ID.fullmatch(job_id)
    return match.group(1) if match else job_id


def is_slurm_job(job_id: str | None) -> bool:
    """Whether an event log's job id is a SLURM job ("123", "123_4"), not "local-..." or None."""
    return bool(job_id) and _SLURM_JOB_ID.fullmatch(str(job_id)) is not None


def is_local_job(job_id: str | None) -> bool:
    """Whether an event log's job id is a job of submitit's local executor ("local-<pid>")."""
    return bool(job_id) and str(job_id).startswith(LOCAL_PREFIX)


def local_event_id(local_job_id: str | int) -> str:
    """The event log's id of a local-executor job (submitit's job id: its controller's pid)."""
    return f"{LOCAL_PREFIX}{local_job_id}"


def submitted_event_id(job_id: str | int, executor: str) -> str:
    """The id a submitted job's own events will carry, as the submitter knows it (`executor`:
    nnslurm.core.executor.Executor or its value)."""
    return local_event_id(job_id) if executor == Executor.LOCAL else str(job_id)


def submitit_id(job_id: str) -> str:
    """The id submitit knows the job by (the name of its log folder): "local-77" -> "77"."""
    return job_id.removeprefix(LOCAL_PREFIX)


def local_pid(job_id: str | None) -> int | None:
    """The pid of a local-executor job's controller ("local-77" -> 77); None for any other id."""
    if not is_local_job(job_id):
        return None
    bare = submitit_id(str(job_id))
    return int(bare) if bare.isdigit() else None


def belongs_to(job_id: str, wanted: str) -> bool:
    """Whether an event log's `job_id` is the job a user named: '123' names '123' and its array
    tasks '123_0', ...; 'local-77' and '77' name 'local-77'."""
    return job_id == wanted or job_id.startswith(f"{wanted}_") or job_id == local_event_id(wanted)
