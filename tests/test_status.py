"""`nnslurm status`: true values on a real interrupted run; squeue/sacct faked at the subprocess seam."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import (
    FakeCluster,
    NnunetEnv,
    Output,
    ctrl_c_as_at_a_terminal,
    nnslurm,
    patience,
    read_events,
    run_on_a_terminal,
    started,
    stop,
    wait_for,
    write_log,
)

from nnslurm import cli
from nnslurm.runs.state import LOG_STATE, LogSays, RunState, run_state
from nnslurm.runs.status import run_status
from nnslurm.slurm.commands import SchedulerJob, use_runner


@pytest.mark.nnunet
def test_status_json_holds_the_true_values(interrupted_run: tuple[NnunetEnv, Path]) -> None:
    env, folder = interrupted_run
    events = read_events(folder)
    result = nnslurm(["status", "--json"], env.env())
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "nnslurm.status/1"
    assert document["scheduler"] is False
    (run,) = document["runs"]
    assert run["folder"] == str(folder)
    assert (run["dataset"], run["configuration"], run["fold"]) == ("Dataset501_Synthetic", "3d_fullres", "0")
    assert (run["trainer"], run["plans"]) == ("nnUNetTrainerSignals", "nnslurmTinyPlans")
    assert run["state"] == "finished"
    assert (run["epoch"], run["iteration"], run["num_epochs"], run["iterations_per_epoch"]) == (3, 0, 3, 5)
    assert run["progress"] == 1.0
    assert run["starts"] == sum(e["event"] == "started" for e in events) == 3
    assert run["interruptions"] == {
        "walltime": 0,
        "preemption": 0,
        "requeue": 0,
        "cancel": 0,
        "kill": 1,
        "node failure": 0,
        "signal": 1,
        "failure": 0,
    }
    assert run["interruptions_total"] == 2
    assert (run["executor"], run["job_id"], run["job_ids"]) == ("none", None, [])
    checkpoint = run["newest_checkpoint"]
    last_checkpoint = [e for e in events if e["event"] == "checkpoint"][-1]
    assert checkpoint["file"] == last_checkpoint["path"] == "checkpoint_final.pth"
    assert (checkpoint["epoch"], checkpoint["iteration"]) == (3, 0)
    # its age is the time since the log's checkpoint record (the run is built once per session: old)
    assert checkpoint["age_s"] == pytest.approx(time.time() - last_checkpoint["time"], abs=patience(10))
    assert run["iterations_per_s"] > 0 and run["remaining_s"] == 0.0 and run["eta"] is None
    assert run["last_error"] is None and run["last_event"] == "finished"

    other = nnslurm(["status", "--json", "--dataset", "502"], env.env())
    assert json.loads(other.stdout)["runs"] == []


@pytest.mark.nnunet
def test_status_table_is_plain_text_off_a_terminal(interrupted_run: tuple[NnunetEnv, Path]) -> None:
    env, _ = interrupted_run
    result = nnslurm(["status"], env.env())
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    title, _, header, row = result.stdout.splitlines()
    assert (
        title.startswith("nnslurm status  1 run(s) under")
        and "nnUNetTrainerSignals / nnslurmTinyPlans" in title
    )
    assert header.split() == [
        "dataset",
        "config",
        "fold",
        "job",
        "state",
        "epoch",
        "iter",
        "interruptions",
        "ckpt",
        "age",
        "it/s",
        "ETA",
        "detail",
    ]
    for cell in ("Dataset501_Synthetic", "3d_fullres", "finished", "3/3", "0/5", "kill 1, signal 1", "done"):
        assert cell in row
    assert row == row.rstrip()


# --- squeue/sacct at the subprocess seam --------------------------------------------------------


def run_folder(results: Path, fold: int, configuration: str = "3d_fullres") -> Path:
    return results / "Dataset501_Synthetic" / f"nnUNetTrainer__nnUNetPlans__{configuration}" / f"fold_{fold}"


def progress(job: str, t: float, epoch: int, pid: int = 100) -> dict:
    return {
        "event": "checkpoint",
        "time": t,
        "job_id": job,
        "pid": pid,
        "path": "checkpoint_latest.pth",
        "epoch": epoch,
        "iteration": 0,
        "reason": "periodic",
    }


def submitted(job: str, t: float) -> dict:
    return {"event": "submitted", "time": t, "job_id": job, "executor": "slurm", "log_folder": "/nowhere"}


@pytest.fixture
def slurm_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Eight SLURM runs in every situation status must tell apart."""
    results = tmp_path / "results"
    write_log(
        run_folder(results, 0),
        [  # walltime, requeued by itself, now pending again
            submitted("101", -3600),
            *started("101", -3500),
            progress("101", -3000, 1),
            *stop("101", -2000, 2, 40, "walltime"),
            {"event": "requeued", "time": -1999, "job_id": "101", "by": "nnslurm", "reason": "walltime"},
        ],
    )
    write_log(
        run_folder(results, 1),
        [  # running, then nothing: the node died
            submitted("202", -3600),
            *started("202", -3500),
            progress("202", -3000, 1),
        ],
    )
    write_log(
        run_folder(results, 2),
        [  # an array task, running now
            submitted("303_2", -3600),
            *started("303_2", -400),
            progress("303_2", -300, 1),
            progress("303_2", -200, 2),
            progress("303_2", -100, 3),
        ],
    )
    write_log(
        run_folder(results, 3),
        [  # preempted; SLURM requeued it
            submitted("404", -3600),
            *started("404", -3500),
            *stop("404", -3000, 1, 7, "preemption"),
            {"event": "requeued", "time": -2980, "job_id": "404", "by": "slurm", "reason": "preemption"},
        ],
    )
    write_log(
        run_folder(results, 4),
        [  # requeued from outside, then killed, then finished
            submitted("505", -3600),
            *started("505", -3500),
            progress("505", -3400, 1),
            *stop("505", -3300, 1, 50, "requeued", accounting="REQUEUED"),
            {"event": "requeued", "time": -3299, "job_id": "505", "by": "slurm", "reason": "external"},
            *started("505", -3200, 1, 50, pid=101),
            progress("505", -3100, 2, pid=101),
            *started("505", -2000, 1, 0, pid=102),
            progress("505", -1000, 10, pid=102),  # --resume-from best
            {"event": "finished", "time": -999, "job_id": "505", "pid": 102, "epoch": 10, "iteration": 0},
        ],
    )
    write_log(
        run_folder(results, 5),
        [  # preempted, still in its grace time: SLURM says RUNNING
            submitted("808", -600),
            *started("808", -500),
            *stop("808", -10, 1, 3, "preemption"),
        ],
    )
    write_log(run_folder(results, 0, "2d"), [submitted("606", -60)])
    write_log(
        run_folder(results, 1, "2d"),
        [  # killed (node failure), submitted again: pending
            submitted("700", -600),
            *started("700", -500),
            progress("700", -400, 1),
            submitted("701", -60),
        ],
    )
    monkeypatch.setenv("nnUNet_results", str(results))
    return results


def status_json(capsys: pytest.CaptureFixture[str], cluster: FakeCluster) -> dict[str, dict]:
    with use_runner(cluster):
        assert cli.main(["status", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    return {f"{run['configuration']}/{run['fold']}": run for run in document["runs"]} | {"": document}


def test_status_merges_squeue_and_sacct(slurm_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster.queue(
        squeue="101|PENDING|BeginTime\n303_2|RUNNING|None\n404|PENDING|Priority\n606|PENDING|Resources\n"
        "701|PENDING|Priority\n808|RUNNING|None\n",
        sacct="202|NODE_FAIL\n505|COMPLETED\n",
    )
    runs_by_name = status_json(capsys, cluster)
    squeue, sacct = cluster.calls
    assert squeue[:-1] == ["squeue", "-h", "-r", "-o", "%i|%T|%r|%l", "-j"]
    assert squeue[-1].split(",") == sorted(["101", "202", "303_2", "404", "505", "606", "701", "808"])
    assert sacct[0] == "sacct" and sacct[-1].split(",") == ["202", "505"]
    assert runs_by_name[""]["scheduler"] is True

    walltime = runs_by_name["3d_fullres/0"]
    assert (walltime["state"], walltime["scheduler_state"]) == ("requeued", "PENDING")
    assert "BeginTime" in walltime["detail"]
    assert walltime["interruptions"]["walltime"] == 1 and walltime["interruptions_total"] == 1
    assert (walltime["epoch"], walltime["iteration"]) == (2, 40)
    assert walltime["eta"] is None and walltime["remaining_s"] > 0

    node_failure = runs_by_name["3d_fullres/1"]
    assert node_failure["state"] == "killed" and "NODE_FAIL" in node_failure["detail"]
    assert node_failure["interruptions"]["kill"] == 1

    array_task = runs_by_name["3d_fullres/2"]
    assert (array_task["state"], array_task["job_id"]) == ("running", "303_2")
    assert array_task["iterations_per_s"] == pytest.approx(1.0)  # 100 iterations per 100 s
    assert array_task["interruptions_total"] == 0 and array_task["eta"] is not None
    # 700 s of work, 100 s done; the records' times are relative to when the fixture wrote them,
    # and a busy machine takes seconds from there to the status (measured: 6 s): the time since counts.
    assert 600 - 60 < array_task["remaining_s"] <= 600 + 1

    preempted = runs_by_name["3d_fullres/3"]
    assert preempted["state"] == "preempted" and preempted["interruptions"]["preemption"] == 1

    grace = runs_by_name["3d_fullres/5"]
    assert grace["state"] == "preempted" and "grace time" in grace["detail"]

    story = runs_by_name["3d_fullres/4"]
    assert story["state"] == "finished" and story["starts"] == 3
    assert {k: v for k, v in story["interruptions"].items() if v} == {"requeue": 1, "kill": 1}
    assert story["iterations_redone"] == 100  # reached epoch 2, resumed from epoch 1
    assert story["job_ids"] == ["505"]

    pending = runs_by_name["2d/0"]
    assert (pending["state"], pending["starts"], pending["epoch"]) == ("pending", 0, None)
    again = runs_by_name["2d/1"]
    assert (again["state"], again["job_id"], again["job_ids"]) == ("pending", "701", ["700", "701"])
    assert again["interruptions"]["kill"] == 1 and (again["epoch"], again["iteration"]) == (1, 0)


def test_status_without_slurm_uses_the_event_logs(
    slurm_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs_by_name = status_json(capsys, FakeCluster(missing=True))
    assert runs_by_name[""]["scheduler"] is False
    assert runs_by_name["3d_fullres/0"]["state"] == "requeued"
    assert runs_by_name["3d_fullres/0"]["detail"] == "walltime: requeued"
    node_failure = runs_by_name["3d_fullres/1"]  # ran on node7: this host cannot tell
    assert node_failure["state"] == "running" and "unconfirmed" in node_failure["detail"]
    assert runs_by_name["3d_fullres/3"]["state"] == "preempted"
    assert runs_by_name["2d/0"]["state"] == "pending"


def test_status_with_no_scheduler_flag_asks_nothing(
    slurm_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster()
    with use_runner(cluster):
        assert cli.main(["status", "--no-scheduler", "-d", "Dataset501_Synthetic"]) == 0
    assert cluster.calls == []
    assert "8 run(s)" in capsys.readouterr().out


def test_an_invalid_job_id_means_gone(slurm_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """squeue exits 1 for one unknown id: the jobs ended; sacct then knows them."""

    gone = FakeCluster(
        answers={"sacct": ["101|CANCELLED by 1000\n"]},
        fail={"squeue": (1, "slurm_load_jobs error: Invalid job id specified")},
    )
    runs_by_name = status_json(capsys, gone)
    assert runs_by_name["3d_fullres/0"]["state"] == "cancelled"
    assert runs_by_name["3d_fullres/0"]["scheduler_state"] == "CANCELLED"


def test_cancel_by_user_and_kinds_from_the_log(tmp_path: Path) -> None:
    folder = write_log(
        run_folder(tmp_path, 0),
        [
            *started("local-9", -100, pid=200),
            {
                "event": "cancel_requested",
                "time": -50,
                "pid": 300,
                "job_id": "local-9",
                "by": "alice",
                "method": "SIGTERM",
                "target_pid": 200,
            },
            {
                "event": "signal",
                "time": -49,
                "pid": 200,
                "job_id": "local-9",
                "signal": "TERM",
                "epoch": 0,
                "iteration": 5,
            },
            {
                "event": "stopped",
                "time": -48,
                "pid": 200,
                "job_id": "local-9",
                "signal": "TERM",
                "epoch": 0,
                "iteration": 5,
            },
            {
                "event": "decision",
                "time": -48,
                "pid": 200,
                "job_id": "local-9",
                "kind": "signal",
                "epoch": 0,
                "iteration": 5,
            },
        ],
    )
    status = run_status(folder)
    assert (status.state, status.detail, status.executor) == ("cancelled", "cancelled by alice", "local")
    assert status.interruptions["cancel"] == 1


@pytest.fixture
def terminal() -> Iterator[Callable[..., str]]:
    """Run the CLI on a pseudo-terminal (Ctrl-C once `interrupt_when` holds); returns what it printed."""

    def run(args: list[str], env: dict[str, str], interrupt_when: Callable[[str], bool] | None = None) -> str:
        code, shown = run_on_a_terminal(args, env, stderr_too=False, interrupt_when=interrupt_when)
        assert code == 0
        return shown

    yield run


def test_colours_only_on_a_terminal(slurm_runs: Path, terminal: Callable[..., str]) -> None:
    env = dict(os.environ, nnUNet_results=str(slurm_runs), COLUMNS="200", TERM="xterm-256color")
    for variable in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE"):
        env.pop(variable, None)
    shown = terminal(["status", "--no-scheduler"], env)
    assert "\x1b[" in shown and "requeued" in shown
    plain = subprocess.run(
        [sys.executable, "-m", "nnslurm", "status", "--no-scheduler"],
        env=env,
        capture_output=True,
        text=True,
        timeout=patience(20),
    )
    assert "\x1b[" not in plain.stdout and "requeued" in plain.stdout


def test_watch_refreshes_until_interrupted(slurm_runs: Path) -> None:
    env = dict(os.environ, nnUNet_results=str(slurm_runs))
    for extra in (["--json"], []):
        command = ["status", "--no-scheduler", "--watch", "--interval", "0.3", *extra]
        process = subprocess.Popen(
            [sys.executable, "-m", "nnslurm", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=ctrl_c_as_at_a_terminal,
        )
        assert process.stdout is not None and process.stderr is not None
        output = Output(process.stdout)
        marker = "\n" if extra else "nnslurm status"  # one JSON document per line, or a title per table
        wait_for(lambda seen=output, mark=marker: seen.text.count(mark) >= 2, patience(40), "two refreshes")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=patience(10))
        out, err = output.rest(), process.stderr.read()
        assert process.returncode == 0, err
        if extra:
            documents = [json.loads(line) for line in out.split("\n")[:-1]]  # complete lines
            assert len(documents) >= 2 and all(len(d["runs"]) == 8 for d in documents)
        else:
            assert out.count("nnslurm status") >= 2


def test_bad_interval_is_a_usage_error(slurm_runs: Path) -> None:
    assert cli.main(["status", "--watch", "--interval", "0"]) == 2


def test_watch_redraws_in_place_on_a_terminal(slurm_runs: Path, terminal: Callable[..., str]) -> None:
    env = dict(os.environ, nnUNet_results=str(slurm_runs), COLUMNS="200", TERM="xterm-256color")
    shown = terminal(
        ["status", "--no-scheduler", "--watch", "--interval", "0.3"],
        env,
        interrupt_when=lambda shown: shown.count("nnslurm status") >= 2 and "\x1b[2K" in shown,
    )
    assert shown.count("nnslurm status") >= 2
    assert "\x1b[1A" in shown and "\x1b[2K" in shown  # cursor up, erase line: the same place again


# --- the state table ----------------------------------------------------------------------------


def job(state: str, reason: str = "None") -> SchedulerJob:
    return SchedulerJob("101", state, reason, "squeue")


@pytest.mark.parametrize(
    ("log", "scheduler", "alive", "expected"),
    [
        (LogSays.NO_END_RECORD, None, True, (RunState.RUNNING, "")),
        (LogSays.NO_END_RECORD, None, None, (RunState.RUNNING, "unconfirmed: last record 5m 00s ago")),
        (
            LogSays.NO_END_RECORD,
            None,
            False,
            (RunState.KILLED, "the training process died without a stop record"),
        ),
        (
            LogSays.NO_END_RECORD,
            job("WEIRD"),
            None,
            (RunState.KILLED, "the job ended (SLURM: WEIRD) without a stop record"),
        ),
        (
            LogSays.NO_END_RECORD,
            job("NODE_FAIL"),
            None,
            (RunState.KILLED, "the job ended (SLURM: NODE_FAIL) without a stop record"),
        ),
        (LogSays.NO_END_RECORD, job("COMPLETING"), None, (RunState.RUNNING, "")),
        (
            LogSays.WALLTIME,
            job("PENDING", "BeginTime"),
            None,
            (RunState.REQUEUED, "the log; SLURM: PENDING (BeginTime)"),
        ),
        (
            LogSays.WALLTIME,
            job("TIMEOUT"),
            None,
            (RunState.STOPPED, "SLURM: TIMEOUT: not requeued; submit again to continue"),
        ),
        (
            LogSays.CANCEL_REQUESTED,
            job("RUNNING"),
            None,
            (RunState.CANCELLED, "the log; stopping (SLURM: RUNNING)"),
        ),
        (
            LogSays.PREEMPTED_IN_GRACE,
            job("RUNNING"),
            None,
            (RunState.PREEMPTED, "checkpoint written, waiting out the grace time (SLURM: RUNNING)"),
        ),
        (LogSays.PREEMPTED, job("RUNNING"), None, (RunState.RUNNING, "SLURM: RUNNING")),
        (LogSays.FINISHED, job("RUNNING"), None, (RunState.FINISHED, "the log")),
        (LogSays.SIGNAL, None, None, (RunState.STOPPED, "the log")),
        (LogSays.SIGNAL, job("CANCELLED"), None, (RunState.CANCELLED, "SLURM: CANCELLED")),
    ],
)
def test_state_table(
    log: LogSays, scheduler: SchedulerJob | None, alive: bool | None, expected: tuple[RunState, str]
) -> None:
    assert run_state(log, "the log", scheduler, alive, ago="5m 00s") == expected


def test_state_table_is_total() -> None:
    """Every verdict of the log, with every answer of SLURM and of the process, has a state and a
    detail with nothing left unfilled. Without an answer from SLURM the log alone decides
    (LOG_STATE); a RUNNING job is running unless its log says it finished, is being cancelled or
    waits out a preemption's grace time."""
    assert set(LOG_STATE) == set(LogSays) - {LogSays.NO_END_RECORD}
    log_wins_over_running = {
        LogSays.FINISHED,
        LogSays.NO_LOG_FINAL,
        LogSays.CANCELLED_BEFORE_START,
        LogSays.CANCEL_REQUESTED,
        LogSays.CANCEL_DECISION,
        LogSays.PREEMPTED_IN_GRACE,
    }
    for log in LogSays:
        for state in [None, "RUNNING", "COMPLETING", "PENDING", "PREEMPTED", "CANCELLED", "FAILED", "WEIRD"]:
            for alive in (True, False, None):
                found, detail = run_state(log, "the log", None if state is None else job(state), alive, "5m")
                assert found in RunState
                assert "{" not in detail and "}" not in detail, (log, state, alive, detail)
                if state is None and log in LOG_STATE:
                    assert found == LOG_STATE[log], (log, alive, found)
                if state == "RUNNING":
                    expected = LOG_STATE[log] if log in log_wins_over_running else RunState.RUNNING
                    assert found == expected, (log, alive, found)


def test_a_backfilled_job_shows_the_limit_it_was_granted(tmp_path: Path) -> None:
    """submit --time-min: SLURM may start the job with less than its --time; status says so."""
    folder = run_folder(tmp_path, 0)
    write_log(
        folder,
        [{**submitted("909", -120), "time_limit_s": 600}, *started("909", -100), progress("909", -10, 1)],
    )
    backfilled = {"909": SchedulerJob("909", "RUNNING", "None", "squeue", time_limit_s=60)}
    row = run_status(folder, backfilled, now=time.time())
    assert (row.time_limit_s, row.time_asked_s) == (60, 600)
    assert "limit 00:01:00 of 00:10:00 asked (backfill: --time-min)" in row.detail
    whole = {"909": SchedulerJob("909", "RUNNING", "None", "squeue", time_limit_s=600)}
    assert "backfill" not in run_status(folder, whole, now=time.time()).detail


def test_status_shows_the_ranks_of_the_newest_start(tmp_path: Path) -> None:
    """-num_gpus 2: the newest start's world size; a later start with one rank shows one."""
    folder = run_folder(tmp_path, 0)
    first = [
        {**record, "world_size": 2} if record["event"] == "started" else record
        for record in started("909", -100)
    ]
    write_log(folder, [submitted("909", -120), *first, progress("909", -10, 1)])
    running = {"909": SchedulerJob("909", "RUNNING", "None", "squeue")}
    row = run_status(folder, running, now=time.time())
    assert row.world_size == 2 and "2 ranks" in row.detail and row.to_json()["world_size"] == 2
    write_log(
        folder, [submitted("909", -120), *first, progress("909", -10, 1), *started("909", -5, 1, pid=101)]
    )
    assert run_status(folder, running, now=time.time()).world_size == 1
