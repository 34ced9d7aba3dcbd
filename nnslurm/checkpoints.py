"""Checkpoint files: atomic writes, background writes, validation and newest-valid selection.

Files keep nnU-Net's names and keys (so `nnUNetv2_train --c` and `nnUNetv2_predict` load them)
and carry one extra key, "nnslurm", with the exact position (epoch, iteration), the RNG states,
the partial epoch's outputs, the run's identity and a checksum of the weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnslurm.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_KEY = "nnslurm"
TEMP_MARKER = ".nnslurm-tmp-"
# Equal progress: prefer the file that says more (final is finished; latest is nnslurm's stop file).
NAME_RANK = {"checkpoint_final.pth": 3, "checkpoint_latest.pth": 2, "checkpoint_best.pth": 1}


# --- writing -----------------------------------------------------------------------------------
def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(state: Mapping[str, Any], path: Path) -> float:
    """Write `state` so that a kill at any instant leaves the old file or the new one, never a torn one.

    Temp file in the same folder, flush + fsync, os.replace, fsync the folder. Returns seconds taken.
    The file gets the mode nnU-Net's own torch.save would give it (0666 minus the umask).
    """
    started = time.perf_counter()
    temp = path.parent / f".{path.name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(temp, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
        fsync_folder(path.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        if isinstance(error, OSError):
            raise CheckpointError(
                f"could not write checkpoint {path}: {error.strerror or error}",
                hint="free space or fix permissions in that folder; the previous checkpoint is untouched.",
            ) from error
        raise
    return time.perf_counter() - started


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Temp files of writes that were killed; only call while holding the run lock."""
    removed = []
    for temp in folder.glob(f".*{TEMP_MARKER}*"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed.append(temp)
    if removed:
        logger.info("removed %d temp file(s) of interrupted checkpoint writes in %s", len(removed), folder)
    return removed


def cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor copied to the host: what the training loop pays for a snapshot."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_copy(value) for value in obj)
    return obj


def weights_checksum(weights: Mapping[str, torch.Tensor]) -> int:
    """CRC32 over the raw bytes of every tensor, in key order (torch's zip reader checks no CRC)."""
    crc = 0
    for key in sorted(weights):
        tensor = weights[key].detach().cpu().contiguous()
        crc = zlib.crc32(key.encode(), crc)
        if tensor.numel():
            crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy().data, crc)
    return crc


class BackgroundWriter:
    """Writes checkpoints in a thread, one at a time, newest last; errors surface on the next call."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Mapping[str, Any], Path, Callable[[Path, float], None]] | None] = (
            queue.Queue()
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="nnslurm-checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, state: Mapping[str, Any], path: Path, on_done: Callable[[Path, float], None]) -> None:
        self._raise_pending()
        self._queue.put((state, path, on_done))

    def wait(self) -> None:
        """Block until every submitted write is durable (or failed)."""
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=600)

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                state, path, on_done = item
                seconds = atomic_torch_save(state, path)
                on_done(path, seconds)
            except BaseException as error:  # kept and re-raised in the training thread
                self._error = error
            finally:
                self._queue.task_done()


# --- reading and choosing --------------------------------------------------------------------
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


def _allowed_globals() -> list[Any]:
    """What nnU-Net's checkpoints (and nnslurm's additions) pickle besides tensors: numpy values."""
    import numpy as np
    from numpy._core import multiarray

    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct, *dtypes]


def safe_load(path: Path) -> Any:
    """torch.load that refuses pickled code: a file in the results folder must not run anything."""
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def read_checkpoint(path: Path, verify: bool = True) -> CheckpointInfo:
    """Load a checkpoint lazily (mmap) and check it; raises CheckpointError when unusable."""
    try:
        checkpoint = safe_load(path)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():
            raise CheckpointError(f"{path} does not load: {error}") from error
        first_line = str(error).strip().splitlines()[-1]
        raise CheckpointError(
            f"{path} holds Python objects that a checkpoint does not need; refusing to load it, as it "
            f"could run arbitrary code ({first_line[:200]})."
        ) from error
    except Exception as error:
        raise CheckpointError(f"{path} does not load: {error}") from error
    if (
        not isinstance(checkpoint, dict)
        or "network_weights" not in checkpoint
        or "current_epoch" not in checkpoint
    ):
        raise CheckpointError(f"{path} is not an nnU-Net checkpoint (no network_weights/current_epoch).")
    meta = checkpoint.get(META_KEY) or {}
    if verify and "weights_crc32" in meta:
        actual = weights_checksum(checkpoint["network_weights"])
        if actual != meta["weights_crc32"]:
            raise CheckpointError(f"{path} fails its checksum (weights are corrupt).")
    finished = bool(meta.get("finished", path.name == "checkpoint_final.pth"))
    return CheckpointInfo(
        path=path,
        epoch=int(meta.get("epoch", checkpoint["current_epoch"]) or 0),
        iteration=int(meta.get("iteration", 0)),
        finished=finished,
        identity=RunIdentity.of_checkpoint(checkpoint),
        meta=meta,
    )


def candidates(folder: Path) -> list[Path]:
    return [folder / name for name in NAME_RANK if (folder / name).is_file()]


def newest_valid(paths: Iterable[Path]) -> tuple[CheckpointInfo | None, list[tuple[Path, str]]]:
    """The readable checkpoint with the most progress, and the files skipped (path, why)."""
    readable: list[CheckpointInfo] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            readable.append(read_checkpoint(path))
        except CheckpointError as error:
            logger.warning("skipping %s: %s", path, error)
            skipped.append((path, str(error)))
    if not readable:
        return None, skipped
    return max(readable, key=lambda info: info.sort_key), skipped


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
