"""A chain's training task resubmitted as a new job (cancel-mode preemption: nnslurm.scheduler.
after_stop) must not strand its dependants: before the old job ends (its end as PREEMPTED can
never satisfy `afterok`, and --kill-on-invalid-dep would cancel them), every dependant of it is
told to wait for the new job instead (`scontrol update JobId=... Dependency=...`).

- `afterok` on the task's whole array becomes `afterok` on the array's other tasks and the new job;
- `aftercorr` (the cascade's task k after 3d_lowres task k) becomes `afterok:NEW` for task k only;
- a job resubmitted again is replaced by its newer job.
The chain's record keeps each rewritten dependency, so a later resubmission starts from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from nnslurm.core.errors import CommandError, SchedulerError
from nnslurm.runs.chains import After, ChainJob, ChainRecord, find_chain, write_record

logger = logging.getLogger(__name__)

Parts = list[tuple[str, list[str]]]


def parse_dependency(expression: str) -> Parts:
    """'afterok:1:2,aftercorr:3' -> [('afterok', ['1', '2']), ('aftercorr', ['3'])]"""
    parts: Parts = []
    for part in expression.split(","):
        kind, *ids = part.split(":")
        parts.append((kind, ids))
    return parts


def format_dependency(parts: Parts) -> str:
    return ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in parts if ids)


def redirected(expression: str, stage: ChainJob, old: str, new: str, whole_job: bool) -> str | None:
    """`expression` with `old` (a task of `stage`, or an earlier resubmission) replaced by `new`;
    None when it does not wait for `old`. `whole_job`: the expression is the dependant's own (all its
    tasks), so `aftercorr` on the stage is left to each task's own rewrite."""
    changed = False
    parts: Parts = []
    for kind, ids in parse_dependency(expression):
        if old in ids:
            ids = [new if job == old else job for job in ids]
            changed = True
        elif stage.job_id in ids and old in stage.task_ids:
            if kind == After.CORRESPONDING.value:
                if whole_job:
                    parts.append((kind, ids))
                    continue
                kind, ids = After.OK.value, [job for job in ids if job != stage.job_id] + [new]
            else:
                others = [task for task in stage.task_ids if task != old]
                ids = [job for job in ids if job != stage.job_id] + others + [new]
            changed = True
        parts.append((kind, ids))
    return format_dependency(parts) if changed else None


def redirections(chain: ChainRecord, old: str, new: str) -> list[tuple[str, str]]:
    """(job or task to update, its new dependency) for every dependant of `old` in the chain."""
    stage = next((job for job in chain.jobs if old in job.all_ids), None)
    if stage is None:
        return []
    updates: list[tuple[str, str]] = []
    for dependant in chain.jobs:
        if dependant is stage or not dependant.dependency:
            continue
        current = dict(dependant.rewritten)
        whole = redirected(
            current.get(dependant.job_id, dependant.dependency), stage, old, new, whole_job=True
        )
        if whole is not None:
            updates.append((dependant.job_id, whole))
        corresponding = _corresponding_task(dependant, stage, old)
        if corresponding is not None:
            base = (
                current.get(corresponding) or whole or current.get(dependant.job_id) or dependant.dependency
            )
            task = redirected(base, stage, old, new, whole_job=False)
            if task is not None:
                updates.append((corresponding, task))
    return updates


def _corresponding_task(dependant: ChainJob, stage: ChainJob, old: str) -> str | None:
    """The dependant's task that waits for `old` by aftercorr (same index in both arrays)."""
    if len(dependant.task_ids) < 2 or After.CORRESPONDING.value not in (dependant.dependency or ""):
        return None
    index = next(
        (i for i, task in enumerate(stage.task_ids) if task == old or old in stage.resubmitted.get(task, ())),
        None,
    )
    return dependant.task_ids[index] if index is not None and index < len(dependant.task_ids) else None


def redirect_dependants(old: str, new: str) -> list[tuple[str, str]]:
    """Point every dependant of `old` at `new` (scontrol), and keep it in the chain's record."""
    from nnslurm.slurm.commands import update_dependency

    chain = find_chain(old)
    if chain is None or chain.path is None:
        return []
    with _locked(chain.path):
        chain = find_chain(old) or chain  # re-read under the lock: another task may have just rewritten it
        updates = redirections(chain, old, new)
        done: list[tuple[str, str]] = []
        for target, dependency in updates:
            try:
                update_dependency(target, dependency)
            except (CommandError, SchedulerError) as error:
                logger.error("could not point job %s at the resubmitted job %s: %s", target, new, error)
                continue
            logger.warning(
                "job %s now waits for %s (its dependency %s was resubmitted as %s)",
                target,
                dependency,
                old,
                new,
            )
            done.append((target, dependency))
        _save(chain, old, new, done)
    return done


def _save(chain: ChainRecord, old: str, new: str, done: list[tuple[str, str]]) -> None:
    jobs = []
    for job in chain.jobs:
        rewritten = dict(job.rewritten)
        rewritten.update(
            (target, dependency) for target, dependency in done if target in (job.job_id, *job.task_ids)
        )
        resubmitted = {task: list(ids) for task, ids in job.resubmitted.items()}
        for task in job.task_ids:
            if task == old or old in resubmitted.get(task, ()):
                resubmitted.setdefault(task, []).append(new)
        jobs.append(
            dataclasses.replace(
                job,
                rewritten=tuple(rewritten.items()),
                resubmitted={task: tuple(ids) for task, ids in resubmitted.items()},
            )
        )
    assert chain.path is not None
    write_record(dataclasses.replace(chain, jobs=tuple(jobs)), chain.path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two tasks of one array resubmitted at once must not both rewrite the record from the same
    copy. Without lock support (some network filesystems) go on unlocked: the scontrol updates,
    the part that matters, are made either way."""
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX)
        except OSError as error:
            logger.warning("no lock on %s (%s); updating the chain record unlocked", path, error)
        yield
