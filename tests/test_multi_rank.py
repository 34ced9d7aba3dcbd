"""`nnslurm train -num_gpus 2 -device cpu`: two real nnU-Net ranks (gloo) stopped by real signals, to the
launcher or to one rank only, and resumed; a rank SIGKILLed; another number of ranks mid-epoch.

Two ranks on a CPU share its cores (one torch thread each on two cores), so the runs are tiny: 2
epochs of 3 iterations, two validation steps. Each start pays seconds of spawn and imports per rank.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from support import (
    PACED,
    TINY_PLANS,
    NnunetEnv,
    events_of,
    final_weights,
    nnslurm,
    patience,
    processes_with_marker,
    stops_and_resumes,
    train_until_finished,
    wait_for,
)

pytestmark = pytest.mark.nnunet

TRAINER = "nnUNetTrainerRankSignals"
RUN = [
    "-d", "501", "-f", "0", "-p", TINY_PLANS, "--device", "cpu", "-num_gpus", "2",
    "--epochs", "2", "--iterations-per-epoch", "3", "--val-iterations-per-epoch", "2",
    "--deterministic", "--no-final-validation", "-tr", f"rank_signal_trainers:{TRAINER}",
]  # fmt: skip


def _two_ranks_env(nnunet_env: NnunetEnv, **extra: str) -> dict[str, str]:
    return nnunet_env.env(nnUNet_n_proc_DA="0", NNSLURM_NO_PROGRESS="1", **extra)


def test_stops_by_launcher_rank0_rank1_end_bitwise_equal_to_never_stopped(
    nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    reference = NnunetEnv(nnunet_env.raw, nnunet_env.preprocessed, tmp_path / "reference")
    reference.results.mkdir()
    assert train_until_finished(_two_ranks_env(reference), RUN) == [0]

    marker = uuid.uuid4().hex
    # to the launcher mid-epoch; to rank 1 only during validation; to rank 0 only in the second epoch
    points = "0:0@launcher,v0:0@1,1:0@0"
    env = _two_ranks_env(
        nnunet_env,
        NNSLURM_TEST_RANK_SIGNALS=points,
        NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"),
        NNSLURM_TEST_MARKER=marker,
    )
    outputs = []
    for _ in range(3):
        result = nnslurm(["train", *RUN], env)
        assert result.returncode == 75, result.stderr[-4000:]
        assert "ranks ended: rank 0 exited 75, rank 1 exited 75" in result.stderr  # every process
        outputs.append(result.stderr)
    assert (tmp_path / "fired").read_text().split() == points.split(",")
    assert train_until_finished(env, RUN) == [0]
    assert not processes_with_marker(marker), "a rank or its launcher outlived the run"

    run_folder = nnunet_env.run_folder(TRAINER)
    stopped, resumed = stops_and_resumes(run_folder)
    # The launcher forwards at once: rank 0 signals it during iteration 0; the signal is in the
    # agreement started at boundary 1, whose answer every rank reads at boundary 2: all stop there
    # (nnslurm.training.agreement: the answer is read one boundary later). The validation stop is
    # "training part of epoch 0 done"; the third as the first, in epoch 1.
    assert stopped == [(0, 2), (0, 3), (1, 2)]
    assert resumed == stopped  # no iteration redone
    assert [e["signal"] for e in events_of(run_folder, "stopped")] == ["USR1"] * 3
    stop_writes = [e for e in events_of(run_folder, "checkpoint") if e["reason"] == "stop"]
    assert [(e["epoch"], e["iteration"]) for e in stop_writes] == stopped  # one checkpoint per stop
    assert {e.get("world_size") for e in events_of(run_folder, "started")} == {2}

    expected, actual = final_weights(reference.run_folder(TRAINER)), final_weights(run_folder)
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not expected[key].equal(actual[key])]
    assert not different, f"weights differ after three stops: {different[:5]}"


def test_other_world_size_refused_mid_epoch_allowed_at_epoch_end(
    nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    env = _two_ranks_env(
        nnunet_env, NNSLURM_TEST_RANK_SIGNALS="1:0@0", NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired")
    )
    first = nnslurm(["train", *RUN], env)
    assert first.returncode == 75, first.stderr[-4000:]
    run_folder = nnunet_env.run_folder(TRAINER)
    checkpoint = torch.load(run_folder / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    meta = checkpoint["nnslurm"]
    assert (meta["epoch"], meta["iteration"], meta["world_size"]) == (1, 2, 2)
    assert len(meta["rank_states"]) == 2
    assert not torch.equal(meta["rank_states"][0]["rng"]["torch"], meta["rank_states"][1]["rng"]["torch"])

    before = _files(run_folder)
    one_rank = [*RUN, "-num_gpus", "1"]  # the last one counts
    refused = nnslurm(["train", *one_rank], env)
    assert refused.returncode == 1, refused.stderr[-4000:]
    assert "written by 2 rank(s) in the middle of epoch 1 (iteration 2); this start has 1" in refused.stderr
    assert "HINT: resume with 2 rank(s) in all" in refused.stderr and "Traceback" not in refused.stderr
    assert _files(run_folder) == before  # nothing written

    # the hint's other way: from the last epoch end, with one rank (fresh random stream, logged)
    resumed = nnslurm(["train", *one_rank, "--resume-from", "best"], env)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "written by 2 rank(s), this start has 1: at an epoch boundary" in resumed.stderr
    assert events_of(run_folder, "resumed")[-1]["epoch"] == 1
    assert events_of(run_folder, "resumed")[-1]["iteration"] == 0


def test_a_rank_killed_ends_the_run_resumable(nnunet_env: NnunetEnv) -> None:
    marker = uuid.uuid4().hex
    env = _two_ranks_env(nnunet_env, NNSLURM_TEST_MARKER=marker, NNSLURM_MIN_ITERATION_S_RESUMED="0")
    paced = [*RUN, *PACED, "--epochs", "4"]  # the last -tr and --epochs count
    run_folder = nnunet_env.run_folder("nnUNetTrainerPaced")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "nnslurm", "train", *paced],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for((run_folder / "checkpoint_best.pth").exists, patience(90), "the first epoch", interval=0.05)
    ranks = _ranks_of(launcher.pid)
    assert len(ranks) == 2 and launcher.poll() is None, "the run ended before the kill"
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=patience(40))  # rank 0 fails at its next collective
    assert launcher.returncode == 1, stderr[-4000:]
    assert re.search(r"rank 1 killed by SIGKILL", stderr), stderr[-4000:]
    assert "run the same command" in stderr
    wait_for(lambda: not processes_with_marker(marker), patience(10), "every process of the run to end")
    assert train_until_finished(env, paced) == [0]  # resumable from its newest checkpoint
    assert events_of(run_folder, "resumed")[-1]["epoch"] >= 1


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the run folder but the lock (its holder is rewritten by each start)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".nnslurm.lock"
    }


def _ranks_of(launcher: int) -> list[int]:
    """The launcher's rank processes (spawned interpreters), oldest first: rank 0, rank 1."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return sorted(ranks)
