"""nnU-Net's conventions: dataset names, plans, folds, the run folder's name, trainer classes.

The nnUNet_* folders themselves (read from the environment on each call, like nnunetv2/paths.py)
and nnslurm's own folders are nnslurm.core.locations'.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
import re
from pathlib import Path
from typing import Any

from nnslurm.core.config import RunSpec
from nnslurm.core.errors import NnunetSetupError
from nnslurm.core.locations import PREPROCESSED, RAW, RESULTS, env_folder

logger = logging.getLogger(__name__)

_DATASET_NAME = re.compile(r"^Dataset(\d{3})_[A-Za-z0-9_\-]+$")


def dataset_name(dataset: str) -> str:
    """'501', '0501' or 'Dataset501_Name' -> 'Dataset501_Name', looked up like nnU-Net does."""
    text = dataset.strip()
    if _DATASET_NAME.match(text):
        wanted_id = int(text[7:10])
        exact_name: str | None = text
    elif text.isdigit():
        wanted_id = int(text)
        exact_name = None
    else:
        raise NnunetSetupError(
            f"dataset {dataset!r} is neither an id (e.g. 501) nor a name like Dataset501_Name.",
            hint="pass the same dataset id or name you give nnUNetv2_train.",
        )
    searched = []
    for variable in (PREPROCESSED, RAW, RESULTS):
        value = os.environ.get(variable)
        if not value or not Path(value).is_dir():
            continue
        searched.append(f"{variable}={value}")
        for entry in sorted(Path(value).iterdir()):
            match = _DATASET_NAME.match(entry.name)
            same_id = match is not None and int(match.group(1)) == wanted_id
            if entry.is_dir() and same_id and exact_name in (None, entry.name):
                return entry.name
    where = ", ".join(searched) if searched else "no nnUNet_* folder is set"
    raise NnunetSetupError(
        f"dataset {dataset!r} not found (searched {where}).",
        hint="check the id, or create the dataset and run nnUNetv2_plan_and_preprocess "
        f"-d {wanted_id} --verify_dataset_integrity.",
    )


def load_plans(run: RunSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plans and dataset.json nnU-Net trains with; checks plans, configuration and data exist."""
    name = dataset_name(run.dataset)
    base = env_folder(PREPROCESSED) / name
    dataset_id = int(name[7:10])
    plans_file = base / f"{run.plans}.json"
    if not plans_file.is_file():
        available = sorted(p.stem for p in base.glob("*.json") if p.stem not in ("dataset", "splits_final"))
        available = [a for a in available if a != "dataset_fingerprint"]
        raise NnunetSetupError(
            f"plans {run.plans!r} not found for {name} ({plans_file} is missing; "
            f"available: {', '.join(available) or 'none'}).",
            hint=f"run nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity, "
            "or pass -p with one of the available plans.",
        )
    plans: dict[str, Any] = json.loads(plans_file.read_text())
    dataset_json: dict[str, Any] = json.loads((base / "dataset.json").read_text())
    configurations = plans.get("configurations", {})
    if run.configuration not in configurations:
        raise NnunetSetupError(
            f"configuration {run.configuration!r} is not in {plans_file.name} "
            f"(it has: {', '.join(configurations)}).",
            hint="pass one of those with --configuration (as nnUNetv2_train's CONFIGURATION).",
        )
    data_identifier = configurations[run.configuration].get("data_identifier")
    if data_identifier and not (base / data_identifier).is_dir():
        raise NnunetSetupError(
            f"{name} is not preprocessed for {run.configuration!r} ({base / data_identifier} is missing).",
            hint=f"run nnUNetv2_preprocess -d {dataset_id} -plans_name {run.plans} -c {run.configuration}.",
        )
    check_fold(run.fold, base)
    return plans, dataset_json


def check_fold(fold: str, preprocessed_dataset: Path) -> None:
    """A fold is 'all' or an index into splits_final.json (5 folds when nnU-Net has not written it yet)."""
    if fold == "all":
        return
    splits_file = preprocessed_dataset / "splits_final.json"
    n_folds = len(json.loads(splits_file.read_text())) if splits_file.is_file() else 5
    if not fold.isdigit() or not 0 <= int(fold) < n_folds:
        raise NnunetSetupError(
            f"fold {fold!r} is out of range: this dataset has folds 0..{n_folds - 1} (or 'all').",
            hint="pass --fold 0..4 as for nnUNetv2_train, or 'all' to train on every case.",
        )


def output_folder(run: RunSpec, trainer_class_name: str | None = None) -> Path:
    """$nnUNet_results/DatasetXXX_Name/Trainer__Plans__Config/fold_N, as nnU-Net names it."""
    trainer = trainer_class_name or run.trainer.rpartition(":")[2]
    name = dataset_name(run.dataset)
    return env_folder(RESULTS) / name / (f"{trainer}__{run.plans}__{run.configuration}") / f"fold_{run.fold}"


def find_trainer_class(name: str) -> type:
    """The trainer class nnU-Net would use for -tr NAME; `package.module:Class` for your own.

    nnU-Net's own lookup imports every trainer module and dies if one of them fails to import
    (here: primus trainers need a torchvision that matches torch). We skip modules that fail.
    """
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise NnunetSetupError(
                f"cannot import {module_name!r} for trainer {name!r}: {error}",
                hint="make the module importable (PYTHONPATH or pip install -e) on the machine that trains.",
            ) from error
        found = getattr(module, class_name, None)
        if not isinstance(found, type):
            raise NnunetSetupError(f"{module_name} has no class {class_name!r}.")
        return found
    base = importlib.import_module("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    if name == "nnUNetTrainer":
        trainer: type = base.nnUNetTrainer
        return trainer
    package = importlib.import_module("nnunetv2.training.nnUNetTrainer")
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            module = importlib.import_module(info.name)
        except Exception as error:  # a broken optional trainer must not hide the others
            logger.debug("skipping trainer module %s: %s", info.name, error)
            continue
        found = getattr(module, name, None)
        if isinstance(found, type):
            return found
    raise NnunetSetupError(
        f"trainer class {name!r} not found in nnunetv2.training.nnUNetTrainer.",
        hint="check the spelling (-tr as for nnUNetv2_train), or pass your own as package.module:ClassName.",
    )
