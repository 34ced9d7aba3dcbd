"""Where a chain stands: one row per stage, from the scheduler's view of its jobs and the stages'
own records (a training task's run folder, a stage's event log).

A stage's state is its tasks' states combined: failed if any failed, cancelled if any was
cancelled, running if any runs, finished when all finished, else waiting (SLURM holds it for its
dependency) or pending. A cancelled stage whose dependency failed says so: SLURM cancelled it
(--kill-on-invalid-dep) because that stage failed for good.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from nnslurm.core.executor import Executor
from nnslurm.runs.chains import ChainJob, ChainRecord
from nnslurm.runs.events import Event, read_events
from nnslurm.runs.history import submission_time
from nnslurm.slurm.commands import SchedulerJob, query_scheduler
from nnslurm.slurm.states import Phase, phase


class StageState(StrEnum):
    WAITING = "waiting"  # pending on its dependency
    PENDING = "pending"  # queued, not started
    RUNNING = "running"
    REQUEUED = "requeued"  # interrupted, queued again
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # the scheduler does not answer and no record says


# The phase of a task's squeue/sacct state (nnslurm.slurm.states) -> the stage state of the task
_BY_PHASE = {
    Phase.QUEUED: StageState.PENDING,
    Phase.REQUEUED: StageState.REQUEUED,
    Phase.PREEMPTED: StageState.REQUEUED,  # SLURM requeues it (or nnslurm resubmits it)
    Phase.RUNNING: StageState.RUNNING,
    Phase.COMPLETING: StageState.RUNNING,
    Phase.COMPLETED: StageState.FINISHED,
    Phase.FAILED: StageState.FAILED,
    Phase.CANCELLED: StageState.CANCELLED,
}
# A stage's state from its tasks': the first that any task has, in this order.
_PRECEDENCE = (
    StageState.FAILED,
    StageState.CANCELLED,
    StageState.RUNNING,
    StageState.REQUEUED,
    StageState.PENDING,
    StageState.WAITING,
    StageState.UNKNOWN,
    StageState.FINISHED,
)


@dataclass(frozen=True)
class StageStatus:
    stage: str
    kind: str
    job_id: str
    state: StageState
    detail: str  # in words: which task failed, why it was cancelled, what it waits for
    tasks: Mapping[str, str]  # each task's (or its resubmission's) scheduler state

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "kind": self.kind,
            "job_id": self.job_id,
            "state": str(self.state),
            "detail": self.detail,
            "tasks": dict(self.tasks),
        }


Scheduler = Callable[[Iterable[str]], "dict[str, SchedulerJob] | None"]


def chain_status(record: ChainRecord, scheduler: Scheduler | None = None) -> list[StageStatus]:
    """Every stage of the chain, in submission order (`scheduler`: default squeue/sacct, each
    job's accounting matched to our submission of it: `_submitted`)."""
    current = {task: _newest_job(task, job) for job in record.jobs for task in job.task_ids}
    answers = None
    if record.executor == Executor.SLURM:
        ask = scheduler or functools.partial(query_scheduler, since=_submitted(record, current))
        answers = ask(current.values())
    rows: list[StageStatus] = []
    for job in record.jobs:
        if record.executor == Executor.SLURM:
            tasks = {
                task: _task_state(current[task], job, index, answers)
                for index, task in enumerate(job.task_ids)
            }
        else:  # one local job runs every stage: each run folder (or the stage's folder) says
            folders: list[Path | None] = [Path(folder) for folder in job.folders if folder] or [None]
            tasks = {str(folder or job.job_id): _from_records(folder) for folder in folders}
        state = next(candidate for candidate in _PRECEDENCE if candidate in {s for s, _ in tasks.values()})
        rows.append(
            StageStatus(
                stage=job.stage,
                kind=job.kind,
                job_id=job.job_id,
                state=state,
                detail=_detail(state, job, tasks, rows, current),
                tasks={task: said for task, (_, said) in tasks.items()},
            )
        )
    return rows


def _newest_job(task: str, job: ChainJob) -> str:
    """A training task resubmitted after a cancel-mode preemption goes on as its new job."""
    index = job.task_ids.index(task)
    folder = Path(job.folders[index]) if index < len(job.folders) and job.folders[index] else None
    newest = task
    for record in read_events(folder) if folder else ():
        if (
            record.get("event") == Event.RESUBMITTED
            and record.get("old_job_id") == newest
            and record.get("job_id")
        ):
            newest = str(record["job_id"])
    return newest


def _submitted(record: ChainRecord, current: Mapping[str, str]) -> dict[str, float]:
    """When each job was submitted: a training task's run folder records it (its resubmission
    too); the chain's other jobs were all submitted before the record was written (`created`)."""
    since: dict[str, float] = {}
    for job in record.jobs:
        for index, task in enumerate(job.task_ids):
            folder = Path(job.folders[index]) if index < len(job.folders) and job.folders[index] else None
            recorded = submission_time(read_events(folder), current[task]) if folder else None
            since[current[task]] = recorded if recorded is not None else record.created
    return since


def _task_state(
    job_id: str, job: ChainJob, index: int, answers: Mapping[str, SchedulerJob] | None
) -> tuple[StageState, str]:
    """(state, what was said) of one task: the scheduler's word, else the stage's own records."""
    answer = (answers or {}).get(job_id)
    if answer is not None:
        found = phase(answer.state)
        state = _BY_PHASE.get(found, StageState.UNKNOWN) if found is not None else StageState.UNKNOWN
        if state == StageState.PENDING and answer.reason.startswith("Dependency"):
            state = StageState.WAITING
        said = answer.state + (f" ({answer.reason})" if answer.reason and answer.reason != "None" else "")
        return state, said
    folder = Path(job.folders[index]) if index < len(job.folders) and job.folders[index] else None
    return _from_records(folder)


def _from_records(folder: Path | None) -> tuple[StageState, str]:
    """Without the scheduler (local executor, or SLURM forgot the job): the newest record says."""
    for record in reversed(read_events(folder) if folder else ()):
        event = record.get("event")
        if event == Event.FINISHED:
            return StageState.FINISHED, "finished (event log)"
        if event == Event.FAILED:
            return StageState.FAILED, f"failed: {record.get('error', '')}".strip()
        if event in (Event.STOPPED, Event.REQUEUED):
            return StageState.REQUEUED, f"{event} (event log)"
        if event in (Event.STARTED, Event.RESUMED, Event.CHECKPOINT):
            return StageState.RUNNING, "running (event log)"
        if event == Event.SUBMITTED:
            return StageState.PENDING, "submitted (event log)"
    return StageState.UNKNOWN, "no answer from the scheduler, no record"


def _detail(
    state: StageState,
    job: ChainJob,
    tasks: Mapping[str, tuple[StageState, str]],
    before: list[StageStatus],
    current: Mapping[str, str],
) -> str:
    if state == StageState.CANCELLED:
        failed = [row.stage for row in before if row.state in (StageState.FAILED, StageState.CANCELLED)]
        waited = set(re.split(r"[:,]", job.dependency or ""))
        causes = [stage for stage in failed if any(r.job_id in waited for r in before if r.stage == stage)]
        if causes:
            return f"cancelled by SLURM: {', '.join(causes)} failed, so its dependency can never be satisfied"
    if state in (StageState.FAILED, StageState.CANCELLED):
        bad = [f"{task}: {said}" for task, (task_state, said) in tasks.items() if task_state == state]
        return "; ".join(bad)
    if state == StageState.WAITING:
        # A task resubmitted after a cancel-mode preemption waits (afterany) for its old job to end.
        resubmitted = [
            f"job {task} to end (resubmitted as {current[task]})"
            for task in job.task_ids
            if current.get(task, task) != task
        ]
        return f"waiting for {'; '.join(resubmitted) or _waited_for(job, before)}"
    done = sum(task_state == StageState.FINISHED for task_state, _ in tasks.values())
    return f"{done}/{len(tasks)} task(s) finished" if len(tasks) > 1 else next(iter(tasks.values()))[1]


def _waited_for(job: ChainJob, before: list[StageStatus]) -> str:
    """'afterok:11:12' -> 'train 2d, train 3d_fullres to succeed' (aftercorr: 'fold by fold')."""
    names = {row.job_id: row.stage for row in before}
    words = []
    for part in filter(None, (job.dependency or "").split(",")):
        kind, *ids = part.split(":")
        stages = ", ".join(names.get(job_id, f"job {job_id}") for job_id in ids)
        words.append(f"{stages} ({'fold by fold' if kind == 'aftercorr' else 'to succeed'})")
    return "; ".join(words) or "its dependency"


def is_over(rows: Iterable[StageStatus]) -> bool:
    """Every stage ended (finished, failed or cancelled)."""
    ended = (StageState.FINISHED, StageState.FAILED, StageState.CANCELLED)
    return all(row.state in ended for row in rows)
