"""What nnslurm leaves behind works with plain nnU-Net: `--c`, `--val` and `nnUNetv2_predict`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_PLANS, TINY_TRAINING, NnunetEnv, nnslurm

pytestmark = pytest.mark.nnunet

BIN = Path(sys.executable).parent

# nnUNetv2_train --c, step by step: its own trainer construction and checkpoint choice
# (nnunetv2/run/run_training.py), then its own loop for one more epoch, shortened.
PLAIN_CONTINUE = f"""
import torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
trainer = get_trainer_from_args("501", "3d_fullres", 0, "nnUNetTrainer", "{TINY_PLANS}",
                                continue_training=True, device=torch.device("cpu"))
maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
print("RESUMED_AT_EPOCH", trainer.current_epoch)
trainer.num_epochs = trainer.current_epoch + 1
trainer.num_iterations_per_epoch = 2
trainer.num_val_iterations_per_epoch = 1
trainer.run_training()
print("PLAIN_DONE")
"""


def test_plain_nnunet_continue_accepts_a_mid_epoch_stop(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    env = nnunet_env.env(NNSLURM_TEST_SIGNALS="1:2", NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"))
    stopped = nnslurm(
        ["train", *TINY_TRAINING, "-tr", "signal_trainers:nnUNetTrainerSignals", "--no-final-validation"], env
    )
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    # Same files under nnU-Net's own trainer name, as a user would have them.
    source = nnunet_env.run_folder("nnUNetTrainerSignals")
    target = nnunet_env.run_folder("nnUNetTrainer")
    shutil.copytree(source.parent, target.parent)
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_CONTINUE],
        env=nnunet_env.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESUMED_AT_EPOCH 1" in result.stdout  # the interrupted epoch is redone from its start
    assert "PLAIN_DONE" in result.stdout
    assert (target / "checkpoint_final.pth").is_file()


def test_plain_val_and_predict_on_a_finished_run(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    env = nnunet_env.env()
    finished = nnslurm(["train", *TINY_TRAINING, "--no-final-validation"], env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    created = [p for p in nnunet_env.run_folder().iterdir() if p.is_file()]
    assert created and not [p.name for p in created if p.stat().st_mode & 0o002], "world-writable files"

    val = subprocess.run(
        [str(BIN / "nnUNetv2_train"), "501", "3d_fullres", "0", "-p", TINY_PLANS, "--val", "-device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert val.returncode == 0, val.stderr[-3000:]
    assert (nnunet_env.run_folder() / "validation" / "summary.json").is_file()

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(nnunet_env.raw / "Dataset501_Synthetic" / "imagesTr" / "case_000_0000.nii.gz", inputs)
    predict = subprocess.run(
        [
            str(BIN / "nnUNetv2_predict"),
            "-i",
            str(inputs),
            "-o",
            str(tmp_path / "out"),
            "-d",
            "501",
            "-c",
            "3d_fullres",
            "-p",
            TINY_PLANS,
            "-f",
            "0",
            "-chk",
            "checkpoint_final.pth",
            "-device",
            "cpu",
            "-npp",
            "1",
            "-nps",
            "1",
            "--disable_progress_bar",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert (tmp_path / "out" / "case_000.nii.gz").is_file()
