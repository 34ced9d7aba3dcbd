"""The end-time rule: stop before SLURM ends the job, with no warning signal needed.

Inside a job, scontrol's EndTime is the job's real end: StartTime + TimeLimit, changed by
`scontrol update TimeLimit=...`, by backfill with --time-min, and on preemption (PreemptTime +
GraceTime). `end_time_decision` is the pure rule (evidence in, decision out); `EndTimeReader`
caches EndTime and re-reads it off the training loop's path, through the one subprocess seam.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nnslurm.core.errors import CommandError, SchedulerError
from nnslurm.core.timeparse import describe
from nnslurm.slurm.commands import JobInfo, job_info

logger = logging.getLogger(__name__)

# The "signal" of a stop the end-time rule asked for (no signal arrived): StopRequest.signal.
END_TIME_SIGNAL = "ENDTIME"
DEFAULT_SAFETY_S = 60.0
DEFAULT_REFRESH_S = 300.0
# How long a read may take: in the background, and before acting on a stop (the cached EndTime
# may be stale), where the loop waits for it: short, not scontrol's usual 30 s.
READ_TIMEOUT_S = 15.0
CONFIRM_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class EndTimeDecision:
    stop: bool  # stop at this boundary
    time_left_s: float | None  # until EndTime (None: unknown end, the rule is off)
    margin_s: float  # what continuing needs: the next phase + a stop checkpoint + the safety
    too_late: bool  # less left than a stop checkpoint plus the safety: it may not be durable in time
    reason: str  # the numbers, in words, for the log and the event record


def end_time_decision(
    now: float, end_time: float | None, upcoming: str, next_s: float, checkpoint_s: float, safety_s: float
) -> EndTimeDecision:
    """Stop now when the time left to `end_time` (both time.time() seconds) would not cover the
    phase `upcoming` (at most `next_s`, its slowest recent run), then a stop checkpoint
    (`checkpoint_s`) and `safety_s`: the next chance to stop would come too late."""
    margin = max(0.0, next_s) + max(0.0, checkpoint_s) + max(0.0, safety_s)
    if end_time is None:
        return EndTimeDecision(False, None, margin, False, "the job's end is unknown")
    left = end_time - now
    numbers = (
        f"EndTime {datetime.fromtimestamp(end_time).isoformat(timespec='seconds')}, {left:.1f} s left, "
        f"margin {margin:.1f} s = next {upcoming} {next_s:.1f} s + checkpoint {checkpoint_s:.1f} s "
        f"+ safety {safety_s:g} s"
    )
    if left > margin:
        return EndTimeDecision(False, left, margin, False, numbers)
    too_late = left < checkpoint_s + safety_s
    return EndTimeDecision(True, left, margin, too_late, numbers)


class EndTimeReader:
    """EndTime of one job, cached; `start` re-reads it every `refresh_s` in a daemon thread.

    An unreadable scontrol keeps the last EndTime read (the limit still holds while slurmctld is
    away); before any was read the end is unknown. Either way one warning, not one per read.
    """

    def __init__(
        self,
        job_id: str,
        refresh_s: float = DEFAULT_REFRESH_S,
        read: Callable[[str, float], JobInfo] = job_info,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.refresh_s = refresh_s
        self._read = read
        self._clock = clock
        self._end: float | None = None
        self._due = float("-inf")
        self._warned = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def end_time(self) -> float | None:
        """EndTime as time.time() seconds, or None (unknown: not read yet, unlimited, unreadable)."""
        return self._end

    def poll(self) -> bool:
        """Re-read EndTime if a refresh is due; whether it asked."""
        if self._clock() < self._due:
            return False
        self.refresh()
        return True

    def refresh(self, timeout: float = READ_TIMEOUT_S) -> float | None:
        """Ask scontrol now; the (possibly unchanged) EndTime."""
        self._due = self._clock() + self.refresh_s
        try:
            info = self._read(self.job_id, timeout)
        except (CommandError, SchedulerError) as error:
            if not self._warned:
                self._warned = True
                kept = "unknown" if self._end is None else "kept at the last one read"
                logger.warning(
                    "end-time rule: cannot read job %s's EndTime (%s); end %s", self.job_id, error, kept
                )
            return self._end
        end = info.end_time.timestamp() if info.end_time is not None else None
        if end != self._end:
            shown = "unknown" if end is None else info.end_time.isoformat() if info.end_time else ""
            left = "" if end is None else f", {describe(max(0.0, end - time.time()))} left"
            logger.info(
                "end-time rule: job %s ends at %s%s (JobState=%s)", self.job_id, shown, left, info.state
            )
        self._end = end
        return end

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nnslurm-end-time", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        tick = min(1.0, self.refresh_s)
        while True:
            try:
                self.poll()
            except Exception:  # never let a reader failure reach the training; the rule just stays as is
                logger.exception("end-time rule: reading EndTime failed")
            if self._closed.wait(tick):
                return
