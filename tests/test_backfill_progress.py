"""Issue 19: the end-time rule never livelocks, and `submit --time-min` (backfill).

The safety scaled to a start's granted limit, the cap on starts that make no progress, the
refusal of limits in which no start can progress, the --time-min sbatch line and profile key, the
granted limit read and said once in the job, and the full --time asked again before a self-requeue.
SLURM is faked at the subprocess seam only (nnslurm.slurm.commands.use_runner)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from support import TINY_PLANS, FakeCluster, NnunetEnv, write_log

from nnslurm import cli
from nnslurm.core.cluster import ClusterSettings, resolve
from nnslurm.core.config import TrainingOptions
from nnslurm.core.errors import NoProgress, UsageError
from nnslurm.runs.events import read_events
from nnslurm.runs.outcome import Stopped
from nnslurm.scheduler.after_stop import after_stop
from nnslurm.scheduler.policy import (
    NO_PROGRESS_STARTS,
    StopDecision,
    apply_progress_cap,
    starts_without_progress,
)
from nnslurm.slurm import commands
from nnslurm.slurm.end_time import (
    END_TIME_SIGNAL,
    SAFETY_SHARE,
    EndTimeReader,
    check_limits,
    grant_line,
    granted_limit,
    log_grant,
    scaled_safety,
    shortest_limit,
)
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.stop_kinds import StopKind
from nnslurm.training.signals import StopMonitor
from nnslurm.training.stop_margin import ITERATION, EndTimeGuard, PhaseTimes, end_time_guard


def scontrol(**changes: str) -> str:
    fields = {
        "JobId": "15",
        "JobState": "RUNNING",
        "Reason": "None",
        "Restarts": "0",
        "TimeLimit": "00:04:00",
        "RunTime": "00:00:30",
        "StartTime": "2026-12-01T11:56:00",
        "EndTime": "2026-12-01T12:00:00",
        "PreemptTime": "None",
        **changes,
    }
    return " ".join(f"{key}={value}" for key, value in fields.items()) + "\n"


# --- the safety scaled to the granted limit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("safety", "granted", "scaled"),
    [
        pytest.param(60.0, None, 60.0, id="unknown-grant-keeps-the-safety"),
        pytest.param(60.0, 3600.0, 60.0, id="long-limit-keeps-the-safety"),
        pytest.param(60.0, 240.0, 60.0, id="four-minutes-keep-the-default"),
        pytest.param(60.0, 60.0, 15.0, id="one-minute-a-quarter"),
        pytest.param(15.0, 60.0, 15.0, id="dev-cluster-one-minute-unchanged"),
        pytest.param(60.0, 0.0, 60.0, id="nonsense-grant-ignored"),
    ],
)
def test_scaled_safety(safety: float, granted: float | None, scaled: float) -> None:
    assert scaled_safety(safety, granted) == scaled


def test_shortest_limit_leaves_start_up_and_a_checkpoint() -> None:
    for safety in (None, 0.0, 5.0, 15.0, 60.0, 600.0):
        limit = shortest_limit(safety, start_up_s=30.0, checkpoint_s=10.0)
        assert limit - scaled_safety(safety or 0.0, limit) >= 40.0 - 1e-6
        assert (limit - 1) - scaled_safety(safety or 0.0, limit - 1) < 40.0  # and it is the shortest
    assert shortest_limit(None, 30.0, 10.0) == 40  # rule off: start-up and checkpoint only
    assert shortest_limit(60.0, 30.0, 10.0) == 54  # 40 / (1 - SAFETY_SHARE), rounded up
    assert SAFETY_SHARE == 0.25


class GrantedReader(EndTimeReader):
    def __init__(self, end: float, granted: float | None) -> None:
        super().__init__("15", granted_s=granted)
        self.end = end

    @property
    def end_time(self) -> float | None:
        return self.end

    def refresh(self, timeout: float = 0.0) -> float | None:
        return self.end


def guard_with(
    granted: float | None, safety_s: float = 60.0
) -> tuple[EndTimeGuard, StopMonitor, list[float]]:
    clock = [10_000.0]
    monitor = StopMonitor(["USR1"], 20.0, lambda request, phase: None)
    reader = GrantedReader(clock[0] + 50.0, granted)  # 50 s left: under the 60 s safety
    guard = EndTimeGuard(
        reader, monitor, safety_s, PhaseTimes((2.0,)), wall=lambda: clock[0], monotonic=lambda: clock[0]
    )
    return guard, monitor, clock


def test_a_short_grant_trains_instead_of_stopping_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """--time=1 against the 60 s safety: measured, every start stopped after one iteration. With the
    safety scaled to 15 s the start trains on while more than an iteration + checkpoint + 15 s are left."""
    guard, monitor, clock = guard_with(granted=60.0)
    with caplog.at_level(logging.INFO, logger="nnslurm.training.stop_margin"):
        guard.before(ITERATION)
        for _ in range(60):
            clock[0] += 1.0
            if guard.before(ITERATION):
                break
    request = monitor.request
    assert request is not None and request.signal == END_TIME_SIGNAL
    assert request.measures["safety_s"] == 15.0
    assert clock[0] - 10_000.0 == 32.0  # 50 s left, stopped with 1 + 2 + 15 s to spare: 32 s trained
    lines = [r.getMessage() for r in caplog.records if "instead of --end-time-safety" in r.getMessage()]
    assert lines == [
        "end-time rule: safety 15 s instead of --end-time-safety 60 s: at most 25 % of the 00:01:00 this "
        "start was granted, so that a short limit still trains"
    ]  # said once


def test_an_unknown_grant_keeps_the_whole_safety() -> None:
    guard, monitor, clock = guard_with(granted=None)
    guard.before(ITERATION)
    clock[0] += 1.0
    assert guard.before(ITERATION)  # 49 s left < 1 + 2 + 60 s
    assert monitor.request is not None and monitor.request.measures["safety_s"] == 60.0


def test_the_reader_learns_the_grant_from_scontrol() -> None:
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    with commands.use_runner(fake):
        reader = EndTimeReader("15")
        assert reader.granted_s is None
        reader.refresh()
    assert reader.granted_s == 240.0  # TimeLimit
    unlimited = commands.parse_job_info(scontrol(TimeLimit="UNLIMITED"))
    with commands.use_runner(FakeCluster(answers={"scontrol show": [scontrol(TimeLimit="UNLIMITED")]})):
        other = EndTimeReader("15")
        other.refresh()
    assert unlimited.time_limit_s is None and other.granted_s == 240.0  # EndTime - StartTime


# --- the granted limit, said once ------------------------------------------------------------------


def test_grant_line() -> None:
    assert grant_line(240.0, 1800) == "started in a backfill window: limit 00:04:00 of 00:30:00 asked"
    assert grant_line(1800.0, 1800) is None  # the whole --time
    assert grant_line(240.0, None) is None  # not submitted with --time-min


BACKFILLED = {
    "SLURM_JOB_ID": "15",
    "NNSLURM_TIME_ASKED": "1800",
    "NNSLURM_TIME_MIN": "120",
}


def test_the_grant_is_read_from_slurm_s_variables_without_asking_scontrol() -> None:
    env = SlurmEnvironment.from_environ(
        {**BACKFILLED, "SLURM_JOB_START_TIME": "1000000", "SLURM_JOB_END_TIME": "1000240"}
    )
    fake = FakeCluster()
    with commands.use_runner(fake):
        assert granted_limit(env) == 240.0
    assert fake.calls == []


def test_the_grant_is_logged_once_at_a_backfilled_start(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})  # Slurm < 23.02: no SLURM_JOB_END_TIME
    with commands.use_runner(fake), caplog.at_level(logging.INFO):
        assert log_grant(SlurmEnvironment.from_environ(BACKFILLED)) == 240.0
        assert log_grant(SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15"})) is None  # no --time-min
    assert fake.ran("scontrol show") == [["scontrol", "show", "job", "-o", "15"]]
    assert "job 15: started in a backfill window: limit 00:04:00 of 00:30:00 asked" in caplog.text


def test_the_guard_of_a_backfilled_start_knows_its_grant(tmp_path: Path) -> None:
    monitor = StopMonitor(["USR1"], 20.0, lambda request, phase: None)
    env = SlurmEnvironment.from_environ(
        {**BACKFILLED, "SLURM_JOB_START_TIME": "1000000", "SLURM_JOB_END_TIME": "1000120"}
    )
    with commands.use_runner(FakeCluster(answers={"scontrol show": [scontrol()]})):
        guard = end_time_guard(TrainingOptions(end_time_safety_s=60.0), monitor, tmp_path, env)
        assert guard is not None
        guard.close()
    assert guard.reader.granted_s == 120.0 and guard.effective_safety_s == 30.0


# --- starts that make no progress ------------------------------------------------------------------


def start(job: str, pid: int, t: float, at: tuple[int, int], to: tuple[int, int]) -> list[dict[str, Any]]:
    """One start of job `job` (process `pid`) from `at` that stopped at `to`."""
    where = {"job_id": job, "pid": pid}
    begin = {"epoch": at[0], "iteration": at[1]}
    end = {"epoch": to[0], "iteration": to[1]}
    return [
        {"event": "resumed", "time": t, **where, **begin},
        {"event": "started", "time": t + 1, **where, **begin, "num_epochs": 8, "iterations_per_epoch": 50},
        {"event": "checkpoint", "time": t + 2, **where, **end, "reason": "stop", "seconds": 1.0},
        {"event": "stopped", "time": t + 3, **where, **end, "signal": "USR1"},
    ]


def records(
    *starts: tuple[tuple[int, int], tuple[int, int]], submitted: bool = True
) -> list[Mapping[str, Any]]:
    log: list[Mapping[str, Any]] = [{"event": "submitted", "time": 0.0, "job_id": "15"}] if submitted else []
    for index, (at, to) in enumerate(starts):
        log += start("15", 100 + index, 10.0 * (index + 1), at, to)
    return log


@pytest.mark.parametrize(
    ("starts", "stalled"),
    [
        pytest.param([((2, 5), (2, 9))], 0, id="progress"),
        pytest.param([((2, 5), (2, 5))], 1, id="one-stalled"),
        pytest.param([((2, 0), (2, 5)), ((2, 5), (2, 5)), ((2, 5), (2, 5))], 2, id="progress-then-two"),
        pytest.param([((2, 5), (2, 5))] * 3, 3, id="three-stalled"),
        pytest.param([((2, 5), (2, 5)), ((2, 5), (3, 0)), ((3, 0), (3, 0))], 1, id="broken-by-progress"),
    ],
)
def test_starts_without_progress(starts: list[tuple[tuple[int, int], tuple[int, int]]], stalled: int) -> None:
    assert starts_without_progress(records(*starts)) == stalled


def test_a_new_submit_starts_the_count_again() -> None:
    log = records(*[((2, 5), (2, 5))] * 3)
    log += [{"event": "submitted", "time": 100.0, "job_id": "16"}, *start("16", 300, 110.0, (2, 5), (2, 5))]
    assert starts_without_progress(log) == 1


def test_a_stage_has_no_position_and_is_never_counted() -> None:
    stage = [
        {"event": "started", "time": 1.0, "pid": 5, "stage": "preprocess"},
        {"event": "stopped", "time": 2.0, "pid": 5, "stage": "preprocess", "signal": "USR1"},
        {"event": "decision", "time": 3.0, "pid": 5, "kind": "walltime", "epoch": 0, "iteration": 0},
    ]
    assert starts_without_progress(stage) == 0


def test_the_cap_turns_only_a_self_requeue_into_no_progress() -> None:
    walltime = StopDecision(StopKind.WALLTIME, True, "SIGUSR1 with 1m 40s left")
    capped = apply_progress_cap(walltime, NO_PROGRESS_STARTS, 120)
    assert (capped.kind, capped.requeue_self) == (StopKind.NO_PROGRESS, False)
    assert capped.reason.startswith(
        "3 starts in a row made no progress: the time limit 00:02:00 is too short"
    )
    assert apply_progress_cap(walltime, NO_PROGRESS_STARTS - 1, 120) is walltime
    preempted = StopDecision(StopKind.PREEMPTION, False, "preempted")
    assert apply_progress_cap(preempted, 10, 120) is preempted


@pytest.mark.usefixtures("in_job")
def test_after_three_starts_without_progress_the_job_stops_and_says_why(tmp_path: Path) -> None:
    write_log(tmp_path, [dict(r, time=r["time"] - 1000.0) for r in records(*[((2, 5), (2, 5))] * 3)])
    fake = FakeCluster(answers={"scontrol show": [scontrol(TimeLimit="00:02:00")]})
    stopped = Stopped(folder=tmp_path, signal=END_TIME_SIGNAL, reason="EndTime ...", epoch=2, iteration=5)
    with commands.use_runner(fake), pytest.raises(NoProgress) as raised:
        after_stop(stopped, 20)
    assert fake.ran("scontrol requeue") == []  # nothing requeued
    message = str(raised.value)
    assert "3 starts in a row made no progress: the time limit 00:02:00 is too short" in message
    assert "raise --time" in (raised.value.hint or "")
    decisions = [r for r in read_events(tmp_path) if r["event"] == "decision"]
    assert [(d["kind"], d["requeue_self"]) for d in decisions] == [("no-progress", False)]
    assert not [r for r in read_events(tmp_path) if r["event"] == "requeued"]


@pytest.mark.usefixtures("in_job")
def test_two_starts_without_progress_still_requeue(tmp_path: Path) -> None:
    write_log(tmp_path, [dict(r, time=r["time"] - 1000.0) for r in records(*[((2, 5), (2, 5))] * 2)])
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    stopped = Stopped(folder=tmp_path, signal=END_TIME_SIGNAL, reason="EndTime ...", epoch=2, iteration=5)
    with commands.use_runner(fake):
        assert after_stop(stopped, 20).kind == StopKind.WALLTIME
    assert fake.ran("scontrol requeue") == [["scontrol", "requeue", "15"]]


# --- --time-min before the requeue: the full --time asked again ------------------------------------


def stopped_in(folder: Path) -> Stopped:
    return Stopped(folder=folder, signal=END_TIME_SIGNAL, reason="EndTime ...", epoch=2, iteration=7)


@pytest.mark.usefixtures("in_job")
def test_the_full_time_is_asked_again_before_the_requeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNSLURM_TIME_ASKED", "1800")
    monkeypatch.setenv("NNSLURM_TIME_MIN", "120")
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    with commands.use_runner(fake):
        after_stop(stopped_in(tmp_path), 3)
    changes = [call for call in fake.calls if call[:2] in (["scontrol", "update"], ["scontrol", "requeue"])]
    assert changes == [["scontrol", "update", "JobId=15", "TimeLimit=30"], ["scontrol", "requeue", "15"]]


@pytest.mark.usefixtures("in_job")
def test_a_refused_limit_raise_is_logged_and_the_job_still_requeues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NNSLURM_TIME_ASKED", "1800")
    monkeypatch.setenv("NNSLURM_TIME_MIN", "120")
    fake = FakeCluster(
        answers={"scontrol show": [scontrol()]},
        fail={"scontrol update": (1, "Access/permission denied")},
    )
    with commands.use_runner(fake), caplog.at_level(logging.WARNING):
        assert after_stop(stopped_in(tmp_path), 3).kind == StopKind.WALLTIME
    assert fake.ran("scontrol requeue") == [["scontrol", "requeue", "15"]]
    assert "could not ask for the full --time 00:30:00 again before the requeue" in caplog.text
    assert "Access/permission denied" in caplog.text


@pytest.mark.usefixtures("in_job")
def test_without_time_min_the_limit_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NNSLURM_TIME_ASKED", raising=False)
    monkeypatch.delenv("NNSLURM_TIME_MIN", raising=False)
    fake = FakeCluster(answers={"scontrol show": [scontrol()]})
    with commands.use_runner(fake):
        after_stop(stopped_in(tmp_path), 3)
    assert fake.ran("scontrol update") == [] and len(fake.ran("scontrol requeue")) == 1


# --- submission: --time-min, and limits no start can progress in ----------------------------------


def test_check_limits() -> None:
    check_limits(60, None, 60.0, None)  # SLURM's shortest limit, a minute, can progress
    check_limits(1800, 180, 60.0, 120)
    # Measured: the signal came at once in every start. With the end-time rule on, it is a hint
    # (nnslurm.slurm.end_time.warning_is_hint): the rule stops the job, so the limit is allowed ...
    check_limits(1800, 120, 60.0, 120)
    # ... and with the rule off (--no-end-time-stop), the warning is an order: refused.
    with pytest.raises(UsageError, match="--time-min 00:02:00 is too short for the warning signal") as error:
        check_limits(1800, 120, None, 120)
    assert "raise --time-min to 00:03:00 or more" in (error.value.hint or "")
    check_limits(1800, 120, 60.0, None)  # --no-signal: the end-time rule alone, scaled
    # A slow start (measured 60 s start-up, 10 s checkpoints): a minute cannot progress, 2 can.
    with pytest.raises(
        UsageError, match="--time 00:01:00 is too short for a start to make progress"
    ) as error:
        check_limits(60, None, 60.0, None, start_up_s=60.0, checkpoint_s=10.0)
    assert "raise --time to 00:01:34 or more" in (error.value.hint or "")
    check_limits(120, None, 60.0, None, start_up_s=60.0, checkpoint_s=10.0)
    check_limits(30, None, 60.0, 10)  # SLURM grants whole minutes: 0:30 is a minute


def test_time_min_in_settings_and_profiles(tmp_path: Path) -> None:
    assert ClusterSettings(time_s=1800, time_min_s=240).time_min_s == 240
    with pytest.raises(UsageError, match="--time-min 01:00:00 must be positive and at most --time 00:30:00"):
        ClusterSettings(time_s=1800, time_min_s=3600)
    path = tmp_path / "nnslurm.toml"
    path.write_text('[profiles.backfill]\ntime = "1:00:00"\ntime_min = 10\n')
    assert resolve("backfill", {}, [path])[0].time_min_s == 600
    assert resolve("backfill", {"time_min_s": 300}, [path])[0].time_min_s == 300  # the flag wins


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    return tmp_path


RUN = ["-d", "501", "-f", "0"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        pytest.param(
            ["--time", "30", "--time-min", "40"],
            ["--time-min 00:40:00 must be positive and at most --time 00:30:00", "lower --time-min"],
            id="time-min-over-time",
        ),
        pytest.param(
            ["--time", "30", "--time-min", "2", "--no-end-time-stop"],
            ["--time-min 00:02:00 is too short for the warning signal", "raise --time-min to 00:03:00"],
            id="time-min-under-the-signal",
        ),
        pytest.param(["--time-min", "0"], ["--time-min '0' is zero"], id="time-min-zero"),
    ],
)
@pytest.mark.parametrize("command", ["submit", "template"])
def test_refused_at_submission_nothing_submitted(
    results: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    command: str,
    extra: list[str],
    words: list[str],
) -> None:
    fake = FakeCluster()
    prefix = (
        ["submit", "--executor", "slurm"]
        if command == "submit"
        else ["template", "train", "-o", "job.sbatch"]
    )
    with commands.use_runner(fake), caplog.at_level(logging.ERROR):
        try:
            status = cli.main([*prefix, *RUN, *extra])
        except SystemExit as exit_:  # argparse's own refusal (a value it cannot parse)
            status = int(exit_.code or 0)
    text = caplog.text + capsys.readouterr().err
    assert status == 2, text
    for word in words:
        assert word in text, (word, text)
    assert "Traceback" not in text
    assert fake.calls == []  # no sbatch, no scontrol
    assert sorted(p.name for p in results.iterdir()) == []  # no script, no log or run folder


def test_dry_run_has_the_time_min_line_and_the_job_s_variables(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(["submit", *RUN, "--executor", "slurm", "--time", "30", "--time-min", "4", "--dry-run"]) == 0
    )
    out = capsys.readouterr().out
    assert "#SBATCH --time=30\n" in out and "#SBATCH --time-min=4\n" in out
    assert "export NNSLURM_TIME_ASKED=1800\n" in out and "export NNSLURM_TIME_MIN=240\n" in out
    assert "# time min: 00:04:00" in out


def test_without_time_min_no_line_and_no_variables(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", *RUN, "--executor", "slurm", "--time", "30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--time-min" not in out and "NNSLURM_TIME_" not in out


def test_template_has_the_time_min_line(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["template", "train", *RUN, "--time", "30", "--time-min", "4"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --time-min=00:04:00\n" in out
    assert "export NNSLURM_TIME_ASKED=1800 NNSLURM_TIME_MIN=240\n" in out


def test_the_limit_check_takes_the_run_s_own_checkpoint_times(
    nnunet_env: NnunetEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose checkpoints take 40 s (a big model on a slow filesystem): a 1-minute --time-min
    cannot progress (start-up ~15 s + 40 s + the 15 s safety), though the estimates would allow it."""
    for name, value in nnunet_env.env().items():
        if name.startswith("nnUNet_"):
            monkeypatch.setenv(name, value)
    run = ["-d", "501", "-f", "0", "-p", TINY_PLANS, "--dry-run", "--executor", "slurm", "--time", "30"]
    assert cli.main(["submit", *run, "--time-min", "1"]) == 0  # no measure yet: the estimates
    write_log(nnunet_env.run_folder(), [{"event": "checkpoint", "time": 1.0, "seconds": 40.0}])
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli.main(["submit", *run, "--time-min", "1"]) == 2
    said = caplog.text
    assert "--time-min 00:01:00 is too short for a start to make progress" in said, said
    assert "a checkpoint (~40 s)" in said, said
    assert cli.main(["submit", *run, "--time-min", "2"]) == 0
