"""A tiny real nnU-Net dataset (noise plus a bright sphere, label = sphere) for demos and tests,
and the paced trainer that makes its training outlast one start anywhere.

`-tr nnslurm.commands.synthetic:nnUNetTrainerPaced` is nnU-Net's trainer with a floor on the time per
training iteration, NNSLURM_MIN_ITERATION_S (default 0.15 s): the demo (`nnslurm demo`) and the
tests that rely on a real time limit (SLURM --time, the local executor's timeout) need training
that a start cannot finish, however fast the machine. NNSLURM_MIN_ITERATION_S_RESUMED, where set,
is the floor once the trainer has loaded a checkpoint (a later start): "0" paces only the start
that is to be interrupted, and the rest of the run goes at full speed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from nnslurm.core.errors import UsageError
from nnslurm.core.locations import PREPROCESSED, RAW, env_folder

logger = logging.getLogger(__name__)

TINY_PLANS = "nnslurmTinyPlans"  # nnUNetPlans with a 4-channel-wide network: ~0.1 s/iteration on a CPU
PACED_TRAINER = f"{__name__}:nnUNetTrainerPaced"  # -tr value of the paced trainer
MIN_ITERATION_ENV = "NNSLURM_MIN_ITERATION_S"
MIN_ITERATION_RESUMED_ENV = "NNSLURM_MIN_ITERATION_S_RESUMED"  # unset: the same floor after a resume
DEFAULT_MIN_ITERATION_S = 0.15


def make_synthetic_dataset(
    dataset_id: int = 501, name: str = "Synthetic", cases: int = 8, size: int = 32, preprocess: bool = True
) -> str:
    """Write DatasetXXX_Name into $nnUNet_raw and (optionally) plan + preprocess it with nnU-Net.

    Returns the dataset name. Refuses to overwrite an existing dataset of another name/id.
    """
    if not 1 <= dataset_id <= 999:
        raise UsageError(f"--id must be 1..999 (nnU-Net's three digits), got {dataset_id}.")
    if cases < 2 or size < 8:
        raise UsageError("a synthetic dataset needs at least 2 cases of at least 8 voxels per side.")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise UsageError(f"dataset name {name!r} may only contain letters, digits, '-' and '_'.")
    raw = env_folder(RAW, must_exist=False)
    dataset = f"Dataset{dataset_id:03d}_{name}"
    clashes = (
        [p.name for p in raw.glob(f"Dataset{dataset_id:03d}_*") if p.name != dataset] if raw.is_dir() else []
    )
    if clashes:
        raise UsageError(
            f"dataset id {dataset_id} is already used by {clashes[0]} in {raw}.",
            hint="pick another --id; nnslurm never overwrites a dataset.",
        )
    folder = raw / dataset
    if not (folder / "dataset.json").is_file():
        _write_raw(folder, cases, size)
    if preprocess:
        _plan_and_preprocess(dataset_id)
        _write_tiny_plans(dataset)
    return dataset


def _write_raw(folder: Path, cases: int, size: int) -> None:
    import numpy as np  # here: every command's --help would pay numpy's import
    import SimpleITK as sitk

    started = time.perf_counter()
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "imagesTr").mkdir(parents=True)
    (staging / "labelsTr").mkdir()
    generator = np.random.default_rng(seed=0)
    grid = np.indices((size, size, size)).astype(np.float32)
    for case in range(cases):
        center = generator.uniform(size * 0.3, size * 0.7, size=3)
        radius = generator.uniform(size * 0.15, size * 0.3)
        distance = np.sqrt(sum((grid[axis] - center[axis]) ** 2 for axis in range(3)))
        label = (distance <= radius).astype(np.uint8)
        image = generator.normal(0.0, 1.0, size=(size,) * 3).astype(np.float32) + 3.0 * label
        for array, target in (
            (image, f"imagesTr/case_{case:03d}_0000.nii.gz"),
            (label, f"labelsTr/case_{case:03d}.nii.gz"),
        ):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(itk, str(staging / target))
    dataset_json = {
        "channel_names": {"0": "noise"},
        "labels": {"background": 0, "sphere": 1},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": folder.name,
        "description": "nnslurm synthetic dataset: Gaussian noise plus a bright sphere; label = sphere",
    }
    (staging / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    staging.rename(folder)  # appears whole or not at all
    logger.info(
        "wrote %d synthetic cases of %d³ to %s in %.1f s", cases, size, folder, time.perf_counter() - started
    )


def _plan_and_preprocess(dataset_id: int) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    env_folder(PREPROCESSED, must_exist=False).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # nnU-Net's planner crashes when it inherits nnUNet_n_proc_DA=0 (the deterministic training mode).
    saved = os.environ.pop("nnUNet_n_proc_DA", None)
    try:
        extract_fingerprints([dataset_id], num_processes=2, check_dataset_integrity=True)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=("3d_fullres",), num_processes=(2,))
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved
    logger.info(
        "nnU-Net planned and preprocessed dataset %d in %.1f s", dataset_id, time.perf_counter() - started
    )


def _write_tiny_plans(dataset: str) -> None:
    """A plans file with narrow networks, reusing nnUNetPlans' preprocessed data (same data_identifier)."""
    base = env_folder(PREPROCESSED) / dataset
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    plans["plans_name"] = TINY_PLANS
    for configuration in plans["configurations"].values():
        arguments = configuration.get("architecture", {}).get("arch_kwargs", {})
        if "features_per_stage" in arguments:
            arguments["features_per_stage"] = [
                min(4 * 2**i, 32) for i in range(len(arguments["features_per_stage"]))
            ]
    (base / f"{TINY_PLANS}.json").write_text(json.dumps(plans, indent=2))


def min_iteration_s(resumed: bool = False) -> float:
    """The paced trainer's floor per training iteration, read when each iteration ends."""
    floor = float(os.environ.get(MIN_ITERATION_ENV) or DEFAULT_MIN_ITERATION_S)
    after_resume = os.environ.get(MIN_ITERATION_RESUMED_ENV)
    return float(after_resume) if resumed and after_resume else floor


def __getattr__(name: str) -> Any:
    """`-tr nnslurm.commands.synthetic:nnUNetTrainerPaced`, built on first use (nnU-Net imports are slow)."""
    if name == "nnUNetTrainerPaced":
        return _paced_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _paced_trainer() -> type:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerPaced(nnUNetTrainer):
        """nnU-Net's trainer, at least `min_iteration_s()` per training iteration."""

        resumed = False  # a checkpoint was loaded: this start continues a run

        def load_checkpoint(self, filename_or_checkpoint: Any) -> None:
            super().load_checkpoint(filename_or_checkpoint)
            self.resumed = True

        def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
            began = time.perf_counter()
            result: dict[str, Any] = super().train_step(batch)
            time.sleep(max(0.0, min_iteration_s(self.resumed) - (time.perf_counter() - began)))
            return result

    nnUNetTrainerPaced.__module__ = __name__
    return nnUNetTrainerPaced
