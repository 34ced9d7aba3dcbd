"""What a stop needs, measured as training goes, and the guard the loop asks at each check.

The loop calls `EndTimeGuard.before(upcoming)` at every iteration boundary, between validation
steps and before the epoch-end work. The time since the previous call is the duration of the
phase announced then, so the guard keeps the slowest recent iteration, validation step and epoch
end without the loop timing anything; `checkpoint` adds each checkpoint's write time. When the
end-time rule (nnslurm.slurm.end_time) says stop, the guard records a stop request on the
monitor: the loop then stops exactly as after a signal. Its safety is --end-time-safety scaled to
the limit this start was granted (`scaled_safety`), said once.

The job's walltime warning (--signal) is a hint when it arrives with more time left than a stop
needs (`warning_is_hint`): the guard defers it and stops by the rule before the end instead. Issue
19 measured why: a backfill window of 2 minutes with --signal-delay 120 got the warning at once,
every start stopped after ~12 iterations, and the run never finished.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from nnslurm.core.config import TrainingOptions
from nnslurm.core.timeparse import format_time
from nnslurm.runs.events import checkpoint_write_times, read_events
from nnslurm.slurm.end_time import (
    CONFIRM_TIMEOUT_S,
    END_TIME_SIGNAL,
    SAFETY_SHARE,
    EndTimeDecision,
    EndTimeReader,
    end_time_decision,
    log_grant,
    scaled_safety,
    warning_is_hint,
)
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.training.signals import StopMonitor, StopRequest

logger = logging.getLogger(__name__)

ITERATION = "iteration"
VALIDATION = "validation step"
EPOCH_END = "epoch end"
# How many recent runs of each phase the slowest is taken from (the first iterations after a
# start are slow: data loaders warming up; they age out).
WINDOWS = {ITERATION: 20, VALIDATION: 20, EPOCH_END: 3}
CHECKPOINT_WINDOW = 5


class PhaseTimes:
    """The slowest recent run of each phase and of a checkpoint write, in seconds (0: not seen)."""

    def __init__(self, checkpoints: Iterable[float] = ()) -> None:
        self._phases = {name: deque[float](maxlen=size) for name, size in WINDOWS.items()}
        self._checkpoints = deque[float](checkpoints, maxlen=CHECKPOINT_WINDOW)

    def add(self, phase: str, seconds: float) -> None:
        self._phases[phase].append(seconds)

    def add_checkpoint(self, seconds: float) -> None:
        self._checkpoints.append(seconds)

    def slowest(self, phase: str) -> float:
        """A phase not seen yet (the first epoch end) counts as at least one iteration."""
        seen = self._phases[phase]
        return max(seen) if seen else max(self._phases[ITERATION], default=0.0)

    @property
    def checkpoint_s(self) -> float:
        return max(self._checkpoints, default=0.0)


class EndTimeGuard:
    """The end-time rule in the training loop of one SLURM job."""

    def __init__(
        self,
        reader: EndTimeReader,
        monitor: StopMonitor,
        safety_s: float,
        times: PhaseTimes | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        warning: tuple[str, float] | None = None,
        lag_phases: int = 0,
    ) -> None:
        self.reader = reader
        self.monitor = monitor
        self.safety_s = safety_s
        self.times = times or PhaseTimes()
        self.warning = warning  # the job's warning signal and its lead (s), when nnslurm set them
        # Phases between a decision and the stop: several ranks act one boundary later (the
        # agreement is overlapped with the work, nnslurm.training.agreement), so the rule looks further.
        self.lag_phases = lag_phases
        self._wall = wall
        self._monotonic = monotonic
        self._last: tuple[str, float] | None = None  # the phase announced last, and when
        self._scaled: float | None = None  # the safety scaled to the granted limit, once known
        self._judged: list[StopRequest] = []  # warning signals judged (order or hint), once each
        self._hint: StopRequest | None = None  # the warning taken as a hint

    def checkpoint(self, seconds: float) -> None:
        self.times.add_checkpoint(seconds)

    def before(self, upcoming: str) -> bool:
        """At a check before `upcoming`: whether the rule asks the loop to stop here (it has then
        recorded the stop request on the monitor). A stop already requested is left alone; the
        first check of a process never stops (there is no progress to save yet)."""
        now = self._monotonic()
        first = self._last is None
        if self._last is not None:
            self.times.add(self._last[0], now - self._last[1])
        self._last = (upcoming, now)
        pending = self.monitor.request
        if pending is not None and not self._taken_as_hint(pending, upcoming):
            return False  # a stop requested: the loop stops at this check
        decision = self._decide(upcoming, self.reader.end_time)
        if first:
            # Nothing done by this process yet: the checkpoint it started from holds all there is,
            # so a stop would save nothing, and the next start would meet the same end: a requeue
            # loop without progress (a time limit shorter than the margin, a start-up that took it).
            if decision.stop:
                logger.warning(
                    "end-time rule: only %.1f s left at the first boundary of this start, under the "
                    "margin (%s); training on: a stop now would save nothing",
                    decision.time_left_s or 0.0,
                    decision.reason,
                )
            return False
        if decision.stop:
            # The cached EndTime may be stale (a TimeLimit raised since): ask once more before acting.
            decision = self._decide(upcoming, self.reader.refresh(CONFIRM_TIMEOUT_S))
        if not decision.stop:
            return False
        if decision.too_late:
            logger.warning(
                "end-time rule: a stop needs a checkpoint (%.1f s) plus the safety (%g s), but only %.1f s "
                "are left: it may not be durable before SLURM ends the job (%s)",
                self.times.checkpoint_s,
                self.effective_safety_s,
                decision.time_left_s or 0.0,
                decision.reason,
            )
        logger.warning("end-time rule: stopping before the %s: %s", upcoming, decision.reason)
        self.monitor.request_stop(
            StopRequest(
                END_TIME_SIGNAL,
                self._wall(),
                reason=decision.reason,
                measures=self._measures(upcoming, decision),
            )
        )
        return True

    def close(self) -> None:
        self.reader.close()

    def _taken_as_hint(self, request: StopRequest, upcoming: str) -> bool:
        """Judge the job's warning signal once, against a fresh EndTime: defer it on the monitor
        when it is a hint (`warning_is_hint`). Any other stop request is an order."""
        if (
            self.warning is None
            or request.signal != self.warning[0]
            or any(r is request for r in self._judged)
        ):
            return False
        self._judged.append(request)
        decision = self._decide(upcoming, self.reader.refresh(CONFIRM_TIMEOUT_S))
        if not warning_is_hint(decision, self.warning[1]):
            return False
        self.monitor.defer(request)
        self._hint = request
        logger.warning(
            "SIG%s (the walltime warning, lead %g s) with %.1f s left, more than a stop needs "
            "(%.1f s): a hint; the end-time rule stops training before the end (%s)",
            request.signal,
            self.warning[1],
            decision.time_left_s or 0.0,
            decision.margin_s,
            decision.reason,
        )
        return True

    @property
    def effective_safety_s(self) -> float:
        """--end-time-safety scaled to this start's granted limit (fixed, and said, once known)."""
        if self._scaled is not None:
            return self._scaled
        granted = self.reader.granted_s
        if granted is None:
            return self.safety_s
        self._scaled = scaled_safety(self.safety_s, granted)
        if self._scaled < self.safety_s:
            logger.info(
                "end-time rule: safety %g s instead of --end-time-safety %g s: at most %d %% of the "
                "%s this start was granted, so that a short limit still trains",
                self._scaled,
                self.safety_s,
                round(SAFETY_SHARE * 100),
                format_time(round(granted)),
            )
        return self._scaled

    def _next_s(self, upcoming: str) -> float:
        """The time until the loop can stop after a decision before `upcoming`: that phase, and
        for each phase of lag the slowest phase of any kind."""
        later = max(self.times.slowest(phase) for phase in WINDOWS) if self.lag_phases else 0.0
        return self.times.slowest(upcoming) + self.lag_phases * later

    def _decide(self, upcoming: str, end_time: float | None) -> EndTimeDecision:
        return end_time_decision(
            self._wall(),
            end_time,
            upcoming,
            self._next_s(upcoming),
            self.times.checkpoint_s,
            self.effective_safety_s,
        )

    def _measures(self, upcoming: str, decision: EndTimeDecision) -> dict[str, float | str | None]:
        return {
            "end_time": self.reader.end_time,
            "time_left_s": None if decision.time_left_s is None else round(decision.time_left_s, 2),
            "margin_s": round(decision.margin_s, 2),
            "upcoming": upcoming,
            "next_s": round(self._next_s(upcoming), 3),
            "checkpoint_s": round(self.times.checkpoint_s, 3),
            "safety_s": self.effective_safety_s,
            **(
                {"after_signal": self._hint.signal, "signal_at": self._hint.received_at} if self._hint else {}
            ),
        }


def end_time_guard(
    options: TrainingOptions,
    monitor: StopMonitor,
    run_folder: Path,
    env: SlurmEnvironment | None = None,
    lag_phases: int = 0,
) -> EndTimeGuard | None:
    """The started guard of a training inside a SLURM job; None outside SLURM (the local executor
    has its own timeout and signal) or with --no-end-time-stop. Seeded with the run's recent
    checkpoint write times, so a resumed start knows what a stop costs from its first check."""
    env = env or SlurmEnvironment.from_environ()
    job_id = env.qualified_id
    granted = log_grant(env)  # submitted with --time-min: say what this start was granted
    if options.end_time_safety_s is None or job_id is None:
        return None
    recent = checkpoint_write_times(read_events(run_folder))[-CHECKPOINT_WINDOW:]
    reader = EndTimeReader(job_id, options.end_time_refresh_s, granted_s=granted)
    reader.start()
    logger.info(
        "end-time rule: job %s stops when the time left falls under the slowest next phase + a stop "
        "checkpoint + %g s; EndTime re-read every %g s",
        job_id,
        options.end_time_safety_s,
        options.end_time_refresh_s,
    )
    warning = (
        (env.warning_signal, float(env.signal_delay_s)) if env.warning_signal and env.signal_delay_s else None
    )
    return EndTimeGuard(
        reader, monitor, options.end_time_safety_s, PhaseTimes(recent), warning=warning, lag_phases=lag_phases
    )
