"""What a prediction stage predicts with: nnUNetv2_predict's model (-d -c -tr -p -f -chk) or what
nnUNetv2_find_best_configuration chose, resolved against $nnUNet_results before anything is
written (every bad input a UsageError that names the fix), and nnU-Net's trainer lookup made to
find the trainers `nnslurm train -tr` finds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnslurm.core.errors import NnunetSetupError, UsageError
from nnslurm.core.locations import RESULTS, dataset_stage_folder, env_folder, output_state_folder
from nnslurm.core.nnunet import dataset_name

FIND_BEST_FILE = "inference_information.json"  # nnunetv2.evaluation.find_best_configuration writes it


@dataclass(frozen=True)
class ModelSpec:
    """One trained nnU-Net model, as nnUNetv2_predict names it."""

    configuration: str  # -c
    trainer: str = "nnUNetTrainer"  # -tr
    plans: str = "nnUNetPlans"  # -p
    folds: tuple[str, ...] = ("0", "1", "2", "3", "4")  # -f (nnUNetv2_predict's default)
    checkpoint: str = "checkpoint_final.pth"  # -chk

    @property
    def identifier(self) -> str:
        """nnU-Net's model folder name, Trainer__Plans__Config."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"


@dataclass(frozen=True)
class PredictSpec:
    """What one prediction stage does; `model=None` predicts what find-best chose."""

    input_dir: Path  # -i: images named CASE_XXXX<file_ending>, as for nnUNetv2_predict
    output_dir: Path  # -o
    dataset: str  # -d: id (501) or name (Dataset501_Name)
    model: ModelSpec | None = (
        None  # one model; None: $nnUNet_results/DatasetXXX_Name/inference_information.json
    )
    device: str = "auto"  # -device: cpu | cuda | auto (cuda when available)
    step_size: float = 0.5  # -step_size
    disable_tta: bool = False  # --disable_tta
    # `package.module:Class` of trainers outside nnU-Net's folder (nnslurm train -tr ...): the
    # predictor finds a model's trainer by its class name, which nnU-Net looks for only in its own
    trainers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"-device must be cpu, cuda or auto, got {self.device!r}.")
        if not 0 < self.step_size <= 1:
            raise UsageError(f"-step_size must be in (0, 1], got {self.step_size}.")

    @property
    def state_folder(self) -> Path:
        return output_state_folder(self.output_dir)


@dataclass(frozen=True)
class Member:
    """A model to run: its trained folder and where its predictions go."""

    model: ModelSpec
    folder: Path  # $nnUNet_results/DatasetXXX_Name/Trainer__Plans__Config
    previous: Member | None = None  # a cascade's previous stage, predicted first


@dataclass(frozen=True)
class Plan:
    """A PredictSpec resolved against nnU-Net's folders: every model exists."""

    dataset: str  # DatasetXXX_Name
    members: tuple[Member, ...]  # one: a single model; more: an ensemble
    postprocessing_file: Path | None  # find-best's postprocessing.pkl

    @property
    def ensemble(self) -> bool:
        return len(self.members) > 1


def resolve(spec: PredictSpec) -> Plan:
    """The spec against the filesystem; every bad input is a UsageError that names the fix."""
    if not Path(spec.input_dir).is_dir():
        raise UsageError(
            f"input folder {spec.input_dir} does not exist.",
            hint="pass -i with the folder of images to predict (CASE_0000.nii.gz, ...).",
        )
    try:
        name = dataset_name(spec.dataset)
        results = env_folder(RESULTS)
    except NnunetSetupError as error:
        raise UsageError(str(error.args[0]), hint=error.hint) from None
    if spec.model is not None:
        models: tuple[ModelSpec, ...] = (spec.model,)
        postprocessing = None
    else:
        models, postprocessing = chosen_by_find_best(results / name)
    return Plan(name, tuple(_member(results / name, model) for model in models), postprocessing)


def chosen_by_find_best(dataset_folder: Path) -> tuple[tuple[ModelSpec, ...], Path | None]:
    """The models and the postprocessing file in nnU-Net's find-best result (its keys:
    nnunetv2/evaluation/find_best_configuration.py, `return_dict`)."""
    path = dataset_folder / FIND_BEST_FILE
    dataset_id = dataset_folder.name[7:10].lstrip("0") or "0"
    if not path.is_file():
        raise UsageError(
            f"{path} not found: nnUNetv2_find_best_configuration has not been run for {dataset_folder.name}.",
            hint=f"run `nnUNetv2_find_best_configuration {dataset_id} -c CONFIGURATIONS` after training "
            "with --npz (it writes that file), or predict one model with -c CONFIGURATION.",
        )
    try:
        info = _find_best_result(dataset_folder, path)
        best = info["best_model_or_ensemble"]
        folds = tuple(str(fold) for fold in info["folds"])
        models = tuple(
            ModelSpec(
                configuration=chosen["configuration"],
                trainer=chosen["trainer"],
                plans=chosen["plans_identifier"],
                folds=folds,
            )
            for chosen in best["selected_model_or_models"]
        )
        postprocessing = best.get("postprocessing_file")
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(
            f"{path} is not a find-best result ({type(error).__name__}: {error}).",
            hint=f"run nnUNetv2_find_best_configuration {dataset_id} again to rewrite it.",
        ) from None
    if not models:
        raise UsageError(f"{path} names no model.", hint="run nnUNetv2_find_best_configuration again.")
    if postprocessing is not None and not Path(postprocessing).is_file():
        raise UsageError(
            f"the postprocessing file {postprocessing} that {path.name} names does not exist.",
            hint=f"run nnUNetv2_find_best_configuration {dataset_id} again (it writes postprocessing.pkl).",
        )
    return models, Path(postprocessing) if postprocessing is not None else None


@contextlib.contextmanager
def trainer_lookup(trainers: Sequence[str]) -> Iterator[None]:
    """nnU-Net's predictor finds the trainer class by the name in the checkpoint, importing every
    trainer module of nnU-Net: one that fails to import (primus: torchvision beside a CPU torch)
    ends the search, and trainers outside nnU-Net's folder are never found. Look them up as
    `nnslurm train -tr` does (nnslurm.core.nnunet.find_trainer_class), `trainers` first."""
    import nnunetv2.inference.predict_from_raw_data as predictor_module

    from nnslurm.core.nnunet import find_trainer_class

    def by_name(name: str) -> type:
        for spec in trainers:
            if spec.rpartition(":")[2] == name:
                return find_trainer_class(spec)
        return find_trainer_class(name)

    saved = {}
    replacements = {  # 2.7+: by name; 2.6: (folder, name, module)
        "recursive_find_trainer_class_by_name": by_name,
        "recursive_find_python_class": lambda _folder, name, _module: by_name(name),
    }
    for attribute, replacement in replacements.items():
        if hasattr(predictor_module, attribute):
            saved[attribute] = getattr(predictor_module, attribute)
            setattr(predictor_module, attribute, replacement)
    try:
        yield
    finally:
        for attribute, original in saved.items():
            setattr(predictor_module, attribute, original)


def _find_best_result(dataset_folder: Path, path: Path) -> Any:
    """nnslurm's find-best stage marks its result complete (an interrupted one never is): where it
    ran, only a complete result is read; a plain nnUNetv2_find_best_configuration's file as it is."""
    from nnslurm.workflow.find_best import STAGE, read_inference_information

    if dataset_stage_folder(dataset_folder, STAGE).is_dir():
        return read_inference_information(dataset_folder.name)
    return json.loads(path.read_text())


def _member(dataset_folder: Path, model: ModelSpec) -> Member:
    folder = dataset_folder / model.identifier
    missing = [f"fold_{fold}/{model.checkpoint}" for fold in model.folds]
    missing = [name for name in missing if not (folder / name).is_file()]
    if missing or not (folder / "plans.json").is_file():
        dataset_id = dataset_folder.name[7:10].lstrip("0") or "0"
        raise UsageError(
            f"no trained model {model.identifier} (folds {' '.join(model.folds)}, {model.checkpoint}) in "
            f"{dataset_folder}: missing {', '.join(missing) or 'plans.json'}.",
            hint=f"train it first (nnslurm train {dataset_id} {model.configuration} FOLD -tr {model.trainer} "
            f"-p {model.plans}), or pass the folds (-f) and checkpoint (-chk) that exist.",
        )
    plans = json.loads((folder / "plans.json").read_text())
    previous_name = plans.get("configurations", {}).get(model.configuration, {}).get("previous_stage")
    previous = None
    if previous_name:  # the cascade needs the previous stage's segmentations as input
        previous = _member(dataset_folder, dataclasses.replace(model, configuration=previous_name))
    return Member(model, folder, previous)
