"""The checkpoint writer: completes a snapshot (its weights checksum) and writes it, in a thread."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnslurm.checkpoints.atomic import atomic_torch_save
from nnslurm.checkpoints.fileformat import FORMAT_VERSION, META_KEY, weights_checksum
from nnslurm.checkpoints.host_copies import HostCopies


def write_checkpoint(state: dict[str, Any], path: Path) -> float:
    """Complete a snapshot (its weights checksum, left to the writer) and write it atomically.

    The checksum is computed here, not when the loop takes the snapshot: the snapshot is a private
    copy, so the writer thread can checksum it while training goes on. The format that defines the
    checksum is recorded with it. Returns seconds taken.
    """
    started = time.perf_counter()
    meta = state.get(META_KEY)
    if isinstance(meta, dict) and "weights_crc32" in meta and meta["weights_crc32"] is None:
        meta["format"] = FORMAT_VERSION
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
