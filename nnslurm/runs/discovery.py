"""Finding runs: run folders under $nnUNet_results, dataset matching, and a RUN_FOLDER|JOBID target."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nnslurm.core.errors import NnslurmError
from nnslurm.runs.events import EVENTS_FILE
from nnslurm.runs.history import read_history
from nnslurm.slurm.job_ids import belongs_to

_FOLDER = re.compile(r"^(?P<trainer>.+)__(?P<plans>.+)__(?P<configuration>[^_].*)$")


class RunNotFound(NnslurmError):
    """A run folder or job id names no run with an event log."""


@dataclass(frozen=True)
class RunName:
    """$nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION/fold_FOLD"""

    dataset: str
    trainer: str
    plans: str
    configuration: str
    fold: str

    @classmethod
    def of_folder(cls, folder: Path) -> RunName:
        match = _FOLDER.match(folder.parent.name)
        fold = folder.name.removeprefix("fold_")
        if match is None:
            return cls(folder.parent.parent.name, folder.parent.name, "?", "?", fold)
        return cls(folder.parent.parent.name, match["trainer"], match["plans"], match["configuration"], fold)


def discover(results: Path, dataset: str | None = None) -> list[Path]:
    """Run folders under `results` (DATASET/TRAINER__PLANS__CONFIG/fold_X) with a log or checkpoints."""
    folders = []
    for folder in sorted(results.glob("Dataset*/*__*__*/fold_*")):
        if not folder.is_dir() or (
            dataset is not None and not dataset_matches(folder.parents[1].name, dataset)
        ):
            continue
        if (folder / EVENTS_FILE).is_file() or any(folder.glob("checkpoint_*.pth")):
            folders.append(folder)
    return folders


def dataset_matches(name: str, wanted: str) -> bool:
    """'Dataset501_Synthetic' matches '501', '0501' and its own name."""
    text = wanted.strip()
    if text.isdigit():
        match = re.match(r"^Dataset(\d{3})_", name)
        return match is not None and int(match.group(1)) == int(text)
    return name == text


def resolve(target: str, results: Path | None) -> list[tuple[Path, str | None]]:
    """RUN_FOLDER or JOBID -> [(run folder, job id or None)]; an array id names all its tasks."""
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / EVENTS_FILE).is_file():
            raise RunNotFound(
                f"{path} has no {EVENTS_FILE}: not a run folder nnslurm has trained in.",
                hint="pass $nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIG/fold_N, or a job id.",
            )
        return [(path, None)]
    if results is None:
        raise RunNotFound(
            f"{target!r} is not a folder, and nnUNet_results is not set to look the job id up.",
            hint="pass the run folder, or export nnUNet_results.",
        )
    wanted = target.strip()
    matches: list[tuple[Path, str | None]] = []
    for folder in discover(results):
        history = read_history(folder)
        for job in history.job_ids:
            if job_matches(job, wanted):
                matches.append((folder, job))
    if not matches:
        raise RunNotFound(
            f"no run under {results} has a job {wanted!r} in its event log.",
            hint="`nnslurm status` lists the runs and their job ids.",
        )
    return matches


def job_matches(job: str, wanted: str) -> bool:
    """'123' matches '123' and the array tasks '123_0', ...; 'local-77' and '77' match 'local-77'."""
    return belongs_to(job, wanted)
