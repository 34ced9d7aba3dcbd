"""Checkpoint files: atomic writes, background writes, validation and newest-valid selection.

Files keep nnU-Net's names and keys (so `nnUNetv2_train --c` and `nnUNetv2_predict` load them)
and carry one extra key, "nnslurm", with the exact position (epoch, iteration), the RNG states,
the partial epoch's outputs, the run's identity and a checksum of the weights.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import pickle
import queue
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
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

    Temp file in the same folder, flush + fsync, os.replace, fsync the folder. Returns the seconds
    until the new file was durable. The file gets the mode nnU-Net's own torch.save would give it
    (0666 minus the umask).
    """
    started = time.perf_counter()
    temp = _temp_name(path, "")
    old: Path | None = None
    try:
        with open(temp, "wb") as stream:
            torch.save(state, cast(IO[bytes], _WriteBehind(stream)))
            stream.flush()
            os.fsync(stream.fileno())
        old = _keep_old_aside(path)
        os.replace(temp, path)
        fsync_folder(path.parent)
        seconds = time.perf_counter() - started
        if old is not None:
            _discard_in_background(old)
    except BaseException as error:
        for leftover in (temp, old):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        if isinstance(error, OSError):
            raise CheckpointError(
                f"could not write checkpoint {path}: {error.strerror or error}",
                hint="free space or fix permissions in that folder; the previous checkpoint is untouched.",
            ) from error
        raise
    return seconds


def _temp_name(path: Path, kind: str) -> Path:
    """A hidden name next to `path` that remove_stale_temp_files recognises."""
    return path.parent / f".{path.name}{TEMP_MARKER}{kind}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _keep_old_aside(path: Path) -> Path | None:
    """A second link to the file about to be replaced, so that os.replace only renames.

    Measured: replacing a 250 MB checkpoint frees its blocks inside os.replace, ~45 ms on this
    machine's ext4 (mounted with discard), on the way to durable. With a second link the blocks
    are freed when that link goes, in the background. None if there is no old file or the
    filesystem has no hard links (then os.replace pays, as before).
    """
    aside = _temp_name(path, "old-")
    try:
        os.link(path, aside)
    except OSError:
        return None
    return aside


_discards: list[threading.Thread] = []


def _discard_in_background(path: Path) -> None:
    """Unlink off the caller's path; a file left by a process that died first is a stale temp file."""
    _discards[:] = [thread for thread in _discards if thread.is_alive()]
    thread = threading.Thread(target=_unlink_quietly, args=(path,), name="nnslurm-discard", daemon=True)
    thread.start()
    _discards.append(thread)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@atexit.register
def wait_for_discards() -> None:
    """Until the old files replaced by atomic_torch_save are gone (also run at exit)."""
    for thread in list(_discards):
        thread.join(timeout=30)


class _WriteBehind:
    """A file for torch.save that starts the disk write of every 16 MB as soon as it is written.

    Without it the page cache holds the whole checkpoint until fsync, which then waits for all of
    it; with it the disk works while torch.save serialises the rest (the fsync still makes it
    durable). POSIX_FADV_DONTNEED starts writeback of dirty pages and leaves them cached until clean.
    """

    CHUNK = 16 << 20

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._started = 0  # bytes whose writeback was started
        self._written = 0
        self._advise = getattr(os, "posix_fadvise", None)  # not on macOS: plain writes

    def write(self, data: Any) -> int:
        written: int = self._stream.write(data)
        self._written += written
        if self._advise is not None and self._written - self._started >= self.CHUNK:
            self._stream.flush()
            self._advise(
                self._stream.fileno(), self._started, self._written - self._started, os.POSIX_FADV_DONTNEED
            )
            self._started = self._written
        return written

    def flush(self) -> None:
        self._stream.flush()


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
    """A deep copy with every tensor copied to the host; tensors that share a storage still share one."""
    return HostCopies().copy(obj)


class HostCopies:
    """Copies a state off the training tensors into host memory that is reused between snapshots.

    A snapshot must not change while it is written, and training goes on changing the weights, so
    the loop copies; what it pays is one memcpy per distinct storage:
    - tensors that share a storage stay shared (nnU-Net's state_dict names each encoder weight up
      to four times): copied once, written once by torch.save, as in nnU-Net's own files;
    - host buffers are reused once their snapshot is written (`release`), so a snapshot faults no
      fresh pages; CPU bytes are copied by numpy (one thread: no OpenMP barrier on a busy node);
    - CUDA storages go to pinned buffers, copied asynchronously with one synchronisation;
    - with background=True the CPU bytes are copied by a helper thread while the loop goes on
      (nnU-Net plots progress after its epoch-end saves): `wait` before anything changes them.
    """

    KEPT_PER_SIZE = 2  # free buffers kept per size: a best and a latest snapshot of one epoch end

    def __init__(self) -> None:
        self._free: dict[tuple[int, bool], list[torch.UntypedStorage]] = {}
        self._lent: dict[int, tuple[int, bool]] = {}  # data_ptr -> (nbytes, pinned) of lent buffers
        self._copying: list[threading.Thread] = []  # background copies not known to be done
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def copy(self, obj: Any, background: bool = False) -> Any:
        """`obj` with every tensor replaced by a host copy (dicts, lists, tuples rebuilt).

        background=True: CPU bytes are copied by a thread; the copy is complete after `wait`.
        """
        memo: dict[tuple[int, str], torch.UntypedStorage] = {}
        pending: list[tuple[torch.UntypedStorage, torch.UntypedStorage]] = []
        copied = self._copy(obj, memo, pending)
        if any(device.startswith("cuda") for _, device in memo):
            torch.cuda.synchronize()  # the asynchronous device-to-host copies have landed
        if background and pending:
            thread = threading.Thread(
                target=self._copy_bytes, args=(pending,), name="nnslurm-snapshot-copy", daemon=True
            )
            thread.start()
            with self._lock:
                self._copying.append(thread)
        else:
            for target, source in pending:
                _copy_bytes(target, source)
        return copied

    def wait(self) -> None:
        """Until every background copy is complete; raises what a copy raised. Cheap when none runs."""
        if not self._copying:
            return
        with self._lock:
            threads = list(self._copying)
        for thread in threads:
            thread.join()
        with self._lock:
            self._copying = [thread for thread in self._copying if thread.is_alive()]
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _copy_bytes(self, pending: list[tuple[torch.UntypedStorage, torch.UntypedStorage]]) -> None:
        try:
            for target, source in pending:
                _copy_bytes(target, source)
        except BaseException as error:  # raised by `wait`
            self._error = error

    def release(self, obj: Any) -> None:
        """`obj` (a copy) is written: its buffers may be reused by the next snapshot."""
        storages: dict[int, torch.UntypedStorage] = {}
        _collect_storages(obj, storages)
        with self._lock:
            for pointer, storage in storages.items():
                key = self._lent.pop(pointer, None)
                if key is not None and len(self._free.setdefault(key, [])) < self.KEPT_PER_SIZE:
                    self._free[key].append(storage)

    def _copy(self, obj: Any, memo: dict[tuple[int, str], torch.UntypedStorage], pending: list) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj, memo, pending)
        if isinstance(obj, dict):
            return {key: self._copy(value, memo, pending) for key, value in obj.items()}
        if isinstance(obj, list):
            return [self._copy(value, memo, pending) for value in obj]
        if isinstance(obj, tuple):
            return tuple(self._copy(value, memo, pending) for value in obj)
        return obj

    def _copy_tensor(
        self, tensor: torch.Tensor, memo: dict[tuple[int, str], torch.UntypedStorage], pending: list
    ) -> Any:
        if (
            tensor.layout != torch.strided
            or tensor.is_quantized
            or tensor.is_conj()
            or tensor.is_neg()
            or tensor.device.type not in ("cpu", "cuda")
        ):
            return tensor.detach().to("cpu", copy=True)
        source = tensor.untyped_storage()
        key = (source.data_ptr(), str(source.device))
        target = memo.get(key)
        if target is None:
            target = self._take(source.nbytes(), pinned=source.device.type == "cuda")
            if source.device.type == "cpu":
                pending.append((target, source))  # copied by the caller or a thread (`copy`)
            else:
                _copy_bytes(target, source)
            memo[key] = target
        copy = torch.empty(0, dtype=tensor.dtype)
        return copy.set_(target, tensor.storage_offset(), tensor.size(), tensor.stride())

    def _take(self, nbytes: int, pinned: bool) -> torch.UntypedStorage:
        if nbytes == 0:
            return torch.UntypedStorage(0)
        with self._lock:
            free = self._free.get((nbytes, pinned))
            storage = free.pop() if free else None
        if storage is None:
            storage = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned).untyped_storage()
        with self._lock:
            self._lent[storage.data_ptr()] = (nbytes, pinned)
        return storage


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _copy_bytes(target: torch.UntypedStorage, source: torch.UntypedStorage) -> None:
    if source.device.type == "cpu":
        np.copyto(_bytes_of(target).numpy(), _bytes_of(source).numpy())
    else:
        _bytes_of(target).copy_(_bytes_of(source), non_blocking=True)


def _collect_storages(obj: Any, found: dict[int, torch.UntypedStorage]) -> None:
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        found.setdefault(storage.data_ptr(), storage)
    elif isinstance(obj, dict):
        for value in obj.values():
            _collect_storages(value, found)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _collect_storages(value, found)


def weights_checksum(weights: Mapping[str, torch.Tensor]) -> int:
    """CRC32 over the raw bytes of every tensor, in key order (torch's zip reader checks no CRC).

    Bytes that several keys share (nnU-Net's state_dict names each encoder weight up to four
    times) are read once: the running CRC is carried over them with zlib's crc32_combine
    arithmetic, which gives the same value as reading them again.
    """
    tensors = {key: weights[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8) for key in weights}
    uses = Counter((data.data_ptr(), data.numel()) for data in tensors.values() if data.numel())
    crc_of: dict[tuple[int, int], int] = {}  # the tensors stay referenced: addresses are not reused
    crc = 0
    for key in sorted(tensors):
        data = tensors[key]
        crc = zlib.crc32(key.encode(), crc)
        if not data.numel():
            continue
        identity = (data.data_ptr(), data.numel())
        if uses[identity] == 1:
            crc = zlib.crc32(data.numpy().data, crc)
            continue
        if identity not in crc_of:
            crc_of[identity] = zlib.crc32(data.numpy().data)
        crc = _crc32_continue(crc, crc_of[identity], data.numel())
    return crc


_CRC32_POLY = 0xEDB88320  # zlib's CRC-32, reflected


def _multmodp(a: int, b: int) -> int:
    """a times b modulo the CRC-32 polynomial (zlib's multmodp)."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if a & (m - 1) == 0:
                return product
        m >>= 1
        b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1


def _x_to_2_to_the(count: int) -> list[int]:
    """x^(2^k) modulo the polynomial for k < count (zlib's x2n_table)."""
    table = [1 << 30]
    while len(table) < count:
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x_to_2_to_the(32)


@functools.cache
def _shift(length: int) -> int:
    """x^(8 * length) modulo the polynomial: appending `length` bytes to a CRC (zlib's x2nmodp)."""
    operator, k = 1 << 31, 3
    while length:
        if length & 1:
            operator = _multmodp(_X2N[k & 31], operator)
        length >>= 1
        k += 1
    return operator


def _crc32_continue(crc: int, crc_of_data: int, length: int) -> int:
    """zlib.crc32(data, crc) from zlib.crc32(data) and len(data) (zlib's crc32_combine)."""
    return _multmodp(_shift(length), crc) ^ crc_of_data


def write_checkpoint(state: dict[str, Any], path: Path) -> float:
    """Complete a snapshot (its weights checksum, left to the writer) and write it atomically.

    The checksum is computed here, not when the loop takes the snapshot: the snapshot is a private
    copy, so the writer thread can checksum it while training goes on. Returns seconds taken.
    """
    started = time.perf_counter()
    meta = state.get(META_KEY)
    if isinstance(meta, dict) and "weights_crc32" in meta and meta["weights_crc32"] is None:
        meta["weights_crc32"] = weights_checksum(state["network_weights"])
    atomic_torch_save(state, path)
    return time.perf_counter() - started


class BackgroundWriter:
    """Writes checkpoints in a thread, one at a time, newest last; errors surface on the next call.

    `copies` makes the snapshots it writes; their host buffers are reused once written.
    """

    def __init__(self) -> None:
        self.copies = HostCopies()
        self._queue: queue.Queue[tuple[dict[str, Any], Path, Callable[[Path, float], None]] | None] = (
            queue.Queue()
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="nnslurm-checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, state: dict[str, Any], path: Path, on_done: Callable[[Path, float], None]) -> None:
        self._raise_pending()
        self._queue.put((state, path, on_done))

    def write_now(self, state: dict[str, Any], path: Path) -> float:
        """Write in this thread, after every submitted write (call `wait` before the snapshot)."""
        self.wait()
        try:
            return write_checkpoint(state, path)
        finally:
            self.copies.release(state)

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
                try:
                    self.copies.wait()  # a snapshot taken with background=True is complete
                    seconds = write_checkpoint(state, path)
                finally:
                    self.copies.release(state)
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
    checkpoint = _load(path)
    if verify:
        _verify(path, checkpoint)
    return _info(path, checkpoint)


def _load(path: Path) -> dict[str, Any]:
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
    return checkpoint


def _verify(path: Path, checkpoint: Mapping[str, Any]) -> None:
    meta = checkpoint.get(META_KEY) or {}
    if "weights_crc32" in meta and weights_checksum(checkpoint["network_weights"]) != meta["weights_crc32"]:
        raise CheckpointError(f"{path} fails its checksum (weights are corrupt).")


def _info(path: Path, checkpoint: Mapping[str, Any]) -> CheckpointInfo:
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


def candidates(folder: Path) -> list[Path]:
    return [folder / name for name in NAME_RANK if (folder / name).is_file()]


def newest_valid(paths: Iterable[Path]) -> tuple[CheckpointInfo | None, list[tuple[Path, str]]]:
    """The readable checkpoint with the most progress, and the files skipped (path, why).

    Checksums are verified from the most progress down, until one passes: a resume reads the
    weights of the file it takes, not those of older ones (hundreds of MB each for 3d_fullres).
    """
    readable: list[tuple[CheckpointInfo, dict[str, Any]]] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            checkpoint = _load(path)
            readable.append((_info(path, checkpoint), checkpoint))
        except CheckpointError as error:
            logger.warning("skipping %s: %s", path, error)
            skipped.append((path, str(error)))
    for info, checkpoint in sorted(readable, key=lambda pair: pair[0].sort_key, reverse=True):
        try:
            _verify(info.path, checkpoint)
            return info, skipped
        except CheckpointError as error:
            logger.warning("skipping %s: %s", info.path, error)
            skipped.append((info.path, str(error)))
    return None, skipped


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
