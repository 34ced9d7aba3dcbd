"""Faults and signal storms on real processes with real signals: nothing lost, nothing silent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support import (
    SIGNAL_TRAINER,
    TINY_TRAINING,
    NnunetEnv,
    events_of,
    last_event,
    nnslurm,
    patience,
    processes_with_marker,
    read_events,
    stops_and_resumes,
    train_until_finished,
    wait_for,
)

pytestmark = pytest.mark.nnunet

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs / a read-only bind mount"
)


BIG_STATE = ["-tr", "signal_trainers:nnUNetTrainerBigState"]


def start(env: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nnslurm", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def loadable(run_folder: Path) -> list[str]:
    names = []
    for path in sorted(run_folder.glob("checkpoint_*.pth")):
        torch.load(path, map_location="cpu", weights_only=False)
        names.append(path.name)
    return names


def checkpoints_written(run_folder: Path) -> int:
    """How many checkpoint records the run's event log holds (0 before there is a log)."""
    return len(events_of(run_folder, "checkpoint")) if (run_folder / "nnslurm_events.jsonl").is_file() else 0


def test_sigkill_at_random_instants(nnunet_env: NnunetEnv) -> None:
    """Kill -9 three times at random instants (seeded) while checkpoints are written every epoch.

    Each kill lands on a start that is training: after that start's first checkpoint (an event), a
    random part of an epoch later; the paced trainer makes the run outlast every kill however fast
    the machine, and the exit status (-9, not 0 or 75) shows the kill, not the run's end, ended it."""
    chooser = random.Random(20261130)
    env = nnunet_env.env(NNSLURM_TEST_PADDING_MB="40", NNSLURM_MIN_ITERATION_S="0.3")  # an epoch >= 1.5 s
    args = [*TINY_TRAINING, *BIG_STATE, "--epochs", "8", "--no-final-validation"]
    run_folder = nnunet_env.run_folder("nnUNetTrainerBigState")
    for kill in range(3):
        before = checkpoints_written(run_folder)
        process = start(env, args)
        wait_for(
            lambda p=process, n=before: checkpoints_written(run_folder) > n or p.poll() is not None,
            patience(40),
            f"start {kill + 1}'s first checkpoint",
            interval=0.01,
        )
        assert process.poll() is None, f"start {kill + 1} ended before its kill: {process.communicate()[1]}"
        time.sleep(chooser.uniform(0.0, 1.0))  # the random instant: within the epoch now under way
        process.kill()
        assert process.wait(timeout=patience(10)) == -signal.SIGKILL, "the run ended before the kill"
        assert not (run_folder / "checkpoint_final.pth").exists()
        assert loadable(run_folder), "no loadable checkpoint after a SIGKILL"
    assert train_until_finished(env, args) == [0]
    assert not list(run_folder.glob(".*nnslurm-tmp-*"))
    final = torch.load(run_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 8


@pytest.mark.parametrize(
    ("first", "second", "during_the_stop"),
    [(signal.SIGUSR1, signal.SIGUSR1, False), (signal.SIGUSR1, signal.SIGTERM, True)],
    ids=["warning twice at once", "warning then TERM during the stop"],
)
def test_signal_storm_ends_resumable(
    nnunet_env: NnunetEnv, first: int, second: int, during_the_stop: bool
) -> None:
    """Two stop signals: back to back, or the second once the stop is under way (its "signal"
    record written, its checkpoint not yet: a 60 MB state takes a while to write). One stop, exit
    75, and the run resumes where it stopped."""
    env = nnunet_env.env(NNSLURM_TEST_PADDING_MB="60", NNSLURM_MIN_ITERATION_S="0.15")
    args = [*TINY_TRAINING, *BIG_STATE, "--epochs", "4", "--no-final-validation"]
    run_folder = nnunet_env.run_folder("nnUNetTrainerBigState")
    process = start(env, args)
    wait_for(
        lambda: checkpoints_written(run_folder) or process.poll() is not None,
        patience(40),
        "the first epoch",
        interval=0.01,
    )
    assert process.poll() is None, process.communicate()[1][-3000:]  # paced: 3 more epochs to go
    process.send_signal(first)
    if during_the_stop:
        wait_for(lambda: last_event(run_folder, "signal"), patience(10), "the stop to begin", interval=0.002)
    process.send_signal(second)
    if during_the_stop:
        assert last_event(run_folder, "stopped") is None, "the stop ended before the second signal"
    _, stderr = process.communicate(timeout=patience(20))
    assert process.returncode == 75, stderr[-3000:]
    assert len(events_of(run_folder, "stopped")) == 1
    assert len(events_of(run_folder, "signal")) == 1  # acted on once
    assert train_until_finished(env, args) == [0]
    stops, resumes = stops_and_resumes(run_folder)
    assert stops == resumes


def test_term_during_checkpoint_write(nnunet_env: NnunetEnv) -> None:
    """TERM while an epoch's checkpoint is being written: the stop waits for that write, then writes
    its own; no process left, both loadable, resumed exactly. The stop's record shows the signal
    arrived inside the write (between its start and its end, as the checkpoint record times it)."""
    marker = os.urandom(8).hex()
    env = nnunet_env.env(NNSLURM_TEST_PADDING_MB="300", NNSLURM_TEST_MARKER=marker)
    args = [*TINY_TRAINING, *BIG_STATE, "--no-final-validation"]
    run_folder = nnunet_env.run_folder("nnUNetTrainerBigState")
    process = start(env, args)
    wait_for(
        lambda: list(run_folder.glob(".*nnslurm-tmp-*")), patience(40), "a checkpoint write", interval=0.002
    )
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=patience(40))
    assert process.returncode == 75, stderr[-3000:]
    received = last_event(run_folder, "signal")
    assert received is not None and received["signal"] == "TERM"
    writes = [record for record in events_of(run_folder, "checkpoint") if record["reason"] != "stop"]
    assert any(
        write["time"] - write["seconds"] <= received["received_at"] <= write["time"] for write in writes
    ), f"TERM at {received['received_at']} fell in no checkpoint write: {writes}"
    assert not processes_with_marker(marker)
    assert "checkpoint_latest.pth" in loadable(run_folder)
    assert train_until_finished(env, args) == [0]
    stops, resumes = stops_and_resumes(run_folder)
    assert stops == resumes


def test_signal_during_startup(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    """USR1 while the trainer starts (data loaders built, no iteration yet), and start-up goes on
    longer than --stop-deadline: no boundary to stop at, so the deadline exits 75 from start-up,
    with nothing written by the stop; the next start trains from the beginning and finishes.
    (The same during the imports, before the run folder is known: tests/test_stoppable.py.)"""
    env = nnunet_env.env(
        NNSLURM_TEST_SIGNALS="startup",
        NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"),
        NNSLURM_TEST_AFTER_SIGNAL_S="60",  # start-up outlasts the deadline
    )
    args = [*TINY_TRAINING, *SIGNAL_TRAINER, "--no-final-validation", "--stop-deadline", "1"]
    first = nnslurm(["train", *args], env)
    assert first.returncode == 75, first.stderr[-3000:]
    assert "SIGUSR1 during startup: no iteration boundary within the deadline" in first.stderr
    run_folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    events = read_events(run_folder)
    assert [e["event"] for e in events] == ["started", "stopped"]  # no "signal": no boundary reached
    assert {k: events[1][k] for k in ("signal", "phase", "reason", "epoch", "iteration")} == {
        "signal": "USR1",
        "phase": "startup",
        "reason": "deadline",
        "epoch": 0,
        "iteration": 0,
    }
    assert not list(run_folder.glob("checkpoint_*.pth"))
    assert train_until_finished(env, args) == [0]
    assert (run_folder / "checkpoint_final.pth").is_file()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@needs_root
def test_disk_full_during_save_fails_clearly_and_keeps_previous(
    nnunet_env: NnunetEnv, small_disk: Path
) -> None:
    """A real full filesystem: the first checkpoints fit, a later one does not."""
    env = nnunet_env.env(nnUNet_results=str(small_disk), NNSLURM_TEST_PADDING_MB="5")
    args = [*TINY_TRAINING, *BIG_STATE, "--epochs", "50", "--no-final-validation"]
    run_folder = small_disk / "Dataset501_Synthetic" / "nnUNetTrainerBigState__nnslurmTinyPlans__3d_fullres"
    run_folder = run_folder / "fold_0"
    # fill the disk once the first checkpoint exists, leaving too little for the next one
    process = start(env, args)
    wait_for(
        lambda: (run_folder / "checkpoint_latest.pth").exists(),
        patience(40),
        "the first checkpoint",
        interval=0.01,
    )
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"], capture_output=True)
    _, stderr = process.communicate(timeout=patience(40))
    assert process.returncode == 1, stderr[-3000:]
    assert "No space left on device" in stderr and "checkpoint" in stderr
    assert "Traceback" not in stderr.split("ERROR nnslurm")[-1]
    assert "checkpoint_latest.pth" in loadable(run_folder)
    assert not list(run_folder.glob(".*nnslurm-tmp-*"))
    failed = [e for e in read_events(run_folder) if e["event"] == "failed"]
    assert failed and "No space left on device" in failed[-1]["error"]


@needs_root
def test_read_only_results_folder(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(["mount", "--bind", str(nnunet_env.results), str(read_only)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(read_only)], check=True)
        result = nnslurm(["train", *TINY_TRAINING], nnunet_env.env(nnUNet_results=str(read_only)))
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert result.returncode == 1
    assert "cannot write to the run folder" in result.stderr and "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
