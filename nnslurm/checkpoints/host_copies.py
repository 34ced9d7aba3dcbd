"""The pinned/reused pool of host buffers that a snapshot of the training state is copied into."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch


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


def storage_bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    """A storage's bytes as a flat uint8 tensor on its device (no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _copy_bytes(target: torch.UntypedStorage, source: torch.UntypedStorage) -> None:
    if source.device.type == "cpu":
        np.copyto(storage_bytes(target).numpy(), storage_bytes(source).numpy())
    else:
        storage_bytes(target).copy_(storage_bytes(source), non_blocking=True)


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
