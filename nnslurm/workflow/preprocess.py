"""The preprocess stage: nnU-Net's own fingerprinting, planning and preprocessing, as stoppable units.

The units are nnUNetv2_plan_and_preprocess's three steps through its API
(nnunetv2.experiment_planning.plan_and_preprocess_api), the last one per configuration:

  fingerprint (dataset_fingerprint.json) -> plans (<plans>.json) -> each configuration's data folder

A stop is acted on between units. A unit is done only when its marker says so (nnslurm.workflow.
units), written after it completed and recording what it was made from: the raw dataset's files
(paths, sizes, mtimes), the fingerprint's and the plans' sha256, the planner settings. A restart
redoes an interrupted unit whole (nnU-Net rewrites all of it: a new fingerprint with clean=True,
the plans file, the configuration's data folder after `rmtree`) and skips finished ones; a unit
whose inputs changed since (a new fingerprint, other plans) is redone too.

A configuration that the plans do not have (3d_lowres for small images: nnU-Net plans it only
when the images are much larger than the patch) is skipped with a message, as nnU-Net's own
`preprocess_dataset` does ("Configuration 3d_lowres not found in plans file ... Skipping."); it is
never an error. Two configurations with one data folder (3d_cascade_fullres uses 3d_fullres's)
are preprocessed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnslurm.core.config import StageSettings
from nnslurm.core.errors import UsageError
from nnslurm.core.locations import PREPROCESSED, RAW, dataset_stage_folder, env_folder
from nnslurm.slurm.cpus import WORKERS_ENV, read_cpu_budget
from nnslurm.workflow.stage import StageJob, StopCheck, run_stage
from nnslurm.workflow.units import file_sha256, read_marker, remove_marker, run_unit, write_marker

logger = logging.getLogger(__name__)

STAGE = "preprocess"
# nnUNetv2_plan_and_preprocess -c's default; 3d_cascade_fullres needs no data of its own.
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
DEFAULT_PLANNER = "ExperimentPlanner"  # -pl's default: plans "nnUNetPlans"


@dataclass(frozen=True)
class PreprocessSpec:
    """What nnUNetv2_plan_and_preprocess is asked to do, for one dataset (its flag per field)."""

    dataset_id: int  # -d (one dataset)
    configurations: tuple[str, ...] = DEFAULT_CONFIGURATIONS  # -c
    planner: str = DEFAULT_PLANNER  # -pl: the experiment planner class (names the plans)
    gpu_memory_target_gb: float | None = None  # -gpu_memory_target: None = the planner's default
    overwrite_plans_name: str | None = None  # -overwrite_plans_name: the plans file's name
    verify_dataset_integrity: bool = True  # --verify_dataset_integrity (nnslurm checks by default)
    processes: int | None = None  # -np and -npfp; None: the job's CPUs (nnslurm.slurm.cpus)


def raw_dataset_name(dataset_id: int) -> str:
    """DatasetXXX_Name of `dataset_id` in $nnUNet_raw (what preprocessing reads), or UsageError."""
    raw = env_folder(RAW)
    found = sorted(p.name for p in raw.glob(f"Dataset{dataset_id:03d}_*") if (p / "dataset.json").is_file())
    if len(found) != 1:
        what = "no dataset" if not found else f"several datasets ({', '.join(found)})"
        raise UsageError(
            f"{what} with id {dataset_id} in nnUNet_raw={raw}.",
            hint="preprocessing reads $nnUNet_raw/DatasetXXX_Name/dataset.json, imagesTr and labelsTr: "
            "check the id and nnUNet_raw (see nnU-Net's documentation/dataset_format.md).",
        )
    return found[0]


def stage_folder(dataset: str) -> Path:
    """The stage's event log and unit markers: $nnUNet_preprocessed/DatasetXXX_Name/.nnslurm/preprocess."""
    return dataset_stage_folder(env_folder(PREPROCESSED, must_exist=False) / dataset, STAGE)


def run_preprocess(spec: PreprocessSpec, settings: StageSettings | None = None) -> str:
    """The whole stage in this process (stoppable: exits 75 on a stop); returns the plans identifier."""
    dataset = raw_dataset_name(spec.dataset_id)
    planned: list[str] = []
    run_stage(
        STAGE,
        stage_folder(dataset),
        lambda check: planned.append(preprocess(spec, check)),
        settings or StageSettings(),
    )
    return planned[0]


def preprocess(spec: PreprocessSpec, check: StopCheck) -> str:
    """Every unit not yet done, `check` between them; returns the plans identifier."""
    dataset = raw_dataset_name(spec.dataset_id)
    processes, source = _processes(spec)
    base = env_folder(PREPROCESSED, must_exist=False) / dataset
    base.mkdir(parents=True, exist_ok=True)
    units = _Units(spec, dataset, base, processes, check)
    logger.info("%s: nnU-Net gets -np %d (%s)", dataset, processes, source)
    logger.info("%s: importing nnU-Net's planning and preprocessing", dataset)
    from nnunetv2.experiment_planning import plan_and_preprocess_api  # seconds

    units.api = plan_and_preprocess_api
    units.fingerprint()
    plans_identifier = units.plans()
    for configuration in spec.configurations:
        units.configuration(plans_identifier, configuration)
    logger.info("%s: preprocessed (plans %s) in %s", dataset, plans_identifier, base)
    return plans_identifier


class _Units:
    """The stage's units over one dataset; each skips itself when its marker says it is done."""

    def __init__(
        self, spec: PreprocessSpec, dataset: str, base: Path, processes: int, check: StopCheck
    ) -> None:
        self.spec, self.dataset, self.base, self.processes, self.check = spec, dataset, base, processes, check
        self.markers = stage_folder(dataset)
        self.raw = raw_digest(env_folder(RAW) / dataset)
        self.progress_bar = sys.stderr.isatty()  # tqdm bars would fill a SLURM log
        self.api: Any = None

    def fingerprint(self) -> str:
        """dataset_fingerprint.json; returns its sha256."""
        marker, path = self.markers / "fingerprint.json", self.base / "dataset_fingerprint.json"
        done = read_marker(marker)
        if done and done.get("raw") == self.raw and done.get("sha256") == file_sha256(path):
            logger.info("%s: fingerprint already done (%s)", self.dataset, marker)
            return str(done["sha256"])

        def work() -> None:
            logger.info("%s: unit fingerprint (-np %d)", self.dataset, self.processes)
            remove_marker(marker)
            started = time.perf_counter()
            try:
                self.api.extract_fingerprints(
                    [self.spec.dataset_id],
                    num_processes=self.processes,
                    check_dataset_integrity=self.spec.verify_dataset_integrity,
                    clean=True,  # a fingerprint a kill left behind may be torn: always a new one
                    verbose=False,
                    show_progress_bar=self.progress_bar,
                )
            except AssertionError as error:  # verify_dataset_integrity's way of saying what is wrong
                raise UsageError(
                    f"nnU-Net's dataset integrity check failed for {self.dataset}: {error}",
                    hint="fix the raw dataset (see nnU-Net's documentation/dataset_format.md), then run "
                    "the same command again.",
                ) from error
            write_marker(
                marker,
                {
                    "unit": "fingerprint",
                    "dataset": self.dataset,
                    "raw": self.raw,
                    "sha256": file_sha256(path),
                    "verify_dataset_integrity": self.spec.verify_dataset_integrity,
                    "processes": self.processes,
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )

        run_unit(self.check, "fingerprint", work)
        return str(read_marker(marker)["sha256"])  # type: ignore[index]

    def plans(self) -> str:
        """<plans>.json by the planner; returns the plans identifier."""
        fingerprint = file_sha256(self.base / "dataset_fingerprint.json")
        marker = self.markers / "plans.json"
        wanted = {
            "planner": self.spec.planner,
            "gpu_memory_target_gb": self.spec.gpu_memory_target_gb,
            "overwrite_plans_name": self.spec.overwrite_plans_name,
            "fingerprint_sha256": fingerprint,
        }
        done = read_marker(marker)
        if done and all(done.get(k) == v for k, v in wanted.items()):
            identifier = str(done["plans_identifier"])
            if done.get("sha256") == file_sha256(self.base / f"{identifier}.json"):
                logger.info("%s: plans %s already done (%s)", self.dataset, identifier, marker)
                return identifier

        def work() -> None:
            logger.info("%s: unit plans (planner %s)", self.dataset, self.spec.planner)
            remove_marker(marker)
            started = time.perf_counter()
            if self.spec.overwrite_plans_name is not None:
                _remove_torn_json(self.base / f"{self.spec.overwrite_plans_name}.json")
            for existing in self.base.glob("*Plans*.json"):
                _remove_torn_json(existing)  # the planner merges into an existing plans file: it must parse
            with _planning_threads(self.processes):
                identifier = self.api.plan_experiments(
                    [self.spec.dataset_id],
                    self.spec.planner,
                    self.spec.gpu_memory_target_gb,
                    overwrite_plans_name=self.spec.overwrite_plans_name,
                )
            write_marker(
                marker,
                {
                    "unit": "plans",
                    **wanted,
                    "plans_identifier": identifier,
                    "sha256": file_sha256(self.base / f"{identifier}.json"),
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )

        _check_planner(self.spec.planner)
        run_unit(self.check, "plans", work)
        return str(read_marker(marker)["plans_identifier"])  # type: ignore[index]

    def configuration(self, plans_identifier: str, configuration: str) -> None:
        """One configuration's data folder, e.g. nnUNetPlans_3d_fullres, with every case."""
        plans_file = self.base / f"{plans_identifier}.json"
        plans = json.loads(plans_file.read_text())
        if configuration not in plans.get("configurations", {}):
            logger.info(
                "%s: configuration %s is not in %s (it has: %s); skipped, as nnU-Net's preprocess skips it",
                self.dataset,
                configuration,
                plans_file.name,
                ", ".join(plans.get("configurations", {})),
            )
            return
        data_identifier = _data_identifier(plans, configuration)
        marker = self.markers / f"data_{data_identifier}.json"
        wanted = {
            "raw": self.raw,
            "plans_sha256": file_sha256(plans_file),
            "data_identifier": data_identifier,
        }
        done = read_marker(marker)
        if (
            done
            and all(done.get(k) == v for k, v in wanted.items())
            and (self.base / data_identifier).is_dir()
        ):
            logger.info("%s: %s already preprocessed (%s)", self.dataset, configuration, marker)
            return

        def work() -> None:
            logger.info(
                "%s: unit %s -> %s (-np %d)", self.dataset, configuration, data_identifier, self.processes
            )
            remove_marker(marker)
            started = time.perf_counter()
            self.api.preprocess_dataset(
                self.spec.dataset_id,
                plans_identifier,
                [configuration],
                [self.processes],
                verbose=False,
                show_progress_bar=self.progress_bar,
            )
            write_marker(
                marker,
                {
                    "unit": "configuration",
                    "configuration": configuration,
                    "plans_identifier": plans_identifier,
                    **wanted,
                    "cases": len(list((self.base / data_identifier).glob("*.pkl"))),
                    "processes": self.processes,
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )

        run_unit(self.check, configuration, work)


def raw_digest(folder: Path) -> str:
    """What the raw dataset is, cheaply: sha256 over every file's path, size and mtime (no contents)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            info = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _data_identifier(plans: dict[str, Any], configuration: str) -> str:
    """The configuration's data folder name, following `inherits_from` as nnU-Net's PlansManager does."""
    configurations = plans["configurations"]
    entry = configurations[configuration]
    seen = {configuration}
    while "data_identifier" not in entry and entry.get("inherits_from") not in (None, *seen):
        seen.add(entry["inherits_from"])
        entry = configurations[entry["inherits_from"]]
    return str(entry.get("data_identifier", f"{plans.get('plans_name', 'nnUNetPlans')}_{configuration}"))


def _check_planner(name: str) -> None:
    """-pl names a class nnU-Net finds (it would fail with "'NoneType' object is not callable")."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = os.path.join(nnunetv2.__path__[0], "experiment_planning")
    if recursive_find_python_class(folder, name, current_module="nnunetv2.experiment_planning") is None:
        raise UsageError(
            f"no experiment planner class {name!r} in nnunetv2.experiment_planning.",
            hint="pass -pl as nnUNetv2_plan_and_preprocess takes it, e.g. ExperimentPlanner or "
            "nnUNetPlannerResEncM.",
        )


def _processes(spec: PreprocessSpec) -> tuple[int, str]:
    if spec.processes is not None:
        return spec.processes, "-np"
    budget = read_cpu_budget()
    return budget.cpus, budget.source


def _remove_torn_json(path: Path) -> None:
    """A JSON file nnU-Net wrote in place and a kill cut short: nnU-Net would fail reading it."""
    try:
        json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError:
        logger.warning(
            "removing %s: not complete JSON (a previous attempt was killed while writing it)", path
        )
        path.unlink()


@contextlib.contextmanager
def _planning_threads(processes: int) -> Iterator[None]:
    """The planner calls torch.set_num_threads(nnUNet_n_proc_DA): 0 (nnslurm's deterministic
    training mode) crashes it, so a value that is not a positive count becomes the job's CPUs."""
    saved = os.environ.get(WORKERS_ENV)
    if saved is not None and not (saved.isdigit() and int(saved) > 0):
        os.environ[WORKERS_ENV] = str(processes)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[WORKERS_ENV] = saved


class PreprocessJob(StageJob):
    """The preprocess stage as a submitit job; every start does the units not yet done.

    The result (`job.result()`) is the plans identifier, e.g. "nnUNetPlans"."""

    stage = STAGE

    def __init__(self, spec: PreprocessSpec, settings: StageSettings | None = None) -> None:
        self.spec = spec
        self.settings = settings or StageSettings()

    def run(self) -> str:
        return run_preprocess(self.spec, self.settings)

    def events_folder(self) -> Path:
        return stage_folder(raw_dataset_name(self.spec.dataset_id))

    def __repr__(self) -> str:
        return (
            f"PreprocessJob(dataset={self.spec.dataset_id}, configurations={list(self.spec.configurations)})"
        )
