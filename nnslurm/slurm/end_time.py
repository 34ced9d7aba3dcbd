"""The end-time rule: stop before SLURM ends the job, with no warning signal needed.

Inside a job, scontrol's EndTime is the job's real end: StartTime + TimeLimit, changed by
`scontrol update TimeLimit=...`, by backfill with --time-min, and on preemption (PreemptTime +
GraceTime). `end_time_decision` is the pure rule (evidence in, decision out); `EndTimeReader`
caches EndTime and re-reads it off the training loop's path, through the one subprocess seam.

The rule never livelocks: the safety is scaled to what a start was granted (`scaled_safety`), so a
short limit (a backfill window, --time=1) still trains most of its time, and a limit too short for
any progress is refused at submission (`check_limits`, the floor `shortest_limit`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nnslurm.core.errors import CommandError, SchedulerError, UsageError
from nnslurm.core.timeparse import describe, format_time, slurm_minutes
from nnslurm.slurm.commands import JobInfo, job_info
from nnslurm.slurm.environment import SlurmEnvironment

logger = logging.getLogger(__name__)

# The "signal" of a stop the end-time rule asked for (no signal arrived): StopRequest.signal.
END_TIME_SIGNAL = "ENDTIME"
DEFAULT_SAFETY_S = 60.0
DEFAULT_REFRESH_S = 300.0
# How long a read may take: in the background, and before acting on a stop (the cached EndTime
# may be stale), where the loop waits for it: short, not scontrol's usual 30 s.
READ_TIMEOUT_S = 15.0
CONFIRM_TIMEOUT_S = 5.0
# The most of a start's granted time the safety may take. Measured (issue 19): --time=1 against the
# 60 s safety stopped every start at its first boundary, 21 starts of one iteration, never finished.
# A quarter keeps three quarters of any start for training, and leaves the default 60 s whole from
# a 4-minute limit up (and the dev cluster's 15 s at its 1-minute tests).
SAFETY_SHARE = 0.25
# What a start costs besides training, where nothing was measured: imports, plans and data loaders
# of a small run until its first iteration, and one checkpoint write. Only the floor uses them.
START_UP_ESTIMATE_S = 15.0
CHECKPOINT_ESTIMATE_S = 5.0
# SLURM may send --signal up to this much before the lead asked for (sbatch(1): "may be sent up to
# 60 seconds earlier than specified").
SIGNAL_EARLY_S = 60.0


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


def warning_is_hint(decision: EndTimeDecision, signal_delay_s: float | None) -> bool:
    """Whether the job's warning signal, judged by `decision` (the rule at the signal, EndTime
    re-read: a preemption moves it to PreemptTime + GraceTime), is a hint rather than an order.

    A hint when a stop is not due yet and the signal is recognisably the warning before that end:
    the time left is within its lead (`--signal` delay, plus SLURM's 60 s). A signal with more time
    left (scancel --signal by hand; a preemption whose end did not move) stays an order, and so
    does any signal when the lead or the end is unknown: nothing is ever risked on a guess."""
    if signal_delay_s is None or decision.stop or decision.time_left_s is None:
        return False
    return decision.time_left_s <= signal_delay_s + SIGNAL_EARLY_S


def scaled_safety(safety_s: float, granted_s: float | None) -> float:
    """The safety of a start granted `granted_s` seconds (EndTime - its own StartTime): at most
    SAFETY_SHARE of it, since a start whose whole time is under the margin gains nothing by
    stopping at once (the next start meets the same limit). Unknown grant: the safety as given."""
    if granted_s is None or granted_s <= 0:
        return safety_s
    return min(safety_s, SAFETY_SHARE * granted_s)


def shortest_limit(
    safety_s: float | None,
    start_up_s: float = START_UP_ESTIMATE_S,
    checkpoint_s: float = CHECKPOINT_ESTIMATE_S,
) -> int:
    """The shortest time limit (whole seconds) in which a start can make progress: its start-up and
    a stop checkpoint, plus the safety scaled to that limit (None: the end-time rule is off).

    The smallest L with L - scaled_safety(safety_s, L) >= start_up_s + checkpoint_s (that left side
    only grows with L)."""
    need = max(0.0, start_up_s) + max(0.0, checkpoint_s)
    safety = max(0.0, safety_s or 0.0)
    at_share = need / (1.0 - SAFETY_SHARE)  # where the scaled safety is the share of L
    limit = at_share if SAFETY_SHARE * at_share <= safety else need + safety
    return math.ceil(limit - 1e-9)


def check_limits(
    time_s: int,
    time_min_s: int | None,
    safety_s: float | None,
    signal_delay_s: int | None = None,
    start_up_s: float = START_UP_ESTIMATE_S,
    checkpoint_s: float = CHECKPOINT_ESTIMATE_S,
) -> None:
    """Refuse a --time, or a --time-min (SLURM may grant that little), in which no start can make
    progress: every start would stop before its first checkpoint and requeue until --max-requeues
    are spent. Limits are taken as SLURM grants them, in whole minutes. `safety_s`: the end-time
    rule's (None: off); `signal_delay_s`: the warning signal's (None: no signal); a start's
    start-up and checkpoint times: estimates unless measured. UsageError saying what to change.

    With the estimates no limit of a minute or more fails the first test (a minute leaves 45 s
    after the scaled safety). The warning signal's test applies only with the end-time rule off:
    measured, a --time-min of 2 with the default --signal-delay 120 got the signal at once in every
    start; with the rule on, such a warning is a hint (`warning_is_hint`) and the rule stops the job."""
    need = start_up_s + checkpoint_s
    for flag, seconds in (("--time", time_s), ("--time-min", time_min_s)):
        if seconds is None:
            continue
        granted = slurm_minutes(seconds) * 60
        floor = shortest_limit(safety_s, start_up_s, checkpoint_s)
        if granted < floor:
            rule = (
                "" if safety_s is None else f" + the end-time safety ({scaled_safety(safety_s, floor):g} s)"
            )
            raise UsageError(
                f"{flag} {format_time(seconds)} is too short for a start to make progress: a start needs "
                f"its start-up (~{start_up_s:g} s) + a checkpoint (~{checkpoint_s:g} s){rule}, at least "
                f"{format_time(floor)}.",
                hint=f"raise {flag} to {format_time(floor)} or more.",
            )
        if signal_delay_s is not None and safety_s is None and granted < signal_delay_s + need:
            enough = slurm_minutes(math.ceil(signal_delay_s + need)) * 60
            raise UsageError(
                f"{flag} {format_time(seconds)} is too short for the warning signal, sent {signal_delay_s} s "
                f"before the limit: a start granted {format_time(granted)} would get it about "
                f"{max(0, granted - signal_delay_s)} s in, before its start-up (~{start_up_s:g} s) and a "
                "checkpoint, and stop every time without progress.",
                hint=f"raise {flag} to {format_time(enough)} or more, or lower --signal-delay, or "
                "turn the end-time rule on again (it takes such a warning as a hint and stops the job "
                "before its end).",
            )


def grant_line(granted_s: float, asked_s: int | None) -> str | None:
    """What a start submitted with --time-min says once about its limit: "started in a backfill
    window: limit 0:04:00 of 0:30:00 asked", or None when the whole --time was granted (or no
    --time-min: nothing to say)."""
    if asked_s is None or granted_s >= asked_s - 1:  # SLURM's times are whole seconds
        return None
    return (
        f"started in a backfill window: limit {format_time(round(granted_s))} of {format_time(asked_s)} asked"
    )


def granted_limit(
    env: SlurmEnvironment, read: Callable[[str, float], JobInfo] = job_info, timeout: float = READ_TIMEOUT_S
) -> float | None:
    """This start's granted limit in seconds: SLURM_JOB_END_TIME - SLURM_JOB_START_TIME where SLURM
    exports them (>= 23.02), else scontrol's TimeLimit (or EndTime - StartTime); None: unknown."""
    if env.start_time is not None and env.end_time is not None and env.end_time > env.start_time:
        return env.end_time - env.start_time
    job_id = env.qualified_id
    if job_id is None:
        return None
    try:
        info = read(job_id, timeout)
    except (CommandError, SchedulerError) as error:
        logger.warning("job %s: cannot read the granted time limit (%s)", job_id, error)
        return None
    return granted_of(info)


def granted_of(info: JobInfo) -> float | None:
    """The limit a job's start was granted, by scontrol: TimeLimit, else EndTime - StartTime."""
    if info.time_limit_s is not None:
        return float(info.time_limit_s)
    if info.end_time is not None and info.start_time is not None:
        return (info.end_time - info.start_time).total_seconds()
    return None


def log_grant(env: SlurmEnvironment, read: Callable[[str, float], JobInfo] = job_info) -> float | None:
    """At a start of a job submitted with --time-min: read the limit SLURM granted and say it once
    when it is less than the --time asked. The grant (None: not such a job, or unknown)."""
    if env.time_asked_s is None or not env.in_slurm:
        return None
    granted = granted_limit(env, read)
    if granted is None:
        return None
    line = grant_line(granted, env.time_asked_s)
    if line is not None:
        logger.warning("job %s: %s", env.qualified_id, line)
    else:
        logger.info("job %s: granted the whole --time %s", env.qualified_id, format_time(env.time_asked_s))
    return granted


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
        granted_s: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.refresh_s = refresh_s
        self._read = read
        self._clock = clock
        self._granted = granted_s
        self._end: float | None = None
        self._due = float("-inf")
        self._warned = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def end_time(self) -> float | None:
        """EndTime as time.time() seconds, or None (unknown: not read yet, unlimited, unreadable)."""
        return self._end

    @property
    def granted_s(self) -> float | None:
        """The limit this start was granted (given, or by the first read that told it), or None."""
        return self._granted

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
        if self._granted is None:
            self._granted = granted_of(info)
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
