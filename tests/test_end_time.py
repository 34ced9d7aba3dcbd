"""The end-time rule: the pure decision, the EndTime reader (fake scontrol, injected clock), the
guard the training loop asks, and what the after-stop decision makes of a stop it asked for."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

import pytest
from support import FakeCluster, patience, wait_for

from nnslurm.core.config import TrainingOptions
from nnslurm.runs.events import read_events
from nnslurm.runs.outcome import Stopped
from nnslurm.scheduler.after_stop import after_stop
from nnslurm.scheduler.policy import StopEvidence, decide
from nnslurm.slurm import commands
from nnslurm.slurm.end_time import END_TIME_SIGNAL, EndTimeReader, end_time_decision
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.stop_kinds import StopKind
from nnslurm.training.signals import StopMonitor, StopRequest
from nnslurm.training.stop_margin import (
    EPOCH_END,
    ITERATION,
    VALIDATION,
    EndTimeGuard,
    PhaseTimes,
    end_time_guard,
)

END = datetime(2026, 12, 1, 12, 0, 0)
END_S = END.timestamp()


def scontrol(end: str = END.isoformat(), **changes: str) -> str:
    fields = {
        "JobId": "15",
        "JobState": "RUNNING",
        "Reason": "None",
        "Restarts": "0",
        "TimeLimit": "00:02:00",
        "RunTime": "00:00:30",
        "StartTime": "2026-12-01T11:58:00",
        "EndTime": end,
        "PreemptTime": "None",
        **changes,
    }
    return " ".join(f"{key}={value}" for key, value in fields.items()) + "\n"


# --- the pure rule -------------------------------------------------------------------------------

# (seconds left, next phase, checkpoint, safety) -> stop?, too late?
DECISIONS = [
    pytest.param(300.0, 1.0, 2.0, 60.0, False, False, id="plenty-left"),
    pytest.param(62.5, 1.0, 2.0, 60.0, True, False, id="next-phase-would-eat-the-margin"),
    pytest.param(63.0, 1.0, 2.0, 60.0, True, False, id="exactly-the-margin"),
    pytest.param(63.1, 1.0, 2.0, 60.0, False, False, id="just-over-the-margin"),
    pytest.param(100.0, 45.0, 2.0, 60.0, True, False, id="a-long-validation-step-ahead"),
    pytest.param(61.0, 1.0, 2.0, 60.0, True, True, id="checkpoint-and-safety-no-longer-fit"),
    pytest.param(-5.0, 1.0, 2.0, 60.0, True, True, id="past-the-end-killwait"),
    pytest.param(2.5, 1.0, 2.0, 0.0, True, False, id="no-safety"),
]


@pytest.mark.parametrize(("left", "next_s", "checkpoint_s", "safety_s", "stop", "too_late"), DECISIONS)
def test_end_time_decision(
    left: float, next_s: float, checkpoint_s: float, safety_s: float, stop: bool, too_late: bool
) -> None:
    decision = end_time_decision(END_S - left, END_S, ITERATION, next_s, checkpoint_s, safety_s)
    assert (decision.stop, decision.too_late) == (stop, too_late)
    assert decision.time_left_s == pytest.approx(left)
    assert decision.margin_s == pytest.approx(next_s + checkpoint_s + safety_s)
    # the numbers, in words: the end time, the time left, the margin and its parts
    assert decision.reason.startswith("EndTime 2026-12-01T12:00:00")
    assert f"{left:.1f} s left" in decision.reason
    assert (
        f"margin {next_s + checkpoint_s + safety_s:.1f} s = next iteration {next_s:.1f} s" in decision.reason
    )
    assert f"checkpoint {checkpoint_s:.1f} s + safety {safety_s:g} s" in decision.reason


def test_unknown_end_never_stops() -> None:
    decision = end_time_decision(END_S, None, ITERATION, 1.0, 2.0, 60.0)
    assert (decision.stop, decision.time_left_s) == (False, None)


# --- the reader ----------------------------------------------------------------------------------


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reader_refreshes_only_when_due_and_follows_a_changed_end() -> None:
    later = END.replace(minute=5).isoformat()
    fake = FakeCluster(answers={"scontrol show": [scontrol(), scontrol(), scontrol(end=later)]})
    clock = Ticks()
    reader = EndTimeReader("15", refresh_s=60.0, clock=clock)
    with commands.use_runner(fake):
        assert reader.end_time is None  # nothing read yet: unknown
        assert reader.poll() and reader.end_time == END_S
        clock.now = 59.0
        assert not reader.poll()
        clock.now = 60.0
        assert reader.poll() and reader.end_time == END_S
        clock.now = 125.0
        assert reader.poll() and reader.end_time == END.replace(minute=5).timestamp()  # TimeLimit raised
    assert fake.ran("scontrol show") == [["scontrol", "show", "job", "-o", "15"]] * 3


def test_reader_unlimited_job_has_no_end() -> None:
    fake = FakeCluster(answers={"scontrol show": [scontrol(end="Unknown", TimeLimit="UNLIMITED")]})
    with commands.use_runner(fake):
        assert EndTimeReader("15").refresh() is None


def test_scontrol_errors_keep_the_last_end_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    clock = Ticks()
    reader = EndTimeReader("15", refresh_s=10.0, clock=clock)
    with commands.use_runner(fake):
        reader.poll()
    failing = FakeCluster(
        fail={"scontrol show": (1, "slurm_load_jobs error: Unable to contact slurm controller")}
    )
    with commands.use_runner(failing), caplog.at_level(logging.WARNING):
        for step in range(1, 4):
            clock.now = 10.0 * step
            assert reader.poll()
    assert reader.end_time == END_S  # the limit still holds while slurmctld is away
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Unable to contact slurm controller" in warnings[0]
    assert "kept at the last one read" in warnings[0]
    assert len(failing.ran("scontrol show")) == 3


def test_scontrol_errors_before_any_read_leave_the_end_unknown(caplog: pytest.LogCaptureFixture) -> None:
    failing = FakeCluster(fail={"scontrol show": (1, "Invalid job id specified")})
    with commands.use_runner(failing), caplog.at_level(logging.WARNING):
        assert EndTimeReader("15").refresh() is None
    assert "end unknown" in caplog.text


def test_reader_thread_reads_at_start_and_stops_on_close() -> None:
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    reader = EndTimeReader("15", refresh_s=0.05)
    before = set(threading.enumerate())
    with commands.use_runner(fake):
        reader.start()
        (thread,) = set(threading.enumerate()) - before  # the reader's own thread
        try:
            wait_for(lambda: len(fake.ran("scontrol show")) >= 3, patience(2), "three reads of EndTime")
            assert reader.end_time == END_S
        finally:
            reader.close()
        # closed: the thread ends within a tick, so nothing asks scontrol any more
        thread.join(patience(2))
        assert not thread.is_alive(), "the end-time reader's thread went on after close()"
        assert len(fake.ran("scontrol show")) >= 3


# --- the guard in the loop -----------------------------------------------------------------------


class FixedReader(EndTimeReader):
    """An EndTime that is what the test says; `refresh` counts the confirmations."""

    def __init__(self, end: float | None) -> None:
        super().__init__("15")
        self.end = end
        self.refreshes = 0

    @property
    def end_time(self) -> float | None:
        return self.end

    def refresh(self, timeout: float = 0.0) -> float | None:
        self.refreshes += 1
        return self.end


def guard_at(
    reader: FixedReader, safety_s: float = 10.0, checkpoints: tuple[float, ...] = (2.0,)
) -> tuple[EndTimeGuard, StopMonitor, list[float]]:
    """The guard with a clock list: [0] the time (both clocks), [1] the wall clock when set apart."""
    clock = [END_S - 1000.0, 0.0]
    monitor = StopMonitor(["USR1"], 20.0, lambda request, phase: None)
    guard = EndTimeGuard(
        reader,
        monitor,
        safety_s,
        PhaseTimes(checkpoints),
        wall=lambda: clock[1] or clock[0],
        monotonic=lambda: clock[0],
    )
    return guard, monitor, clock


def test_guard_measures_phases_between_calls() -> None:
    guard, _, clock = guard_at(FixedReader(None))
    for seconds in (5.0, 1.0, 1.5):  # warm-up, then steady iterations
        guard.before(ITERATION)
        clock[0] += seconds
    guard.before(VALIDATION)
    clock[0] += 3.0
    guard.before(EPOCH_END)
    clock[0] += 0.5
    guard.before(ITERATION)
    times = guard.times
    assert times.slowest(ITERATION) == 5.0
    assert (times.slowest(VALIDATION), times.slowest(EPOCH_END)) == (3.0, 0.5)
    for _ in range(25):  # the warm-up iteration ages out of the window
        clock[0] += 1.0
        guard.before(ITERATION)
    assert times.slowest(ITERATION) == 1.0 and times.slowest(VALIDATION) == 3.0
    assert PhaseTimes().slowest(EPOCH_END) == 0.0
    fresh = PhaseTimes()
    fresh.add(ITERATION, 2.0)
    assert fresh.slowest(EPOCH_END) == 2.0  # not seen yet: at least one iteration
    guard.checkpoint(4.0)
    assert times.checkpoint_s == 4.0


def test_guard_requests_the_stop_with_the_numbers() -> None:
    reader = FixedReader(END_S)
    guard, monitor, clock = guard_at(reader, safety_s=10.0)
    guard.before(ITERATION)
    clock[0] += 1.0
    assert not guard.before(ITERATION) and monitor.request is None  # 999 s left
    clock[0] += 1.0
    clock[1] = END_S - 12.5  # < 1 s iteration + 2 s checkpoint + 10 s safety
    assert guard.before(ITERATION)
    request = monitor.request
    assert request is not None and request.signal == END_TIME_SIGNAL
    assert reader.refreshes == 1  # confirmed with scontrol before acting
    assert request.reason is not None and "12.5 s left" in request.reason
    assert request.measures["time_left_s"] == 12.5
    assert request.measures["margin_s"] == pytest.approx(1.0 + 2.0 + 10.0)
    assert (request.measures["checkpoint_s"], request.measures["safety_s"]) == (2.0, 10.0)
    assert not guard.before(ITERATION)  # once requested, the loop acts; no second request
    assert len(monitor.received) == 1


def test_guard_leaves_a_signal_alone() -> None:
    guard, monitor, clock = guard_at(FixedReader(END_S))
    monitor.request_stop(StopRequest("USR1", clock[0]))
    clock[0] = END_S - 1.0
    assert not guard.before(EPOCH_END)
    assert [r.signal for r in monitor.received] == ["USR1"]


def warned_guard(reader: FixedReader, lead_s: float = 120.0) -> tuple[EndTimeGuard, StopMonitor, list[float]]:
    """guard_at with the job's warning signal known (USR1, `lead_s` before the end)."""
    guard, monitor, clock = guard_at(reader, safety_s=10.0)
    guard.warning = ("USR1", lead_s)
    return guard, monitor, clock


def test_a_walltime_warning_with_time_to_spare_is_a_hint(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 19: a backfill window of 2 minutes got its 120 s warning at once; every start stopped
    after a few iterations and the run never finished. With time to spare the rule decides."""
    reader = FixedReader(END_S)
    guard, monitor, clock = warned_guard(reader)
    guard.before(ITERATION)
    clock[1] = END_S - 99.0  # the warning came 100 s before the end: a stop needs 1 + 2 + 10 s
    monitor.request_stop(StopRequest("USR1", clock[1] - 1.0))
    with caplog.at_level(logging.WARNING):
        clock[0] += 1.0
        assert not guard.before(ITERATION)
    assert monitor.request is None, "the warning was acted on as an order"
    assert reader.refreshes == 1  # judged against a fresh EndTime (a preemption moves it)
    assert "SIGUSR1 (the walltime warning, lead 120 s) with 99.0 s left" in caplog.text
    clock[0] += 1.0
    clock[1] += 1.0
    assert not guard.before(ITERATION) and reader.refreshes == 1  # judged once
    clock[0] += 1.0
    clock[1] = END_S - 12.0  # now the rule stops, naming the warning it deferred
    assert guard.before(ITERATION)
    request = monitor.request
    assert request is not None and request.signal == END_TIME_SIGNAL
    assert request.measures["after_signal"] == "USR1"
    assert [r.signal for r in monitor.received] == ["USR1", END_TIME_SIGNAL]


def test_a_warning_is_an_order_when_a_stop_is_due_or_it_is_not_the_warning() -> None:
    # A preemption moved the end to now + GraceTime, under the margin: stop at once.
    reader = FixedReader(END_S)
    guard, monitor, clock = warned_guard(reader)
    guard.before(ITERATION)
    clock[0] += 1.0
    monitor.request_stop(StopRequest("USR1", clock[0]))
    reader.end = clock[0] + 8.0  # what scontrol says after the preemption
    assert not guard.before(ITERATION)
    assert monitor.request is not None and monitor.request.signal == "USR1"
    # Far more time left than the warning's lead: scancel --signal by hand (or an end that did
    # not move): an order.
    guard, monitor, clock = warned_guard(FixedReader(END_S))
    guard.before(ITERATION)
    monitor.request_stop(StopRequest("USR1", clock[0]))
    clock[0] += 1.0  # 999 s left, lead 120 s
    guard.before(ITERATION)
    assert monitor.request is not None and monitor.request.signal == "USR1"
    # TERM, or a warning whose lead nnslurm does not know: orders.
    for signal, lead in (("TERM", 120.0), ("USR1", None)):
        guard, monitor, clock = guard_at(FixedReader(END_S))
        guard.warning = None if lead is None else ("USR1", lead)
        guard.before(ITERATION)
        clock[0] += 1.0
        clock[1] = END_S - 100.0
        monitor.request_stop(StopRequest(signal, clock[1]))
        guard.before(ITERATION)
        assert monitor.request is not None and monitor.request.signal == signal


def test_a_deferred_warning_does_not_start_the_stop_deadline() -> None:
    monitor = StopMonitor(["USR1"], 0.0, lambda request, phase: None)
    request = StopRequest("USR1", 0.0)
    monitor.request_stop(request)
    monitor.defer(request)
    assert monitor.request is None and monitor.received == (request,)  # the watchdog's view
    monitor.request_stop(StopRequest("TERM", 1.0))
    assert monitor.request is not None and monitor.request.signal == "TERM"


def test_a_stale_end_is_confirmed_before_stopping() -> None:
    """The cached EndTime says stop, scontrol says the limit was raised: train on."""
    reader = FixedReader(END_S)
    guard, monitor, clock = guard_at(reader)
    clock[0] = END_S - 5.0

    def raised(timeout: float = 0.0) -> float:
        reader.end = END_S + 3600
        return reader.end

    reader.refresh = raised  # type: ignore[method-assign]
    assert not guard.before(ITERATION) and monitor.request is None


def test_guard_warns_when_a_stop_no_longer_fits(caplog: pytest.LogCaptureFixture) -> None:
    guard, monitor, clock = guard_at(FixedReader(END_S), safety_s=10.0, checkpoints=(30.0,))
    guard.before(ITERATION)
    clock[0] = END_S - 20.0
    with caplog.at_level(logging.WARNING):
        assert guard.before(VALIDATION)
    assert monitor.request is not None  # stopping anyway: the sooner, the likelier it is durable
    assert (
        "a stop needs a checkpoint (30.0 s) plus the safety (10 s), but only 20.0 s are left" in caplog.text
    )


def test_the_first_boundary_of_a_start_never_stops(caplog: pytest.LogCaptureFixture) -> None:
    """A time limit under the margin must not requeue the job in a loop that makes no progress."""
    guard, monitor, clock = guard_at(FixedReader(END_S), safety_s=60.0)
    clock[0] = END_S - 30.0  # the whole start is shorter than the safety
    with caplog.at_level(logging.WARNING):
        assert not guard.before(ITERATION)
    assert monitor.request is None
    assert "only 30.0 s left at the first boundary of this start" in caplog.text
    clock[0] += 1.0  # one iteration done: now there is something to save
    assert guard.before(ITERATION)
    assert monitor.request is not None


def test_no_guard_outside_slurm_or_when_turned_off(tmp_path: Path) -> None:
    monitor = StopMonitor(["USR1"], 20.0, lambda request, phase: None)
    outside = SlurmEnvironment.from_environ({})
    assert end_time_guard(TrainingOptions(), monitor, tmp_path, outside) is None
    local = SlurmEnvironment.from_environ({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "7"})
    assert end_time_guard(TrainingOptions(), monitor, tmp_path, local) is None
    in_job = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15"})
    assert end_time_guard(TrainingOptions(end_time_safety_s=None), monitor, tmp_path, in_job) is None


def test_guard_in_a_job_reads_the_run_s_checkpoint_times(tmp_path: Path) -> None:
    from nnslurm.runs.events import Event, EventLog

    log = EventLog(tmp_path)
    for seconds in (0.5, 3.25, 1.0):
        log.append(Event.CHECKPOINT, path="checkpoint_latest.pth", seconds=seconds, reason="periodic")
    monitor = StopMonitor(["USR1"], 20.0, lambda request, phase: None)
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    with commands.use_runner(fake):
        guard = end_time_guard(
            TrainingOptions(end_time_safety_s=15.0),
            monitor,
            tmp_path,
            SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15"}),
        )
        assert guard is not None
        guard.close()
    assert (guard.safety_s, guard.times.checkpoint_s, guard.reader.job_id) == (15.0, 3.25, "15")


# --- what the stop means -------------------------------------------------------------------------

REASON = (
    "EndTime 2026-12-01T12:00:00, 12.5 s left, margin 13.0 s = next iteration 1.0 s + checkpoint 2.0 s "
    "+ safety 10 s"
)
JOB = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15", "NNSLURM_WARNING_SIGNAL": "USR1"})
NO_WARNING = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15"})
AT = END.replace(second=0, minute=59)  # 60 s before the end


@pytest.mark.parametrize(
    ("env", "line", "kind", "requeue_self"),
    [
        pytest.param(JOB, scontrol(), StopKind.WALLTIME, True, id="running-with-a-warning-signal-set"),
        pytest.param(NO_WARNING, scontrol(), StopKind.WALLTIME, True, id="running-no-signal-at-all"),
        pytest.param(JOB, None, StopKind.WALLTIME, True, id="scontrol-unreadable"),
        pytest.param(
            JOB,
            scontrol(PreemptTime="2026-12-01T11:59:40"),
            StopKind.PREEMPTION,
            False,
            id="preempted-endtime-is-the-grace-end",
        ),
        pytest.param(
            JOB,
            scontrol(JobState="COMPLETING", Reason="TimeLimit"),
            StopKind.TIMELIMIT,
            True,
            id="past-the-limit",
        ),
        pytest.param(JOB, scontrol(JobState="COMPLETING"), StopKind.CANCEL, False, id="scancelled-meanwhile"),
        pytest.param(JOB, scontrol(Restarts="1"), StopKind.REQUEUED, False, id="requeued-from-outside"),
    ],
)
def test_a_stop_by_the_end_time_rule_is_walltime_evidence(
    env: SlurmEnvironment, line: str | None, kind: StopKind, requeue_self: bool
) -> None:
    info = commands.parse_job_info(line) if line else None
    decision = decide(StopEvidence(END_TIME_SIGNAL, env, info, now=AT, stop_reason=REASON))
    assert (decision.kind, decision.requeue_self) == (kind, requeue_self)
    if kind == StopKind.WALLTIME:
        assert decision.reason.startswith(f"end-time rule ({REASON})")


def end_time_outcome(folder: Path) -> Stopped:
    return Stopped(folder=folder, signal=END_TIME_SIGNAL, reason=REASON, epoch=2, iteration=7)


@pytest.mark.usefixtures("in_job")
def test_after_an_end_time_stop_the_job_requeues_itself_and_says_why(tmp_path: Path) -> None:
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    with commands.use_runner(fake):
        decision = after_stop(end_time_outcome(tmp_path), 3)
    assert decision.kind == StopKind.WALLTIME
    assert fake.ran("scontrol requeue") == [["scontrol", "requeue", "15"]]
    records = [dict(r) for r in read_events(tmp_path)]
    (record,) = [r for r in records if r["event"] == "decision"]
    assert (record["kind"], record["signal"], record["requeue_self"]) == ("walltime", END_TIME_SIGNAL, True)
    assert "end-time rule" in record["reason"] and "EndTime 2026-12-01T12:00:00" in record["reason"]
    assert "margin 13.0 s" in record["reason"]
    (requeued,) = [r for r in records if r["event"] == "requeued"]
    assert (requeued["by"], requeued["reason"], requeued["requeues_left"]) == ("nnslurm", "walltime", 2)


@pytest.mark.usefixtures("in_job")
def test_end_time_stops_count_against_the_requeue_cap(tmp_path: Path) -> None:
    from nnslurm.core.errors import RequeueLimitReached

    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    max_requeues = 1
    with commands.use_runner(fake):
        after_stop(end_time_outcome(tmp_path), max_requeues)
        with pytest.raises(RequeueLimitReached):
            after_stop(end_time_outcome(tmp_path), max_requeues)
    assert len(fake.ran("scontrol requeue")) == 1
    kinds = [r["kind"] for r in read_events(tmp_path) if r["event"] == "decision"]
    assert kinds == ["walltime", "requeue-limit"]


def test_several_ranks_look_one_phase_further_ahead() -> None:
    """With several ranks the loop acts on a decision one boundary later (the overlapped
    agreement): the margin holds the slowest phase of any kind once more."""
    one, _, clock = guard_at(FixedReader(END_S), safety_s=10.0)
    several, monitor, other_clock = guard_at(FixedReader(END_S), safety_s=10.0)
    several.lag_phases = 1
    for guard, at in ((one, clock), (several, other_clock)):
        guard.before(ITERATION)
        at[0] += 1.0  # an iteration of 1 s
        guard.before(EPOCH_END)
        at[0] += 4.0  # an epoch end of 4 s
        guard.before(ITERATION)
        at[0] += 1.0
        at[1] = END_S - 15.0  # 1 s iteration + 2 s checkpoint + 10 s safety = 13 s: one goes on
    assert not one.before(ITERATION)
    assert several.before(ITERATION)  # ... plus the slowest phase (4 s) = 17 s: stop now
    assert monitor.request is not None and monitor.request.measures["next_s"] == 5.0
