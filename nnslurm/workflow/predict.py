"""The prediction stage: nnU-Net inference, case by case, stoppable, resumable, never a torn file.

What it predicts is one trained model (nnUNetv2_predict's -d -c -tr -p -f -chk) or what
nnUNetv2_find_best_configuration chose (its `inference_information.json`): the best model or
ensemble and its postprocessing. The work is nnU-Net's own code, called per case in this process:
nnUNetPredictor.predict_from_files_sequential (what `nnUNetv2_predict -npp 0 -nps 0` runs, no
worker processes to orphan) for one case at a time, nnunetv2.ensembling.ensemble.merge_files per
case, nnunetv2.postprocessing's load_postprocess_save with the pkl find-best wrote.

Layout of OUTPUT_DIR:
- `CASE<file_ending>`: the final segmentations, named as nnUNetv2_predict names them, plus its
  side files (plans.json, dataset.json, predict_from_raw_data_args.json);
- `.nnslurm/`: the stage's event log and lock, `predict.json` (what this folder predicts: a
  rerun with another model is refused), `staging/` (files being written), `models/<member>/`
  (an ensemble member's probabilities, a cascade's previous stage; removed once all is done).

What to predict with, and its checks: nnslurm.workflow.predict_models. A case is a unit
(nnslurm.workflow.stage): done when its final file exists, which is moved into place complete
(nnslurm.workflow.outputs). A stop signal is acted on between cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnslurm.core.config import StageSettings
from nnslurm.core.errors import UsageError
from nnslurm.training.lock import RunLock
from nnslurm.workflow.outputs import Staging, publish, write_json_atomically
from nnslurm.workflow.predict_models import (
    Member,
    Plan,
    PredictSpec,
    resolve,
    trainer_lookup,
)
from nnslurm.workflow.stage import StageJob, StopCheck, run_stage

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

logger = logging.getLogger(__name__)

RECORD_FILE = "predict.json"
STAGE_NAME = "predict"
DEFAULT_STAGE_SETTINGS = StageSettings()  # stop signals, stop deadline, --max-requeues: as training's


@dataclass(frozen=True)
class PredictResult:
    """What a finished prediction stage returns (the submitit job's result)."""

    output_dir: Path
    cases: int  # input cases, each now with its final file in output_dir
    written: int  # of those, written by the last start (the others were there already)


# --- the work -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    identifier: str  # CASE in CASE_0000.nii.gz
    files: tuple[str, ...]  # its channels, in order


def list_cases(input_dir: Path, file_ending: str) -> list[Case]:
    """The input cases as nnU-Net finds them (utilities.utils), in this process (nnU-Net's own
    listing starts a pool of 12 processes)."""
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    files = sorted(p.name for p in Path(input_dir).iterdir() if p.name.endswith(file_ending))
    identifiers = get_identifiers_from_splitted_dataset_folder(str(input_dir), file_ending)
    return [Case(str(i), tuple(create_paths_fn(str(input_dir), files, file_ending, i))) for i in identifiers]


def predict(spec: PredictSpec, check: StopCheck) -> PredictResult:
    """Predict every input case whose final file is not in the output folder yet."""
    plan = resolve(spec)
    output = Path(spec.output_dir)
    spec.state_folder.mkdir(parents=True, exist_ok=True)
    with _output_lock(spec.state_folder):
        staging = Staging(output)
        staging.clear()
        _check_record(spec, plan, staging)
        dataset_json = json.loads((plan.members[0].folder / "dataset.json").read_text())
        ending = dataset_json["file_ending"]
        cases = list_cases(Path(spec.input_dir), ending)
        if not cases:
            raise UsageError(
                f"no images to predict in {spec.input_dir} (expected files named CASE_0000{ending}).",
                hint="nnU-Net's input naming: one file per channel, CASE_XXXX" + ending + ".",
            )
        done = set(cases_done(output, cases, ending))
        todo = [case for case in cases if case.identifier not in done]
        logger.info(
            "%d case(s) in %s, %d already predicted in %s",
            len(cases),
            spec.input_dir,
            len(cases) - len(todo),
            output,
        )
        _Work(spec, plan, staging, check, ending).run(todo)
        shutil.rmtree(spec.state_folder / "models", ignore_errors=True)  # every final file exists
        return PredictResult(output, len(cases), len(todo))


class _Work:
    def __init__(
        self, spec: PredictSpec, plan: Plan, staging: Staging, check: StopCheck, ending: str
    ) -> None:
        self.spec, self.plan, self.staging, self.check, self.ending = spec, plan, staging, check, ending
        self.output = Path(spec.output_dir)
        self.postprocessing = _load_postprocessing(plan.postprocessing_file)

    def run(self, todo: list[Case]) -> None:
        if not self.plan.ensemble:
            member = self.plan.members[0]
            self._previous_stage(member, todo)
            self._model(member, todo, self.output, probabilities=False, side_files=True)
            return
        for member in self.plan.members:
            self._previous_stage(member, todo)
            self._model(member, todo, self._member_folder(member), probabilities=True, side_files=False)
        self._ensemble(todo)

    def _member_folder(self, member: Member) -> Path:
        return self.spec.state_folder / "models" / member.model.identifier

    def _previous_stage(self, member: Member, todo: list[Case]) -> None:
        if member.previous is not None:
            self._previous_stage(member.previous, todo)
            self._model(member.previous, todo, self._member_folder(member.previous), False, side_files=False)

    def _model(
        self, member: Member, todo: list[Case], target: Path, probabilities: bool, side_files: bool
    ) -> None:
        """One model over the cases not yet in `target`; final output: with postprocessing."""
        final = target == self.output
        need = [case for case in todo if not (target / (case.identifier + self.ending)).is_file()]
        if side_files:
            self._write_side_files(member)
        if not need:
            return
        self.check("loading model")
        predictor = self._predictor(member)
        previous = self._member_folder(member.previous) if member.previous is not None else None
        for case in need:
            self.check("predicting")
            with self.staging.folder(case.identifier) as folder:
                staged = folder / case.identifier
                with _nnunet_output():
                    predictor.predict_from_files_sequential(
                        [list(case.files)],
                        [str(staged)],
                        save_probabilities=probabilities,
                        overwrite=True,
                        folder_with_segs_from_prev_stage=str(previous) if previous is not None else None,
                    )
                seg = self._postprocessed(Path(str(staged) + self.ending), folder) if final else None
                moves = [
                    (Path(f"{staged}{ext}"), target / f"{case.identifier}{ext}") for ext in (".npz", ".pkl")
                ]
                moves = moves if probabilities else []
                moves.append(
                    (seg or Path(str(staged) + self.ending), target / (case.identifier + self.ending))
                )
                publish(moves)
            logger.info("%s: %s written (%s)", member.model.identifier, case.identifier + self.ending, target)
            self.check.unit_done()

    def _ensemble(self, todo: list[Case]) -> None:
        """nnU-Net's merge_files per case over the members' probabilities, then postprocessing."""
        from nnunetv2.ensembling.ensemble import merge_files
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        first = self.plan.members[0].folder  # as ensemble_folders: plans and labels of the first
        dataset_json = json.loads((first / "dataset.json").read_text())
        plans = json.loads((first / "plans.json").read_text())
        plans_manager = PlansManager(plans)
        writer, labels = (
            plans_manager.image_reader_writer_class(),
            plans_manager.get_label_manager(dataset_json),
        )
        write_json_atomically(self.output / "dataset.json", dataset_json, self.staging, sort_keys=False)
        write_json_atomically(self.output / "plans.json", plans, self.staging, sort_keys=False)
        for case in todo:
            self.check("ensembling")
            inputs = [str(self._member_folder(m) / f"{case.identifier}.npz") for m in self.plan.members]
            with self.staging.folder(case.identifier) as folder:
                staged = folder / case.identifier
                with _nnunet_output():
                    merge_files(inputs, str(staged), self.ending, writer, labels, save_probabilities=False)
                seg = self._postprocessed(Path(str(staged) + self.ending), folder) or Path(
                    str(staged) + self.ending
                )
                publish([(seg, self.output / (case.identifier + self.ending))])
            logger.info("ensemble: %s written", case.identifier + self.ending)
            self.check.unit_done()

    def _postprocessed(self, segmentation: Path, folder: Path) -> Path | None:
        """nnUNetv2_apply_postprocessing's load_postprocess_save on one staged file; None: no pkl."""
        if self.postprocessing is None:
            return None
        from nnunetv2.postprocessing.remove_connected_components import load_postprocess_save
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        functions, kwargs = self.postprocessing
        plans = json.loads((self.plan.members[0].folder / "plans.json").read_text())
        out = folder / "postprocessed" / segmentation.name
        out.parent.mkdir()
        load_postprocess_save(
            str(segmentation), str(out), PlansManager(plans).image_reader_writer_class(), functions, kwargs
        )
        return out

    def _predictor(self, member: Member) -> nnUNetPredictor:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        device = _torch_device(self.spec.device)
        with _nnunet_output():
            predictor = nnUNetPredictor(
                tile_step_size=self.spec.step_size,
                use_gaussian=True,
                use_mirroring=not self.spec.disable_tta,
                perform_everything_on_device=True,
                device=device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            folds = [fold if fold == "all" else int(fold) for fold in member.model.folds]
            with trainer_lookup(self.spec.trainers):
                predictor.initialize_from_trained_model_folder(
                    str(member.folder), folds, member.model.checkpoint
                )
        logger.info("model %s folds %s on %s", member.model.identifier, " ".join(member.model.folds), device)
        return predictor

    def _write_side_files(self, member: Member) -> None:
        """What nnUNetv2_predict (-npp 0 -nps 0 --continue_prediction) writes beside the segmentations;
        dataset.json and plans.json are the model's (the predictor's own copies of them)."""
        args = {
            "list_of_lists_or_source_folder": str(self.spec.input_dir),
            "output_folder_or_list_of_truncated_output_files": str(self.output),
            "save_probabilities": False,
            "overwrite": False,
            "folder_with_segs_from_prev_stage": None,
        }
        write_json_atomically(self.output / "predict_from_raw_data_args.json", args, self.staging)
        for name in ("dataset.json", "plans.json"):
            content = json.loads((member.folder / name).read_text())
            write_json_atomically(self.output / name, content, self.staging, sort_keys=False)


def _load_postprocessing(path: Path | None) -> tuple[list[Callable[..., Any]], list[dict[str, Any]]] | None:
    """find-best's (functions, kwargs); None when there is none or it does nothing."""
    if path is None:
        return None
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    functions, kwargs = load_pickle(str(path))
    return (list(functions), list(kwargs)) if functions else None


def _check_record(spec: PredictSpec, plan: Plan, staging: Staging) -> None:
    """The output folder holds the predictions of one model: a rerun with another is refused."""
    record = {
        "dataset": plan.dataset,
        "models": [dataclasses.asdict(m.model) for m in plan.members],
        "postprocessing_file": str(plan.postprocessing_file) if plan.postprocessing_file else None,
        "step_size": spec.step_size,
        "disable_tta": spec.disable_tta,
    }
    record = json.loads(json.dumps(record))  # tuples as lists, as read back
    path = spec.state_folder / RECORD_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != record:
            raise UsageError(
                f"{spec.output_dir} holds predictions of another model or setting ({path}: {previous}; "
                f"now: {record}).",
                hint="predict into a new output folder, or remove this one to predict it again.",
            )
        return
    write_json_atomically(path, record, staging)


def _output_lock(state_folder: Path) -> RunLock:
    return RunLock(
        state_folder,
        activity="predicted into",
        hint="wait for the other prediction to finish or stop it; two would write the same files.",
    )


@contextlib.contextmanager
def _nnunet_output() -> Iterator[None]:
    """nnU-Net prints a few lines per case: to the debug log, not to a job's stdout."""
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            yield
    finally:
        for line in text.getvalue().splitlines():
            if line.strip():
                logger.debug("nnU-Net: %s", line)


def _torch_device(name: str) -> Any:
    """nnUNetv2_predict's device setup, with the CPU threads this job was given (nnslurm.slurm.cpus)."""
    import torch

    from nnslurm.slurm.cpus import read_cpu_budget

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "-device cuda, but no CUDA device is visible to this process.",
            hint="check --gpus / CUDA_VISIBLE_DEVICES, or use -device cpu.",
        )
    if name == "cpu":
        torch.set_num_threads(read_cpu_budget().cpus)
    else:  # as nnUNetv2_predict: threads do not help on the GPU
        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):  # settable once per process
            torch.set_num_interop_threads(1)
    return torch.device(name)


# --- the submitit job -----------------------------------------------------------------------------


def run_prediction(spec: PredictSpec, settings: StageSettings = DEFAULT_STAGE_SETTINGS) -> PredictResult:
    """The stage in this process: returns when every case is written; a stop exits (75 / requeue)."""
    spec.state_folder.mkdir(parents=True, exist_ok=True)
    results: list[PredictResult] = []
    run_stage(STAGE_NAME, spec.state_folder, lambda check: results.append(predict(spec, check)), settings)
    return results[0]


class PredictJob(StageJob):
    """The prediction stage as a submitit job; every start goes on with the cases not yet written."""

    stage = STAGE_NAME

    def __init__(self, spec: PredictSpec, settings: StageSettings = DEFAULT_STAGE_SETTINGS) -> None:
        self.spec = spec
        self.settings = settings

    def run(self) -> PredictResult:
        result = run_prediction(self.spec, self.settings)
        logger.info("prediction finished: %d case(s) in %s", result.cases, result.output_dir)
        return result

    def events_folder(self) -> Path:
        self.spec.state_folder.mkdir(parents=True, exist_ok=True)
        return self.spec.state_folder

    def __repr__(self) -> str:
        what = self.spec.model.identifier if self.spec.model else "find-best"
        return f"PredictJob({what}, {self.spec.input_dir} -> {self.spec.output_dir})"


def cases_done(output_dir: Path, cases: Sequence[Case], ending: str) -> list[str]:
    """The cases whose final file is in `output_dir` (what a start skips)."""
    return [case.identifier for case in cases if (Path(output_dir) / (case.identifier + ending)).is_file()]
