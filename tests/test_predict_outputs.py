"""The prediction stage's pieces without nnU-Net: the staging writer (real files, a real kill), which
cases a start skips, reading find-best's result, and the job's picklability."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import wait_for

from nnslurm.core.errors import UsageError
from nnslurm.workflow.outputs import Staging, publish, write_json_atomically
from nnslurm.workflow.predict import PredictJob, cases_done, list_cases
from nnslurm.workflow.predict_models import ModelSpec, PredictSpec, chosen_by_find_best

REPO = Path(__file__).resolve().parents[1]


def test_publish_moves_complete_files_in_order_and_leaves_nothing_in_staging(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    with staging.folder("case_000") as folder:
        (folder / "case_000.npz").write_bytes(b"probabilities")
        (folder / "case_000.nii.gz").write_bytes(b"segmentation")
        publish(
            [
                (folder / "case_000.npz", tmp_path / "m" / "case_000.npz"),
                (folder / "case_000.nii.gz", tmp_path / "m" / "case_000.nii.gz"),
            ]
        )
    assert (tmp_path / "m" / "case_000.nii.gz").read_bytes() == b"segmentation"
    assert (tmp_path / "m" / "case_000.npz").read_bytes() == b"probabilities"
    assert list(staging.root.iterdir()) == []


def test_a_failed_write_leaves_neither_a_final_file_nor_a_staging_folder(tmp_path: Path) -> None:
    staging = Staging(tmp_path)
    with pytest.raises(RuntimeError), staging.folder("case_000") as folder:
        (folder / "case_000.nii.gz").write_bytes(b"half")
        raise RuntimeError("the writer died")
    assert not (tmp_path / "case_000.nii.gz").exists()
    assert list(staging.root.iterdir()) == []


def test_a_kill_during_a_write_leaves_the_file_in_staging_only_and_the_next_start_removes_it(
    tmp_path: Path,
) -> None:
    """A real SIGKILL while a writer is halfway through its file."""
    writer = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from nnslurm.workflow.outputs import Staging, publish
        with Staging(Path({str(tmp_path)!r})).folder("case_000") as folder:
            with open(folder / "case_000.nii.gz", "wb") as stream:
                stream.write(b"x" * 1000)
                stream.flush()
                time.sleep(600)  # killed here
            publish([(folder / "case_000.nii.gz", Path({str(tmp_path)!r}) / "case_000.nii.gz")])
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", writer], env=env)
    staging = Staging(tmp_path)
    try:
        wait_for(lambda: list(staging.root.glob("*/case_000.nii.gz")), 60, "the staged file")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert not (tmp_path / "case_000.nii.gz").exists()
    assert staging.clear() == 1
    assert list(staging.root.iterdir()) == []


def test_side_files_are_written_as_nnunets_save_json(tmp_path: Path) -> None:
    write_json_atomically(
        tmp_path / "dataset.json", {"b": 1, "a": [1, 2]}, Staging(tmp_path), sort_keys=False
    )
    assert (tmp_path / "dataset.json").read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=4)


def test_cases_are_listed_as_nnunet_lists_them_and_only_finished_ones_are_skipped(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nii.gz", "notes.txt"):
        (inputs / name).write_bytes(b"")
    cases = list_cases(inputs, ".nii.gz")
    assert [case.identifier for case in cases] == ["a", "b"]
    assert cases[1].files == (str(inputs / "b_0000.nii.gz"), str(inputs / "b_0001.nii.gz"))
    output = tmp_path / "out"
    (output / ".nnslurm" / "staging" / "b.123").mkdir(parents=True)
    (output / ".nnslurm" / "staging" / "b.123" / "b.nii.gz").write_bytes(b"half")  # not done
    (output / "a.nii.gz").write_bytes(b"done")
    assert cases_done(output, cases, ".nii.gz") == ["a"]


def find_best_result(folder: Path, selected: list[dict[str, str]], postprocessing: Path | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    best = {
        "selected_model_or_models": selected,
        "postprocessing_file": str(postprocessing) if postprocessing else None,
    }
    (folder / "inference_information.json").write_text(
        json.dumps({"folds": [0, 1], "best_model_or_ensemble": best})
    )


def test_find_best_chooses_the_ensemble_members_folds_and_postprocessing(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset501_X"
    pkl = tmp_path / "postprocessing.pkl"
    pkl.write_bytes(pickle.dumps(([], [])))
    selected = [
        {"configuration": "2d", "trainer": "nnUNetTrainer", "plans_identifier": "nnUNetPlans"},
        {"configuration": "3d_fullres", "trainer": "nnUNetTrainer", "plans_identifier": "nnUNetPlans"},
    ]
    find_best_result(folder, selected, pkl)
    models, postprocessing = chosen_by_find_best(folder)
    assert models == (ModelSpec("2d", folds=("0", "1")), ModelSpec("3d_fullres", folds=("0", "1")))
    assert postprocessing == pkl


@pytest.mark.parametrize("content", ["not json", '{"folds": [0]}'])
def test_a_broken_or_missing_find_best_result_is_bad_input_that_names_the_command(
    tmp_path: Path, content: str
) -> None:
    folder = tmp_path / "Dataset501_X"
    with pytest.raises(UsageError, match="nnUNetv2_find_best_configuration 501"):
        chosen_by_find_best(folder)
    folder.mkdir()
    (folder / "inference_information.json").write_text(content)
    with pytest.raises(UsageError, match="not a find-best result"):
        chosen_by_find_best(folder)


def test_the_job_pickles_as_submitit_sends_it(tmp_path: Path) -> None:
    spec = PredictSpec(tmp_path / "in", tmp_path / "out", "501", ModelSpec("3d_fullres", folds=("0",)))
    job = pickle.loads(pickle.dumps(PredictJob(spec)))
    assert job.spec == spec
    assert job.spec.state_folder == tmp_path / "out" / ".nnslurm"
    assert "3d_fullres" in repr(job)


def test_bad_settings_are_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="-device"):
        PredictSpec(tmp_path, tmp_path, "501", device="tpu")
    with pytest.raises(UsageError, match="-step_size"):
        PredictSpec(tmp_path, tmp_path, "501", step_size=1.5)
    with pytest.raises(UsageError, match="-step_size"):
        PredictSpec(tmp_path, tmp_path, "501", step_size=0.0)
    # the limits are where nnUNetv2_predict has them: each device it knows and a step of 1 are fine
    for device in ("auto", "cpu", "cuda"):
        assert PredictSpec(tmp_path, tmp_path, "501", device=device, step_size=1.0).step_size == 1.0
