"""A submitted chain's record: which job runs which stage, waiting for what; read, found, rewritten.

`$nnUNet_results/.nnslurm/chains/<id>.json` names every job of a chain (nnslurm.workflow.chain
writes it when it submits), so `nnslurm status` can say which stage failed and why, `nnslurm
cancel CHAIN` cancels it all, and a resubmitted training task's dependants are pointed at its new
job (nnslurm.scheduler.redirect). Plain data and files only: no workflow, no submitit, no torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from nnslurm.core import files
from nnslurm.core.locations import chains_folder

logger = logging.getLogger(__name__)

SCHEMA = "nnslurm.chain/1"
CHAINS_FOLDER = chains_folder(Path())  # relative: the records' folder inside a results folder


class After(StrEnum):
    """SLURM's dependency types the chain uses (sbatch --dependency)."""

    OK = "afterok"  # every task of the named job completed successfully
    CORRESPONDING = "aftercorr"  # task k of this array after task k of the named array


@dataclass(frozen=True)
class ChainJob:
    """One stage's job in a submitted chain."""

    stage: str  # the stage's name ("train 3d_fullres", "find best", ...)
    kind: str  # nnslurm.workflow.plan.StageKind value
    job_id: str  # SLURM job (an array's id for a training stage) or "local-<pid>"
    task_ids: tuple[str, ...]  # array tasks ("123_0", ...); the job id itself for a single job
    dependency: str | None  # --dependency as submitted
    folders: tuple[str, ...] = ()  # training: each task's run folder; others: the stage's folder
    # A task resubmitted after a cancel-mode preemption: its new job(s), oldest first (scheduler.redirect)
    resubmitted: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # (job or task, dependency) rewritten since submission to wait for a resubmitted job instead
    rewritten: tuple[tuple[str, str], ...] = ()

    @property
    def all_ids(self) -> tuple[str, ...]:
        """Every id this stage's work ran under: the job, its tasks, their resubmissions."""
        later = tuple(job for ids in self.resubmitted.values() for job in ids)
        return (self.job_id, *self.task_ids, *later)


@dataclass(frozen=True)
class ChainRecord:
    chain_id: str  # the first job's id: what `nnslurm cancel` and `status` name it by
    dataset: str
    executor: str
    created: float
    jobs: tuple[ChainJob, ...]
    path: Path | None = None  # where the record lives (not serialised)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "chain_id": self.chain_id,
            "dataset": self.dataset,
            "executor": self.executor,
            "created": self.created,
            "jobs": [dataclasses.asdict(job) for job in self.jobs],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any], path: Path | None = None) -> ChainRecord:
        if document.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document")
        jobs = tuple(
            ChainJob(
                stage=str(job["stage"]),
                kind=str(job["kind"]),
                job_id=str(job["job_id"]),
                task_ids=tuple(str(task) for task in job.get("task_ids", ())),
                dependency=job.get("dependency"),
                folders=tuple(str(folder) for folder in job.get("folders", ())),
                resubmitted={str(k): tuple(map(str, v)) for k, v in (job.get("resubmitted") or {}).items()},
                rewritten=tuple((str(target), str(dep)) for target, dep in job.get("rewritten", ())),
            )
            for job in document["jobs"]
        )
        return cls(
            chain_id=str(document["chain_id"]),
            dataset=str(document["dataset"]),
            executor=str(document["executor"]),
            created=float(document["created"]),
            jobs=jobs,
            path=path,
        )


def write_record(record: ChainRecord, path: Path) -> ChainRecord:
    """`record` as `path`, whole or not at all (a reader never sees half a chain); returned with its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, record.to_json(), indent=2, newline=True)
    return dataclasses.replace(record, path=path)


def read_chains(folder: Path | None = None) -> list[ChainRecord]:
    """Every chain record (default: $nnUNet_results's), newest first; unreadable ones are skipped
    with a warning."""
    folder = folder or chains_folder()
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            records.append(ChainRecord.from_json(json.loads(path.read_text()), path))
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("%s is not a chain record: %s", path, error)
    return sorted(records, key=lambda record: record.created, reverse=True)


def find_chain(chain_id: str, folder: Path | None = None) -> ChainRecord | None:
    """The chain one of whose jobs (or tasks, or their resubmissions) is `chain_id`."""
    for record in read_chains(folder):
        if any(chain_id in job.all_ids for job in record.jobs):
            return record
    return None
