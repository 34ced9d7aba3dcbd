"""Real nnU-Net training on the synthetic dataset, stopped by real signals and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from support import (
    PACED,
    SIGNAL_TRAINER,
    TINY_TRAINING,
    NnunetEnv,
    final_weights,
    nnslurm,
    patience,
    processes_with_marker,
    read_events,
    stops_and_resumes,
    train_until_finished,
    wait_for,
)

pytestmark = pytest.mark.nnunet

PACED_NAME = "nnUNetTrainerPaced"  # the run folder of -tr PACED


def test_deterministic_stops_end_bitwise_identical(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    args = [*TINY_TRAINING, *SIGNAL_TRAINER, "--deterministic", "--no-final-validation"]
    reference = NnunetEnv(nnunet_env.raw, nnunet_env.preprocessed, tmp_path / "reference")
    reference.results.mkdir()
    assert train_until_finished(reference.env(), args) == [0]

    # mid-epoch, the first iteration of an epoch, during validation, the last iteration
    points = "0:2,1:0,v1:0,2:4"
    env = nnunet_env.env(NNSLURM_TEST_SIGNALS=points, NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"))
    codes = train_until_finished(env, args)
    assert codes == [75, 75, 75, 75, 0]

    run_folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    stopped, resumed = stops_and_resumes(run_folder)
    assert stopped == [(0, 3), (1, 1), (1, 5), (2, 5)]
    assert resumed == stopped  # no iteration redone
    expected = final_weights(reference.run_folder("nnUNetTrainerSignals"))
    actual = final_weights(run_folder)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_normal_mode_with_workers_resumes_exact_position(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = nnunet_env.env(
        nnUNet_n_proc_DA="2",
        NNSLURM_TEST_SIGNALS="0:3,1:2",
        NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"),
        NNSLURM_TEST_SIGNAL="TERM",
        NNSLURM_TEST_MARKER=marker,
    )
    codes = train_until_finished(env, [*TINY_TRAINING, *SIGNAL_TRAINER, "--no-final-validation"])
    assert codes == [75, 75, 0]
    run_folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    stopped, resumed = stops_and_resumes(run_folder)
    assert resumed == stopped == [(0, 4), (1, 3)]
    assert (run_folder / "checkpoint_final.pth").is_file()
    final = torch.load(run_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3
    assert not processes_with_marker(marker), "data-augmentation workers survived the stop"


def test_signal_from_outside_during_training(nnunet_env: NnunetEnv) -> None:
    """A real SIGUSR1 from another process, at whatever instant it lands, as SLURM sends it (the
    paced trainer: the run is still training when it lands, however fast the machine)."""
    env = nnunet_env.env()
    args = ["train", *TINY_TRAINING, *PACED, "--epochs", "4", "--no-final-validation"]
    process = subprocess.Popen(
        [sys.executable, "-m", "nnslurm", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_folder = nnunet_env.run_folder(PACED_NAME)
    wait_for((run_folder / "checkpoint_best.pth").exists, patience(40), "the first epoch", interval=0.05)
    assert process.poll() is None, "the run ended before the signal"
    sent = time.time()
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=patience(20))
    assert process.returncode == 75, stderr[-3000:]
    stop = [e for e in read_events(run_folder) if e["event"] == "stopped"][-1]
    assert stop["signal"] == "USR1"
    assert stop["epoch"] < 4  # stopped mid-run, not after the last epoch
    assert stop["time"] - sent < patience(3)
    assert train_until_finished(env, args[1:]) == [0]
    stopped, resumed = stops_and_resumes(run_folder)
    assert resumed == stopped


def test_signal_during_final_validation_is_resumable(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    env = nnunet_env.env(NNSLURM_TEST_SIGNALS="final", NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"))
    args = [*TINY_TRAINING, *SIGNAL_TRAINER, "--stop-deadline", "1"]
    started = time.time()
    first = nnslurm(["train", *args], env)
    assert first.returncode == 75, first.stderr[-3000:]
    assert time.time() - started < patience(40)
    run_folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    assert (run_folder / "checkpoint_final.pth").is_file()
    assert not (run_folder / "validation" / "summary.json").exists()
    second = nnslurm(["train", *args], env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (run_folder / "validation" / "summary.json").is_file()
    events = read_events(run_folder)
    assert [e["event"] for e in events if e["event"] in ("stopped", "resumed", "finished")] == [
        "stopped",
        "resumed",
        "finished",
    ]
    assert events[-1]["epoch"] == 3


def test_signal_after_final_checkpoint_ends_finished(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    """The warning arrives right after checkpoint_final.pth was written, and the process takes
    longer than --stop-deadline to end: the run is finished; the stop is not acted on (exit 0)."""
    env = nnunet_env.env(
        NNSLURM_TEST_SIGNALS="after_final",
        NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"),
        NNSLURM_TEST_AFTER_SIGNAL_S="3",  # the deadline (1 s) passes before the process ends
    )
    args = [*TINY_TRAINING, *SIGNAL_TRAINER, "--no-final-validation", "--stop-deadline", "1"]
    run_folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    result = nnslurm(["train", *args], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "fired").read_text().split() == ["after_final"]
    final = torch.load(run_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3
    names = [e["event"] for e in read_events(run_folder)]
    assert names[-1] == "finished" and "stopped" not in names and "signal" not in names, names
    assert read_events(run_folder)[-1]["epoch"] == 3


def test_sigkill_during_checkpoint_write_keeps_previous(nnunet_env: NnunetEnv) -> None:
    """Kill -9 while a big checkpoint is being written: the old file stays loadable and is resumed."""
    marker = uuid.uuid4().hex
    env = nnunet_env.env(NNSLURM_TEST_PADDING_MB="300", NNSLURM_TEST_MARKER=marker)
    args = [
        *TINY_TRAINING,
        "-tr",
        "signal_trainers:nnUNetTrainerBigState",
        "--epochs",
        "4",
        "--no-final-validation",
    ]
    run_folder = nnunet_env.run_folder("nnUNetTrainerBigState")
    process = subprocess.Popen(
        [sys.executable, "-m", "nnslurm", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # wait until a checkpoint exists, then until the next write is in flight
    wait_for(
        (run_folder / "checkpoint_latest.pth").exists, patience(60), "the first checkpoint", interval=0.01
    )
    wait_for(
        lambda: list(run_folder.glob(".*nnslurm-tmp-*")), patience(60), "a write in flight", interval=0.002
    )
    process.kill()
    assert process.wait(timeout=patience(10)) == -signal.SIGKILL  # killed, not ended
    # the kernel kills them when their parent dies (PR_SET_PDEATHSIG), a moment after it
    wait_for(
        lambda: not processes_with_marker(marker), patience(4), "the workers of the SIGKILLed trainer to die"
    )
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth"):
        if (run_folder / name).exists():
            torch.load(run_folder / name, map_location="cpu", weights_only=False)  # loads: not torn
    result = nnslurm(["train", *args], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"stale lock in {run_folder}: pid {process.pid}" in result.stderr
    assert not list(run_folder.glob(".*nnslurm-tmp-*")), "temp file of the killed write left behind"
    resumed = [e for e in read_events(run_folder) if e["event"] == "resumed"]
    assert resumed and resumed[0]["epoch"] >= 1


def test_second_trainer_in_same_folder_is_refused(nnunet_env: NnunetEnv) -> None:
    env = nnunet_env.env()
    args = ["train", *TINY_TRAINING, *PACED, "--epochs", "50", "--no-final-validation"]
    first = subprocess.Popen(
        [sys.executable, "-m", "nnslurm", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = nnunet_env.run_folder(PACED_NAME) / ".nnslurm.lock"
        wait_for(
            lambda: lock.exists() and lock.read_text(),
            patience(20),
            "the first trainer's lock",
            interval=0.05,
        )
        second = nnslurm(args, env)
        assert second.returncode == 1
        assert "already being trained" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=patience(20)) == 75


def test_resume_with_other_epoch_count_is_refused(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    env = nnunet_env.env(NNSLURM_TEST_SIGNALS="1:1", NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"))
    args = [*TINY_TRAINING, *SIGNAL_TRAINER, "--no-final-validation"]
    assert nnslurm(["train", *args], env).returncode == 75
    run_folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    before = {p.name: p.read_bytes() for p in run_folder.glob("checkpoint_*.pth")}
    result = nnslurm(["train", *args, "--epochs", "7"], env)
    assert result.returncode == 1
    assert "num_epochs=3" in result.stderr and "num_epochs=7" in result.stderr
    assert {p.name: p.read_bytes() for p in run_folder.glob("checkpoint_*.pth")} == before


def test_signal_to_every_process_spares_the_workers(nnunet_env: NnunetEnv) -> None:
    """SLURM signals every process of a step: workers must neither die of it nor act on it."""
    marker = uuid.uuid4().hex
    env = nnunet_env.env(nnUNet_n_proc_DA="2", NNSLURM_TEST_MARKER=marker)
    args = ["train", *TINY_TRAINING, *PACED, "--epochs", "4", "--no-final-validation"]
    process = subprocess.Popen(
        [sys.executable, "-m", "nnslurm", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_folder = nnunet_env.run_folder(PACED_NAME)
    wait_for((run_folder / "checkpoint_best.pth").exists, patience(40), "the first epoch", interval=0.05)
    workers = [pid for pid in processes_with_marker(marker) if pid != process.pid]
    assert len(workers) >= 2, "expected data-augmentation worker processes"
    assert process.poll() is None, "the run ended before the signal"
    os.killpg(process.pid, signal.SIGUSR1)
    _, stderr = process.communicate(timeout=patience(20))
    assert process.returncode == 75, stderr[-3000:]
    stops = [e for e in read_events(run_folder) if e["event"] in ("signal", "stopped")]
    assert [e["event"] for e in stops] == ["signal", "stopped"]  # acted on once, by the trainer
    assert stops[-1]["epoch"] < 4  # mid-run
    wait_for(lambda: not processes_with_marker(marker), patience(4), "the workers to end with the trainer")
