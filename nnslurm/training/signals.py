"""Stop signals: the handler records, the training loop acts; a deadline covers phases without boundaries.

SLURM signals every process of a step, and forked data-augmentation workers inherit Python
handlers, so the handler acts only in the process that installed it: workers neither die of
nor act on a stop signal (the trainer shuts them down itself).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

from nnslurm.core.config import parse_signal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopRequest:
    signal: str  # "USR1", "TERM", ...; "ENDTIME": the end-time rule (nnslurm.training.stop_margin), no signal
    received_at: float  # time.time() when the handler ran
    reason: str | None = None  # a stop no signal asked for: why, with the numbers
    measures: Mapping[str, Any] = field(default_factory=dict)  # its numbers, for the event log


class StopMonitor:
    """Installs handlers for the stop signals and records what arrived, in order.

    `phase` names what the training process is doing; if a stop is not acknowledged by the loop
    within `deadline_s` (start-up, final validation: no iteration boundary for a long time), the
    watchdog calls `on_deadline` unless a checkpoint is being written.
    """

    def __init__(
        self,
        signals: Sequence[str],
        deadline_s: float,
        on_deadline: Callable[[StopRequest, str], None],
    ) -> None:
        self._signals = [parse_signal(name) for name in signals]
        self._deadline_s = deadline_s
        self._on_deadline = on_deadline  # called from the watchdog thread, once
        self._owner_pid = os.getpid()
        self._previous: dict[signal.Signals, Any] = {}
        self._received: list[StopRequest] = []
        self._hints: list[StopRequest] = []  # received, but taken as hints (`defer`)
        self._acknowledged = threading.Event()
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.phase = "startup"

    # --- handler side: record and return -------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked worker: ignore, the trainer stops it
        self._received.append(StopRequest(signal.Signals(signum).name.removeprefix("SIG"), time.time()))

    # --- loop side -------------------------------------------------------------------------
    @property
    def request(self) -> StopRequest | None:
        """The first stop signal received and not deferred, or None."""
        return next((r for r in self._received if not any(r is hint for hint in self._hints)), None)

    def defer(self, request: StopRequest) -> None:
        """Take `request` as a hint, not an order (a walltime warning with time to spare: the
        end-time rule decides when to stop); it stays in `received`, the deadline no longer runs."""
        self._hints.append(request)

    @property
    def received(self) -> tuple[StopRequest, ...]:
        return tuple(self._received)

    def request_stop(self, request: StopRequest) -> None:
        """A stop the training process asks of itself (the end-time rule): acted on as a signal."""
        self._received.append(request)

    def acknowledge(self) -> None:
        """The loop has started to act on the request: the deadline no longer applies."""
        self._acknowledged.set()

    def install(self) -> None:
        """Install as early as possible: before this, a stop signal kills the process."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("stop-signal handlers can only be installed from the main thread")
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._watchdog = threading.Thread(target=self._watch, name="nnslurm-stop-deadline", daemon=True)
        self._watchdog.start()

    def ignore_after_restore(self) -> None:
        """Training is over: a late stop signal (the walltime warning a second later) must not
        kill the finished process, so `restore` installs SIG_IGN for the stop signals."""
        for sig in self._previous:
            self._previous[sig] = signal.SIG_IGN

    def restore(self) -> None:
        self._closed.set()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _watch(self) -> None:
        while not self._closed.wait(0.2):
            request = self.request
            if request is None or self._acknowledged.is_set() or self.phase == "saving":
                continue
            if time.time() - request.received_at >= self._deadline_s:
                self._on_deadline(request, self.phase)
                return

    def __enter__(self) -> StopMonitor:
        self.install()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()
