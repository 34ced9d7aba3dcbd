"""Choosing the checkpoint to resume from: newest valid, belongs to this run, never start over silently.

Damaged files (truncated, failed checksum) are skipped with a warning, the next newest is taken.
Files that may be intact but cannot be read here are never skipped: training from an older file
or from epoch 0 would overwrite them. The run refuses to start instead, unless told to start
over, which moves them aside (never deletes them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nnslurm.checkpoints.read import (
    NAME_RANK,
    CheckpointInfo,
    RunIdentity,
    Unusable,
    info_of,
    load,
    read_checkpoint,
    verify_weights,
)
from nnslurm.core.errors import CheckpointError
from nnslurm.core.files import fsync_folder

logger = logging.getLogger(__name__)

UNUSABLE_SUFFIX = ".unusable-"  # checkpoint_latest.pth.unusable-20261201T103000: set aside by start_over


class NoUsableCheckpointError(CheckpointError):
    """Checkpoint files exist, but none that can be resumed without overwriting one it cannot read."""

    def __init__(self, message: str, unusable: Sequence[Unusable]) -> None:
        super().__init__(
            message,
            hint="if the environment changed (a torch or numpy upgrade, another trainer class), train where "
            "these files can be read; or resume from a file you choose with --resume-from PATH; or pass "
            f"--start-over to move them aside (renamed to NAME{UNUSABLE_SUFFIX}TIME, never deleted) and "
            "train from epoch 0.",
        )
        self.unusable = tuple(unusable)


def candidates(folder: Path) -> list[Path]:
    return [folder / name for name in NAME_RANK if (folder / name).is_file()]


def newest_valid(paths: Iterable[Path]) -> tuple[CheckpointInfo | None, list[Unusable]]:
    """The readable checkpoint with the most progress, and the files skipped (with why).

    Checksums are verified from the most progress down, until one passes: a resume reads the
    weights of the file it takes, not those of older ones (hundreds of MB each for 3d_fullres).
    """
    readable: list[tuple[CheckpointInfo, dict[str, Any]]] = []
    skipped: list[Unusable] = []
    for path in paths:
        checkpoint = load(path)
        if isinstance(checkpoint, Unusable):
            skipped.append(checkpoint)
        else:
            readable.append((info_of(path, checkpoint), checkpoint))
    chosen = None
    for info, checkpoint in sorted(readable, key=lambda pair: pair[0].sort_key, reverse=True):
        problem = verify_weights(info.path, checkpoint)
        if problem is None:
            chosen = info
            break
        skipped.append(problem)
    for unusable in skipped:
        logger.warning("skipping %s", unusable)
    return chosen, skipped


def choose_checkpoint(
    folder: Path,
    resume_from: str,
    expected: RunIdentity,
    overrides: Mapping[str, int],
    start_over: bool = False,
) -> CheckpointInfo | None:
    """newest | latest | best | PATH -> the checkpoint to resume from (None: start fresh).

    With "newest", checkpoint files that cannot be used stop the run (NoUsableCheckpointError)
    when none is usable, or when one of them may be intact but cannot be read here; start_over
    then moves every checkpoint file aside and starts fresh. Usable checkpoints are resumed
    whatever start_over says: a requeued job runs the same command again.
    """
    info: CheckpointInfo | None
    if resume_from in ("latest", "best"):
        path = folder / f"checkpoint_{resume_from}.pth"
        if not path.is_file():
            raise CheckpointError(
                f"--resume-from {resume_from}: {path} does not exist.",
                hint="use --resume-from newest to take whatever is newest.",
            )
        info = read_checkpoint(path)
    elif resume_from == "newest":
        paths = candidates(folder)
        info, skipped = newest_valid(paths)
        unreadable = [unusable for unusable in skipped if not unusable.damaged]
        if unreadable or (skipped and info is None):
            if not start_over:
                raise NoUsableCheckpointError(_refusal(folder, info, skipped), skipped)
            set_aside(paths)
            info = None
    else:
        path = Path(resume_from).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"--resume-from {resume_from}: no such file.",
                hint="pass newest, latest, best or the path of a checkpoint_*.pth file.",
            )
        info = read_checkpoint(path)
    if info is not None:
        check_belongs(info, expected, overrides)
    return info


def _refusal(folder: Path, usable: CheckpointInfo | None, skipped: Sequence[Unusable]) -> str:
    if usable is None:
        what = f"no checkpoint in {folder} can be resumed, and training from epoch 0 would overwrite them:"
    else:
        what = (
            f"checkpoints in {folder} cannot be read in this environment, and resuming from "
            f"{usable.path.name} (epoch {usable.epoch}, iteration {usable.iteration}) would overwrite them:"
        )
    return "\n  ".join([what, *(f"{item.path.name} {item.kind}: {item.reason}" for item in skipped)])


def set_aside(paths: Iterable[Path]) -> None:
    """Rename each file to NAME.unusable-TIME in its folder (never deleted)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for path in paths:
        target = path.with_name(f"{path.name}{UNUSABLE_SUFFIX}{stamp}")
        number = 1
        while target.exists():  # a second start-over within the same second
            number += 1
            target = path.with_name(f"{path.name}{UNUSABLE_SUFFIX}{stamp}-{number}")
        path.rename(target)
        fsync_folder(target.parent)
        logger.warning("starting over: moved %s aside to %s", path, target.name)


def check_belongs(info: CheckpointInfo, expected: RunIdentity, overrides: Mapping[str, int]) -> None:
    """Refuse a checkpoint of another run, or one trained with other epoch/iteration settings."""
    differences = expected.differences(info.identity)
    if differences:
        raise CheckpointError(
            f"{info.path} belongs to another run: " + "; ".join(differences) + ".",
            hint="resume it with that run's dataset/plans/configuration/fold/trainer, or choose another "
            "--resume-from.",
        )
    recorded = info.meta.get("overrides")
    if recorded is not None and dict(recorded) != dict(overrides):
        raise CheckpointError(
            f"{info.path} was trained with {format_overrides(recorded)}, this run asks for "
            f"{format_overrides(overrides)}.",
            hint="resume with the same --epochs/--iterations-per-epoch/--val-iterations-per-epoch, or "
            "start a new run in another results folder.",
        )


def format_overrides(overrides: Mapping[str, int]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(overrides.items())) or "nnU-Net's defaults"
