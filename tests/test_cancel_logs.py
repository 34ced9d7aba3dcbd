"""`nnslurm cancel` and `nnslurm logs`: a real local-executor job cancelled and resumed, scancel at the
subprocess seam (the real cluster's story: tests/slurm/test_cluster_cancel_logs.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import (
    PACED,
    TINY_TRAINING,
    FakeCluster,
    NnunetEnv,
    Output,
    last_event,
    nnslurm,
    patience,
    read_events,
    started,
    wait_for,
    write_log,
)

from nnslurm import cli
from nnslurm.commands.cancel import _user
from nnslurm.core.processes import process_alive
from nnslurm.runs.status import run_status
from nnslurm.slurm import commands as slurm

USER = _user()


@pytest.mark.nnunet
def test_cancel_a_local_executor_job_then_resume(
    nnunet_env: NnunetEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = nnunet_env.env(nnUNet_n_proc_DA="0")
    monkeypatch.setenv("nnUNet_results", str(nnunet_env.results))
    # paced: the cancel lands mid-run however fast the machine (>= 0.15 s x 3 iterations an epoch)
    args = [*TINY_TRAINING, *PACED, "--epochs", "5", "--iterations-per-epoch", "3", "--no-final-validation"]
    # Not through pipes: submitit's local controller inherits them and holds them open until the job ends.
    with open(tmp_path / "submit.out", "w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "nnslurm", "submit", "--executor", "local", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=patience(40),
        ).returncode
    assert code == 0, (tmp_path / "submit.out").read_text()
    folder = nnunet_env.run_folder("nnUNetTrainerPaced")
    wait_for(lambda: last_event(folder, "checkpoint"), patience(40), "the first checkpoint")
    job_id = last_event(folder, "submitted")["job_id"]  # type: ignore[index]
    training_pid = last_event(folder, "started")["pid"]  # type: ignore[index]

    assert cli.main(["cancel", str(folder)]) == 0  # in this process: no start-up delay
    said = capsys.readouterr().out
    assert f"SIGTERM to pid {training_pid}" in said and "resumable" in said
    decision = wait_for(lambda: last_event(folder, "decision"), patience(40), "the job to stop")
    wait_for(lambda: not process_alive(training_pid), patience(20), "the training process to exit")
    request = last_event(folder, "cancel_requested")
    assert request is not None
    assert (request["job_id"], request["by"], request["target_pid"]) == (job_id, USER, training_pid)

    run = status_in_process(capsys)
    assert (run["state"], run["detail"], run["executor"]) == ("cancelled", f"cancelled by {USER}", "local")
    assert run["interruptions"]["cancel"] == 1 and run["interruptions_total"] == 1
    assert (run["epoch"], run["iteration"]) == (decision["epoch"], decision["iteration"])
    assert run["epoch"] < 5

    assert cli.main(["logs", str(folder)]) == 0
    logs = capsys.readouterr().out
    bare = job_id.removeprefix("local-")
    assert f"{bare}_0_log.out <==" in logs and f"{bare}_0_log.err <==" in logs
    assert "SIGTERM received: stopping at epoch" in logs
    assert "Epoch 0" in logs  # nnU-Net's own lines, on stdout
    assert cli.main(["logs", bare, "-f", "--interval", "0.2"]) == 0  # returns at once: cancelled
    assert capsys.readouterr().out == logs

    resumed = nnslurm(["train", *args], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = status_in_process(capsys)
    assert (run["state"], run["epoch"], run["starts"]) == ("finished", 5, 2)
    assert run["interruptions"]["cancel"] == 1 and run["iterations_redone"] == 0
    assert cli.main(["cancel", str(folder)]) == 1  # finished: nothing to cancel


def status_in_process(capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert cli.main(["status", "--json", "--no-scheduler"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    return run


# --- scancel at the subprocess seam ----------------------------------------------------------------


def folder_of(results: Path, fold: int) -> Path:
    return results / "Dataset501_Synthetic" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / f"fold_{fold}"


@pytest.fixture
def slurm_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    results = tmp_path / "results"
    submitted = {"event": "submitted", "executor": "slurm", "log_folder": str(tmp_path / "logs")}
    write_log(folder_of(results, 0), [{**submitted, "time": -60, "job_id": "4242"}, *started("4242", -50)])
    for task in (1, 2):  # one array, two tasks
        job = f"555_{task}"
        write_log(folder_of(results, task), [{**submitted, "time": -60, "job_id": job}, *started(job, -50)])
    monkeypatch.setenv("nnUNet_results", str(results))
    return results


def test_cancel_runs_scancel_and_records_who(slurm_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = folder_of(slurm_results, 0)
    cluster = FakeCluster.queue(squeue="4242|RUNNING|None\n")
    with slurm.use_runner(cluster):
        assert cli.main(["cancel", str(folder)]) == 0
        assert cluster.calls == [["scancel", "4242"]]
        record = read_events(folder)[-1]
        assert record["event"] == "cancel_requested"
        assert (record["job_id"], record["by"], record["method"]) == ("4242", USER, "scancel")
        assert "cancelled SLURM job 4242" in capsys.readouterr().out
        assert cli.main(["status", "--json"]) == 0  # still RUNNING: it is checkpointing
    run = next(r for r in json.loads(capsys.readouterr().out)["runs"] if r["job_id"] == "4242")
    assert run["state"] == "cancelled" and "stopping (SLURM: RUNNING)" in run["detail"]
    with slurm.use_runner(FakeCluster.queue(sacct="4242|CANCELLED by 0\n")):
        assert cli.main(["status", "--json"]) == 0
    run = next(r for r in json.loads(capsys.readouterr().out)["runs"] if r["job_id"] == "4242")
    assert (run["state"], run["detail"]) == ("cancelled", f"cancelled by {USER}")


def test_cancel_an_array_by_its_id(slurm_results: Path) -> None:
    cluster = FakeCluster.queue()
    with slurm.use_runner(cluster):
        assert cli.main(["cancel", "555"]) == 0
    assert cluster.calls == [["scancel", "555"]]  # one scancel for the whole array
    for task in (1, 2):
        record = read_events(folder_of(slurm_results, task))[-1]
        assert (record["event"], record["job_id"]) == ("cancel_requested", "555")


def test_a_failed_scancel_records_nothing(slurm_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = folder_of(slurm_results, 0)
    before = read_events(folder)

    def refuse(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            argv, 1, "", "scancel: error: Kill job error on job id 4242: denied"
        )

    with slurm.use_runner(refuse):
        assert cli.main(["cancel", "4242"]) == 1
    assert read_events(folder) == before


def test_nothing_to_cancel(tmp_path: Path) -> None:
    finished = write_log(
        folder_of(tmp_path, 0),
        [
            *started(None, -100),
            {"event": "finished", "time": -10, "epoch": 10, "iteration": 0},
        ],
    )
    assert cli.main(["cancel", str(finished)]) == 1
    here = {"host": socket.gethostname()}  # a plain `nnslurm train` on this host whose process is gone
    gone = write_log(
        folder_of(tmp_path, 1), [{**record, **here} for record in started(None, -100, pid=2**22 + 7)]
    )
    assert run_status(gone).state == "killed"
    assert cli.main(["cancel", str(gone)]) == 1
    assert read_events(gone)[-1]["event"] == "started"


# --- logs ----------------------------------------------------------------------------------------------


@pytest.fixture
def logged_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    results = tmp_path / "results"
    logs = tmp_path / "logs" / "31"
    logs.mkdir(parents=True)
    (logs / "31_0_log.out").write_text("start 1\nstart 2 (requeued)\n")
    (logs / "31_0_log.err").write_text("epoch 1/3 done: 2.00 it/s\n")
    submitted = {
        "event": "submitted",
        "time": -60,
        "job_id": "local-31",
        "executor": "local",
        "log_folder": str(logs),
    }
    folder = write_log(folder_of(results, 0), [submitted, *started("local-31", -50)])
    monkeypatch.setenv("nnUNet_results", str(results))
    return folder, logs


def test_logs_prints_every_file_of_every_job(
    logged_run: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    folder, logs = logged_run
    for target in (str(folder), "31", "local-31"):
        assert cli.main(["logs", target]) == 0
        assert capsys.readouterr().out == (
            f"==> {logs / '31_0_log.out'} <==\nstart 1\nstart 2 (requeued)\n"
            f"==> {logs / '31_0_log.err'} <==\nepoch 1/3 done: 2.00 it/s\n"
        )


def test_logs_finds_the_default_folder_and_says_when_there_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    results = tmp_path / "results"
    monkeypatch.setenv("nnUNet_results", str(results))
    folder = write_log(folder_of(results, 0), started("88", -50))  # e.g. submitted from another machine
    default = results / ".nnslurm" / "submitit" / "88"
    default.mkdir(parents=True)
    (default / "88_0_log.out").write_text("hello from 88\n")
    assert cli.main(["logs", str(folder)]) == 0
    assert "hello from 88" in capsys.readouterr().out
    plain = write_log(folder_of(results, 1), started(None, -50))
    assert cli.main(["logs", str(plain)]) == 1


def test_logs_follow_until_the_run_ends(logged_run: tuple[Path, Path]) -> None:
    folder, logs = logged_run
    env = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, "-m", "nnslurm", "logs", str(folder), "-f", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    output = Output(process.stdout)
    wait_for(lambda: "epoch 1/3 done" in output.text, 120, "both files printed")
    with open(logs / "31_0_log.out", "a") as stream:
        stream.write("start 3 (requeued again)\n")
    wait_for(lambda: "start 3 (requeued again)" in output.text, 60, "the appended line")
    assert process.poll() is None  # the run is running (on node7): it keeps following
    with open(folder / "nnslurm_events.jsonl", "a") as stream:
        stream.write(
            json.dumps(
                {
                    "event": "finished",
                    "time": time.time(),
                    "host": "node7",
                    "pid": 100,
                    "job_id": "local-31",
                    "epoch": 10,
                    "iteration": 0,
                }
            )
            + "\n"
        )
    process.wait(timeout=30)
    out, err = output.rest(), process.stderr.read()
    assert process.returncode == 0, err
    assert out.endswith(f"==> {logs / '31_0_log.out'} <==\nstart 3 (requeued again)\n")
