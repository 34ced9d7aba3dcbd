"""The find-best stage: nnU-Net's find_best_configuration over the models and folds just trained.

First it checks that every model × fold has what nnU-Net's find_best_configuration reads
(nnunetv2/evaluation/find_best_configuration.py, 2.8): the model folder's plans.json and
dataset.json (accumulate_cv_results copies them), `fold_X/validation/` with its predictions and
summary.json (written at the end of the final validation, so it says the validation completed),
and, to ensemble two models (ensemble_crossvalidations), an `.npz` of probabilities for every
validation case (`--npz` in training, or `--val --npz` afterwards). A missing piece is refused
with its run, fold and fix, before nnU-Net runs for minutes and fails on the first one.

Then it calls find_best_configuration with exactly those models and folds. That is ONE unit,
redone whole after an interruption: nnU-Net picks the best of all results inside one call, and
splitting it (accumulate each model, ensemble each pair, then pick) would mean re-implementing
its choice. `overwrite=True` makes a rerun rebuild every folder it writes (crossval_results_folds_*,
ensembles/*, postprocessed/) instead of trusting what a killed attempt left. nnU-Net writes
inference_information.json in place (save_json), so the file alone can be torn or stale: the
stage's marker (`done.json`, written atomically after the file was read back and compared with
what find_best_configuration returned, with its sha256) is the signal that it is complete;
`read_inference_information` is the one reader the predict stage should use.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from nnslurm.core.config import StageSettings
from nnslurm.core.errors import NnunetSetupError, UsageError
from nnslurm.core.locations import PREPROCESSED, RESULTS, dataset_stage_folder, env_folder
from nnslurm.core.nnunet import dataset_name
from nnslurm.slurm.cpus import read_cpu_budget
from nnslurm.workflow.stage import StageJob, StopCheck, run_stage
from nnslurm.workflow.units import file_sha256, read_marker, remove_marker, run_unit, write_marker

logger = logging.getLogger(__name__)

STAGE = "find_best"
INFORMATION_FILE = "inference_information.json"  # nnU-Net's names, in $nnUNet_results/DatasetXXX_Name
INSTRUCTIONS_FILE = "inference_instructions.txt"


class TrainedModel(NamedTuple):
    """One trained model, as nnUNetv2_find_best_configuration names it (-c, -tr, -p)."""

    configuration: str  # -c
    trainer: str = "nnUNetTrainer"  # -tr: class name, or nnslurm's package.module:Class
    plans: str = "nnUNetPlans"  # -p

    @property
    def trainer_class_name(self) -> str:
        return self.trainer.rpartition(":")[2]

    @property
    def folder_name(self) -> str:
        """nnU-Net's Trainer__Plans__Configuration."""
        return f"{self.trainer_class_name}__{self.plans}__{self.configuration}"


@dataclass(frozen=True)
class FindBestSpec:
    """What nnUNetv2_find_best_configuration is asked to compare (its flag per field)."""

    dataset: str  # DATASET: id or DatasetXXX_Name
    models: tuple[TrainedModel, ...]  # -c × -tr × -p: the (configuration, trainer, plans) trained
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)  # -f
    allow_ensembling: bool = True  # not --disable_ensembling (ensembles need two models and --npz)
    processes: int | None = None  # -np; None: the job's CPUs (nnslurm.slurm.cpus)

    def __post_init__(self) -> None:
        # Plain (configuration, trainer, plans) tuples and lists are accepted: stored as TrainedModel.
        object.__setattr__(self, "models", tuple(TrainedModel(*m) for m in self.models))
        object.__setattr__(self, "folds", tuple(int(f) for f in self.folds))

    @property
    def ensembles(self) -> bool:
        return self.allow_ensembling and len(self.models) > 1


def results_dataset(dataset: str) -> Path:
    """$nnUNet_results/DatasetXXX_Name, where nnU-Net writes inference_information.json."""
    return env_folder(RESULTS) / dataset_name(dataset)


def stage_folder(dataset: str) -> Path:
    """The stage's event log and its marker: $nnUNet_results/DatasetXXX_Name/.nnslurm/find_best."""
    return dataset_stage_folder(results_dataset(dataset), STAGE)


def run_find_best(spec: FindBestSpec, settings: StageSettings | None = None) -> dict[str, Any]:
    """The whole stage in this process (stoppable: exits 75 on a stop); returns nnU-Net's result,
    the content of inference_information.json."""
    check_ready(spec)  # before the stage: a refusal is not a failed stage start
    found: list[dict[str, Any]] = []
    run_stage(
        STAGE,
        stage_folder(spec.dataset),
        lambda check: found.append(find_best(spec, check)),
        settings or StageSettings(),
    )
    return found[0]


def find_best(spec: FindBestSpec, check: StopCheck) -> dict[str, Any]:
    """Refuse what is not ready, skip what is done, else nnU-Net's find_best_configuration (one unit)."""
    check_ready(spec)
    name = dataset_name(spec.dataset)
    marker = stage_folder(spec.dataset) / "done.json"
    inputs = _inputs(spec)
    done = read_marker(marker)
    if done and done.get("inputs") == inputs:
        try:
            information = read_inference_information(spec.dataset)
            logger.info("%s: find best already done (%s)", name, marker)
            return information
        except NnunetSetupError as error:
            logger.info("%s: redoing find best: %s", name, error)
    processes, source = _processes(spec)
    logger.info("%s: nnU-Net gets -np %d (%s)", name, processes, source)
    logger.info("%s: importing nnU-Net's evaluation", name)
    from nnunetv2.evaluation.find_best_configuration import find_best_configuration  # seconds

    results: list[dict[str, Any]] = []

    def work() -> None:
        remove_marker(marker)  # from here until the new marker, inference_information.json is not complete
        started = time.perf_counter()
        result = find_best_configuration(
            name,
            [
                {"plans": m.plans, "configuration": m.configuration, "trainer": m.trainer_class_name}
                for m in spec.models
            ],
            allow_ensembling=spec.allow_ensembling,
            num_processes=processes,
            overwrite=True,
            folds=spec.folds,
            strict=True,
        )
        information = results_dataset(spec.dataset) / INFORMATION_FILE
        expected = json.loads(json.dumps(result))  # tuples as lists, as save_json wrote them
        if json.loads(information.read_text()) != expected:
            raise NnunetSetupError(f"{information} does not hold what find_best_configuration returned.")
        best = result["best_model_or_ensemble"]
        write_marker(
            marker,
            {
                "stage": STAGE,
                "dataset": name,
                "inputs": inputs,
                "inference_information_sha256": file_sha256(information),
                "inference_instructions_sha256": file_sha256(information.with_name(INSTRUCTIONS_FILE)),
                "selected": best["selected_model_or_models"],
                "postprocessing_file": best["postprocessing_file"],
                "processes": processes,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        results.append(result)

    logger.info(
        "%s: unit find best: %d model(s), folds %s, ensembling %s",
        name,
        len(spec.models),
        " ".join(map(str, spec.folds)),
        "on" if spec.ensembles else "off",
    )
    run_unit(check, "find best", work)
    return results[0]


def read_inference_information(dataset: str) -> dict[str, Any]:
    """inference_information.json once the find-best stage completed it; NnunetSetupError before
    (never run, interrupted, or the file changed since: a torn or stale file is never returned)."""
    marker = stage_folder(dataset) / "done.json"
    information = results_dataset(dataset) / INFORMATION_FILE
    done = read_marker(marker)
    if done is None:
        raise NnunetSetupError(
            f"find best has not completed for {dataset_name(dataset)} (no {marker}).",
            hint="run `nnslurm find-best` for the trained models first (again, if it was interrupted).",
        )
    if done.get("inference_information_sha256") != file_sha256(information):
        raise NnunetSetupError(
            f"{information} changed after find best completed (or is missing).",
            hint="run `nnslurm find-best` again to rewrite it.",
        )
    content: dict[str, Any] = json.loads(information.read_text())
    return content


def check_ready(spec: FindBestSpec) -> None:
    """UsageError naming every model × fold that lacks what find_best_configuration reads."""
    if not spec.models:
        raise UsageError("find best needs at least one trained model (-c, -tr, -p).")
    if not spec.folds or any(f < 0 for f in spec.folds):
        raise UsageError(
            f"-f {' '.join(map(str, spec.folds))}: folds are numbers 0..N-1 of the cross-validation."
        )
    name = dataset_name(spec.dataset)
    preprocessed = env_folder(PREPROCESSED) / name
    results = results_dataset(spec.dataset)
    problems: list[str] = []
    if not (preprocessed / "gt_segmentations").is_dir():
        problems.append(f"{preprocessed / 'gt_segmentations'} is missing (nnU-Net's preprocessing writes it)")
    for model in spec.models:
        problems += _model_problems(model, spec, preprocessed, results / model.folder_name)
    if problems:
        listed = "\n  ".join(problems)
        raise UsageError(
            f"{name}: not ready for find best:\n  {listed}",
            hint="train each missing fold to the end (nnslurm train DATASET CONFIGURATION FOLD -tr T -p P"
            + (" --npz" if spec.ensembles else "")
            + "); a fold trained without --npz gets its probabilities with `nnslurm train ... --val --npz`"
            + (", or pass --disable_ensembling" if spec.ensembles else "")
            + ".",
        )


def _model_problems(model: TrainedModel, spec: FindBestSpec, preprocessed: Path, folder: Path) -> list[str]:
    plans_file = preprocessed / f"{model.plans}.json"
    if not plans_file.is_file():
        return [f"{model.folder_name}: plans {plans_file} not found"]
    configurations = json.loads(plans_file.read_text()).get("configurations", {})
    if model.configuration not in configurations:
        return [f"{model.folder_name}: {plans_file.name} has no configuration {model.configuration!r}"]
    if not folder.is_dir():
        return [f"{model.folder_name}: not trained ({folder} does not exist)"]
    missing = [f for f in ("plans.json", "dataset.json") if not (folder / f).is_file()]
    if missing:
        return [f"{model.folder_name}: {', '.join(missing)} missing in {folder}"]
    problems = []
    for fold in spec.folds:
        validation = folder / f"fold_{fold}" / "validation"
        if not (validation / "summary.json").is_file():
            problems.append(
                f"{model.folder_name} fold {fold}: not trained to the end "
                f"(no fold_{fold}/validation/summary.json: training or its final validation did not finish)"
            )
            continue
        if spec.ensembles:
            ending = _file_ending(folder)
            cases = {p.name.removesuffix(ending) for p in validation.glob(f"*{ending}")}
            npz = {p.name.removesuffix(".npz") for p in validation.glob("*.npz")}
            if not npz:
                problems.append(
                    f"{model.folder_name} fold {fold}: no .npz probabilities in fold_{fold}/validation "
                    "(ensembling needs them: the fold was trained without --npz)"
                )
            elif cases - npz:
                problems.append(
                    f"{model.folder_name} fold {fold}: no .npz for {', '.join(sorted(cases - npz))} "
                    f"in fold_{fold}/validation"
                )
    return problems


def _file_ending(model_folder: Path) -> str:
    ending: str = json.loads((model_folder / "dataset.json").read_text()).get("file_ending", ".nii.gz")
    return ending


def _inputs(spec: FindBestSpec) -> dict[str, Any]:
    """What a completed find best was made from: a change (a fold retrained, other models) redoes it."""
    results = results_dataset(spec.dataset)
    summaries = {
        f"{m.folder_name}/fold_{f}": file_sha256(
            results / m.folder_name / f"fold_{f}" / "validation" / "summary.json"
        )
        for m in spec.models
        for f in spec.folds
    }
    return {
        "models": [m.folder_name for m in spec.models],
        "folds": list(spec.folds),
        "allow_ensembling": spec.allow_ensembling,
        "validation_summaries": summaries,
    }


def _processes(spec: FindBestSpec) -> tuple[int, str]:
    if spec.processes is not None:
        return spec.processes, "-np"
    budget = read_cpu_budget()
    return budget.cpus, budget.source


class FindBestJob(StageJob):
    """The find-best stage as a submitit job; the result is nnU-Net's inference information."""

    stage = STAGE

    def __init__(self, spec: FindBestSpec, settings: StageSettings | None = None) -> None:
        self.spec = spec
        self.settings = settings or StageSettings()

    def run(self) -> dict[str, Any]:
        return run_find_best(self.spec, self.settings)

    def events_folder(self) -> Path:
        return stage_folder(self.spec.dataset)

    def __repr__(self) -> str:
        models = ", ".join(m.folder_name for m in self.spec.models)
        return f"FindBestJob(dataset={self.spec.dataset}, models=[{models}], folds={list(self.spec.folds)})"
