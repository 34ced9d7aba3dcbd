"""Checkpoints the real trainer cannot read are never discarded: the run stops, the folder stays as it was."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

import pytest
import torch
from support import TINY_TRAINING, NnunetEnv, folder_digests, nnslurm, read_events

pytestmark = pytest.mark.nnunet


def test_unreadable_but_undamaged_checkpoints_stop_the_run(nnunet_env: NnunetEnv) -> None:
    env = nnunet_env.env()
    args = ["train", *TINY_TRAINING, "--epochs", "1", "--no-final-validation"]
    first = nnslurm(args, env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_folder = nnunet_env.run_folder()
    checkpoints = sorted(run_folder.glob("checkpoint_*.pth"))
    assert checkpoints
    for path in checkpoints:  # as a custom trainer would: an object in init_args the safe loader refuses
        state = torch.load(path, map_location="cpu", weights_only=False)
        state["init_args"]["data_root"] = PurePosixPath("/data/custom")
        torch.save(state, path)
    before = folder_digests(run_folder)

    result = nnslurm(args, env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"no checkpoint in {run_folder} can be resumed" in result.stderr
    for path in checkpoints:
        assert f"{path.name} cannot be read in this environment: the safe loader" in result.stderr
    assert "pathlib.PurePosixPath" in result.stderr
    assert (
        "HINT:" in result.stderr and "--resume-from PATH" in result.stderr and "--start-over" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert folder_digests(run_folder) == before

    # The way forward the hint names: --start-over keeps every old file (renamed) and trains anew.
    again = nnslurm([*args, "--start-over"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    kept = {
        path.name.split(".unusable-")[0]: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in run_folder.glob("checkpoint_*.pth.unusable-*")
    }
    assert kept == {path.name: before[path.name] for path in checkpoints}
    last_start = [event for event in read_events(run_folder) if event["event"] in ("started", "resumed")][-1]
    assert (last_start["event"], last_start["epoch"], last_start["iteration"]) == ("started", 0, 0)
    assert (run_folder / "checkpoint_final.pth").is_file()
