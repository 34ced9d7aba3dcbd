"""Reading one checkpoint file: load it safely, verify it, and say what it holds or why it is unusable.

Only damage to the file (truncated, not a zip, damaged pickle data, failed checksum, missing
keys) counts as damage. A file this environment cannot read (an import error, an object the
safe loader refuses, a newer format) is reported as what it is: it may be intact, so nothing
may treat it as garbage.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnslurm.checkpoints.fileformat import CHECKSUMS, LEGACY_FORMAT, META_KEY
from nnslurm.core.errors import CheckpointError

# Equal progress: prefer the file that says more (final is finished; latest is nnslurm's stop file).
NAME_RANK = {"checkpoint_final.pth": 3, "checkpoint_latest.pth": 2, "checkpoint_best.pth": 1}


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint belongs to; mismatches are refused."""

    dataset: str  # DatasetXXX_Name
    plans: str  # plans identifier
    configuration: str
    fold: str
    trainer: str  # trainer class name

    @classmethod
    def of_checkpoint(cls, checkpoint: Mapping[str, Any]) -> RunIdentity:
        init_args = checkpoint.get("init_args") or {}
        plans = init_args.get("plans") or {}
        return cls(
            dataset=str(plans.get("dataset_name")),
            plans=str(plans.get("plans_name")),
            configuration=str(init_args.get("configuration")),
            fold=str(init_args.get("fold")),
            trainer=str(checkpoint.get("trainer_name")),
        )

    def differences(self, other: RunIdentity) -> list[str]:
        return [
            f"{name} {getattr(other, name)!r} (this run: {getattr(self, name)!r})"
            for name in ("dataset", "plans", "configuration", "fold", "trainer")
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass(frozen=True)
class CheckpointInfo:
    """A readable checkpoint and where training stands in it."""

    path: Path
    epoch: int  # the epoch to run next (nnU-Net's current_epoch)
    iteration: int  # training iterations of `epoch` already done
    finished: bool  # checkpoint_final: training is complete
    identity: RunIdentity
    meta: Mapping[str, Any]  # the "nnslurm" entry ({} for files written by plain nnU-Net)

    @property
    def position(self) -> tuple[int, int]:
        return (self.epoch, self.iteration)

    @property
    def sort_key(self) -> tuple[int, int, int, int]:
        return (self.epoch, self.iteration, int(self.finished), NAME_RANK.get(self.path.name, 0))


@dataclass(frozen=True)
class Unusable:
    """A checkpoint file that cannot be resumed from, and why."""

    path: Path
    reason: str  # what is wrong with it, without the path
    # True: the file itself is damaged (truncated, not a zip, damaged pickle, failed checksum,
    # missing keys). False: it may be intact, but this environment cannot read it.
    damaged: bool

    @property
    def kind(self) -> str:
        return "damaged" if self.damaged else "cannot be read in this environment"

    def __str__(self) -> str:
        return f"{self.path} {self.kind}: {self.reason}"


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file is damaged or cannot be read in this environment; carries which and why."""

    def __init__(self, unusable: Unusable) -> None:
        super().__init__(str(unusable))
        self.unusable = unusable


def numpy_pickle_globals() -> list[Any]:
    """What nnU-Net's checkpoints (and nnslurm's additions) pickle besides tensors: numpy values.

    The reconstructors of numpy scalars and arrays live in numpy's private numpy._core.multiarray
    (numpy.core before 2.0). They are taken from numpy's own (public) pickling protocol instead of
    that private name, and allowed under both names, so that files written with numpy 1.x load
    with numpy 2.x. Checked against numpy 2.4.6 (and torch 2.13, which allows globals by their
    module and name): test_numpy_values_round_trip_through_the_safe_loader and
    test_numpy_values_of_a_numpy_1_file_load (tests/test_checkpoints.py) fail loudly if that changes.
    """
    scalar: Any = np.float64(0).__reduce__()[0]
    reconstruct: Any = np.zeros(1).__reduce__()[0]
    aliases = [
        (function, f"{module}.{function.__name__}")
        for function in (scalar, reconstruct)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    ]
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [np.dtype, np.ndarray, scalar, reconstruct, *aliases, *dtypes]


@contextmanager
def numpy_values_allowed() -> Iterator[None]:
    """torch.load's safe mode (weights_only=True, torch's default) with the numpy values nnU-Net
    pickles allowed (numpy_pickle_globals), here and nowhere else: still nothing that runs code.

    For the safe loader below, and for trainers whose own `load_checkpoint` calls torch.load with
    torch's default (nnU-Net's nnUNetTrainer_warmup): without it they refuse nnU-Net's own
    checkpoints, the numpy scalars in its logging state (nnslurm.training.trainer)."""
    with torch.serialization.safe_globals(numpy_pickle_globals()):
        yield


def safe_load(path: Path) -> Any:
    """torch.load that refuses pickled code: a file in the results folder must not run anything."""
    with numpy_values_allowed():
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def read_checkpoint(path: Path, verify: bool = True) -> CheckpointInfo:
    """Load a checkpoint lazily (mmap) and check it; raises UnreadableCheckpointError when unusable."""
    checkpoint = load(path)
    if isinstance(checkpoint, Unusable):
        raise UnreadableCheckpointError(checkpoint)
    problem = verify_weights(path, checkpoint) if verify else None
    if problem is not None:
        raise UnreadableCheckpointError(problem)
    return info_of(path, checkpoint)


# The safe loader's refusals of an object it does not allow (torch 2.13's messages); any other
# unpickling failure is damaged pickle data.
_REFUSAL = re.compile(r"GLOBAL|allowlist|must be imported|unrecognized function")


def load(path: Path) -> dict[str, Any] | Unusable:
    """The checkpoint's keys (tensors mmapped), or why it cannot be used."""
    try:
        with zipfile.ZipFile(path):
            pass  # torch.save writes a zip archive: its central directory is at the very end
    except zipfile.BadZipFile:
        return Unusable(path, "does not load: not a complete zip archive (truncated?)", damaged=True)
    except OSError as error:
        return Unusable(path, f"cannot be opened: {error.strerror or error}", damaged=False)
    try:
        checkpoint = safe_load(path)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        refusal = next((line for line in lines if _REFUSAL.search(line)), None)
        if refusal is None:
            return Unusable(path, f"does not load: damaged pickle data ({lines[-1][:200]})", damaged=True)
        name = re.search(r"GLOBAL (\S+)", refusal)
        what = name.group(1) if name else refusal.split("WeightsUnpickler error: ")[-1][:200]
        return Unusable(
            path,
            f"the safe loader (torch.load weights_only=True) refuses the Python object {what} in it; "
            "nnslurm loads no objects a checkpoint does not need, as they could run arbitrary code",
            damaged=False,
        )
    except (EOFError, zipfile.BadZipFile) as error:
        return Unusable(path, f"does not load: {type(error).__name__}: {error}", damaged=True)
    except RuntimeError as error:
        if "PytorchStreamReader" in str(error):  # torch's zip reader: a record is damaged
            return Unusable(path, f"does not load: {str(error).splitlines()[0][:300]}", damaged=True)
        return Unusable(path, f"{type(error).__name__}: {error}", damaged=False)
    except Exception as error:  # ImportError, AttributeError, ...: the environment, not the file
        return Unusable(path, f"{type(error).__name__}: {error}", damaged=False)
    if (
        not isinstance(checkpoint, dict)
        or "network_weights" not in checkpoint
        or "current_epoch" not in checkpoint
    ):
        return Unusable(path, "is not an nnU-Net checkpoint (no network_weights/current_epoch)", damaged=True)
    return checkpoint


def verify_weights(path: Path, checkpoint: Mapping[str, Any]) -> Unusable | None:
    """None when the weights match their recorded checksum (or none is recorded: plain nnU-Net)."""
    meta = checkpoint.get(META_KEY) or {}
    if "weights_crc32" not in meta:
        return None
    version = meta.get("format", LEGACY_FORMAT)
    checksum = CHECKSUMS.get(version)
    if checksum is None:
        return Unusable(
            path,
            f"written in checkpoint format {version!r}; this nnslurm reads formats "
            f"{', '.join(str(known) for known in sorted(CHECKSUMS))} (a newer nnslurm wrote it?)",
            damaged=False,
        )
    if checksum(checkpoint["network_weights"]) != meta["weights_crc32"]:
        return Unusable(path, "fails its checksum (weights are corrupt)", damaged=True)
    return None


def info_of(path: Path, checkpoint: Mapping[str, Any]) -> CheckpointInfo:
    meta = checkpoint.get(META_KEY) or {}
    finished = bool(meta.get("finished", path.name == "checkpoint_final.pth"))
    return CheckpointInfo(
        path=path,
        epoch=int(meta.get("epoch", checkpoint["current_epoch"]) or 0),
        iteration=int(meta.get("iteration", 0)),
        finished=finished,
        identity=RunIdentity.of_checkpoint(checkpoint),
        meta=meta,
    )
