"""`nnslurm predict` against real nnU-Net: same output as nnUNetv2_predict, stops at case boundaries,
never a torn file under a final name (SIGKILL mid-write), ensembles and postprocessing as nnU-Net's
own commands do them, bad input refused with exit 2."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support import (
    TESTS,
    TINY_PLANS,
    TINY_TRAINING,
    NnunetEnv,
    nnslurm,
    patience,
    wait_for,
)

pytestmark = pytest.mark.nnunet

BIN = Path(sys.executable).parent
DATASET = "Dataset501_Synthetic"
MODEL = f"nnUNetTrainer__{TINY_PLANS}__3d_fullres"
TRAINING = [*TINY_TRAINING, "--no-final-validation"]
NNUNET_SPEED = ["-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]


@dataclass(frozen=True)
class Trained:
    env: dict[str, str]
    results: Path
    inputs: Path  # four cases of imagesTr
    reference: Path  # nnUNetv2_predict's output for them


def run_nnunet(command: str, *args: str, env: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / command), *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def predict_args(trained: Trained, output: Path, inputs: Path | None = None) -> list[str]:
    return [
        "predict", "-i", str(inputs or trained.inputs), "-o", str(output),
        "-d", "501", "-c", "3d_fullres", "-p", TINY_PLANS, "-f", "0", "-device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(synthetic_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One trained model for the module, four input cases, and nnUNetv2_predict's prediction of them."""
    base = tmp_path_factory.mktemp("predict")
    nnunet = NnunetEnv(*synthetic_dataset, results=base / "results")
    nnunet.results.mkdir()
    env = nnunet.env()
    training = nnslurm(["train", *TRAINING], env)
    assert training.returncode == 0, training.stderr[-3000:]
    inputs = base / "inputs"
    inputs.mkdir()
    for case in range(4):
        shutil.copy(nnunet.raw / DATASET / "imagesTr" / f"case_{case:03d}_0000.nii.gz", inputs)
    predict_some_foreground(nnunet.results / DATASET / MODEL, inputs / "case_000_0000.nii.gz")
    reference = base / "reference"
    run_nnunet(
        "nnUNetv2_predict", "-i", str(inputs), "-o", str(reference), "-d", "501", "-c", "3d_fullres",
        "-p", TINY_PLANS, "-f", "0", *NNUNET_SPEED, env=env,
    )  # fmt: skip
    return Trained(env, nnunet.results, inputs, reference)


def predict_some_foreground(model: Path, case: Path) -> None:
    """A few seconds of training predict background only, a weak test of "the same voxels": shift
    the foreground logit (the last segmentation layer's bias) so that about a quarter of `case` is
    foreground. A constant shift of a logit passes unchanged through nnU-Net's sliding-window and
    mirroring averages and its resampling, so its quantile of log(p0/p1) is the shift to add."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    with tempfile.TemporaryDirectory() as folder:  # written, not returned: 2.6 returns nothing
        predictor.predict_from_files_sequential([[str(case)]], [f"{folder}/case"], save_probabilities=True)
        probabilities = np.load(f"{folder}/case.npz")["probabilities"]
    ratio = np.log(np.maximum(probabilities[0], 1e-6) / np.maximum(probabilities[1], 1e-6))
    path = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    last = sorted(
        k
        for k in checkpoint["network_weights"]
        if k.startswith("decoder.seg_layers.") and k.endswith(".bias")
    )
    checkpoint["network_weights"][last[-1]][1] += float(np.quantile(ratio, 0.25))
    torch.save(checkpoint, path)


def segmentations(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def assert_same_segmentations(folder: Path, reference: Path) -> None:
    ours, theirs = segmentations(folder), segmentations(reference)
    assert sorted(ours) == sorted(theirs)
    for name, expected in theirs.items():
        assert ours[name].shape == expected.shape and (ours[name] == expected).all(), name


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_output_equals_nnunetv2_predict(trained: Trained, tmp_path: Path) -> None:
    output = tmp_path / "out"
    done = nnslurm(predict_args(trained, output), trained.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 case(s) predicted" in done.stdout
    assert visible_files(output) == visible_files(trained.reference)
    assert_same_segmentations(output, trained.reference)
    assert any((seg > 0).any() for seg in segmentations(output).values()), (
        "the model predicts only background"
    )
    for side_file in ("plans.json", "dataset.json"):
        assert json.loads((output / side_file).read_text()) == json.loads(
            (trained.reference / side_file).read_text()
        )
    assert not list((output / ".nnslurm" / "staging").iterdir())


def test_a_stop_signal_leaves_at_a_case_boundary_and_the_rerun_completes(
    trained: Trained, tmp_path: Path
) -> None:
    """USR1 right after the first case was written (an event: tests/cli_hooks.py sends it when the
    log says so): the stop comes before the second case, and the rerun writes only the other three."""
    output = tmp_path / "out"
    env = dict(trained.env, NNSLURM_TEST_SIGNAL_ON_LOG=".nii.gz written")
    done = subprocess.run(
        [sys.executable, str(TESTS / "cli_hooks.py"), *predict_args(trained, output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=patience(100),
    )
    stderr = done.stderr
    assert done.returncode == 75, stderr[-3000:]
    assert "Traceback" not in stderr
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in output.glob("case_*.nii.gz")}
    assert len(first) == 1, f"{sorted(first)}: the stop did not come at the first case boundary"

    again = nnslurm(predict_args(trained, output), trained.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{4 - len(first)} written now, {len(first)} there already" in again.stdout
    for name, identity in first.items():
        path = output / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, f"{name} was rewritten"
    assert_same_segmentations(output, trained.reference)
    events = [json.loads(line)["event"] for line in (output / ".nnslurm" / "nnslurm_events.jsonl").open()]
    assert events == ["started", "stopped", "started", "finished"]


def test_sigkill_while_a_case_is_written_leaves_no_torn_file(trained: Trained, tmp_path: Path) -> None:
    output, marker = tmp_path / "out", tmp_path / "torn"
    env = dict(trained.env, NNSLURM_TEST_TEAR_CASE="2", NNSLURM_TEST_TORN_MARKER=str(marker))
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "cli_hooks.py"), *predict_args(trained, output)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: marker.exists() or process.poll() is not None, patience(100), "the second case's write"
        )
        assert marker.exists(), process.communicate()[1][-3000:]
    finally:
        process.kill()  # SIGKILL, with case 2 half written
        process.communicate(timeout=patience(20))
    torn = [Path(p) for p in marker.read_text().split()]
    assert torn and all(p.is_relative_to(output / ".nnslurm" / "staging") for p in torn), torn
    finals = segmentations(output)  # every file under a final name loads
    assert sorted(finals) == ["case_000.nii.gz"], sorted(finals)

    again = nnslurm(predict_args(trained, output), trained.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 written now, 1 there already" in again.stdout
    assert_same_segmentations(output, trained.reference)
    assert not list((output / ".nnslurm" / "staging").iterdir()), "the torn write was not removed"


def noisy_copy(model: Path, copy: Path) -> None:
    """A second trained model: the first one's folder with perturbed weights (an ensemble member)."""
    import torch

    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("checkpoint_best.pth"))
    path = copy / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for name, weights in checkpoint["network_weights"].items():
        if weights.is_floating_point() and weights.numel() > 1:
            noise = torch.randn(weights.shape, generator=generator, dtype=weights.dtype)
            checkpoint["network_weights"][name] = weights + 0.2 * weights.std() * noise
    torch.save(checkpoint, path)


def test_ensemble_and_postprocessing_from_find_best_as_nnunet_does_them(
    trained: Trained, tmp_path: Path
) -> None:
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    results = tmp_path / "results"
    dataset = results / DATASET
    shutil.copytree(trained.results / DATASET / MODEL, dataset / MODEL)
    noisy = f"nnUNetTrainerNoisy__{TINY_PLANS}__3d_fullres"
    noisy_copy(dataset / MODEL, dataset / noisy)
    ensemble = dataset / "ensembles" / f"ensemble___{MODEL}___{noisy}___0"
    ensemble.mkdir(parents=True)
    postprocessing = ensemble / "postprocessing.pkl"
    postprocessing.write_bytes(
        pickle.dumps(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": 1}]))
    )
    chosen = [
        {"configuration": "3d_fullres", "trainer": trainer, "plans_identifier": TINY_PLANS}
        for trainer in ("nnUNetTrainer", "nnUNetTrainerNoisy")
    ]
    (dataset / "inference_information.json").write_text(
        json.dumps(
            {  # the keys nnunetv2.evaluation.find_best_configuration writes
                "folds": [0],
                "dataset_name_or_id": DATASET,
                "considered_models": [],
                "ensembling_allowed": True,
                "all_results": {},
                "best_model_or_ensemble": {
                    "result_on_crossval_pre_pp": 0.5,
                    "result_on_crossval_post_pp": 0.5,
                    "postprocessing_file": str(postprocessing),
                    "some_plans_file": str(dataset / MODEL / "plans.json"),
                    "selected_model_or_models": chosen,
                },
            }
        )
    )
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in ("case_000_0000.nii.gz", "case_001_0000.nii.gz"):
        shutil.copy(trained.inputs / case, inputs)
    env = dict(trained.env, nnUNet_results=str(results))

    output = tmp_path / "out"
    done = nnslurm(["predict", "-i", str(inputs), "-o", str(output), "-d", "501", "--from-find-best"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (output / ".nnslurm" / "models").exists(), "the members' probabilities were kept"

    # What inference_instructions.txt tells a user to run, with nnU-Net's commands.
    reference = tmp_path / "reference"
    for member in chosen:
        run_nnunet(
            "nnUNetv2_predict", "-i", str(inputs), "-o", str(reference / member["trainer"]), "-d", "501",
            "-c", "3d_fullres", "-p", TINY_PLANS, "-tr", member["trainer"], "-f", "0", "--save_probabilities",
            *NNUNET_SPEED, env=env,
        )  # fmt: skip
    members = [str(reference / member["trainer"]) for member in chosen]
    run_nnunet("nnUNetv2_ensemble", "-i", *members, "-o", str(reference / "ensemble"), "-np", "1", env=env)
    run_nnunet(
        "nnUNetv2_apply_postprocessing", "-i", str(reference / "ensemble"), "-o", str(reference / "pp"),
        "-pp_pkl_file", str(postprocessing), "-np", "1", "-plans_json", str(dataset / MODEL / "plans.json"),
        env=env,
    )  # fmt: skip
    assert_same_segmentations(output, reference / "pp")
    single = segmentations(trained.reference)
    assert any((seg != single[name]).any() for name, seg in segmentations(output).items()), "not an ensemble"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no input folder", ["does not exist", "-i"]),
        ("no trained model", ["no trained model nnUNetTrainerNotTrained", "nnslurm train"]),
        ("no find-best result", ["inference_information.json", "nnUNetv2_find_best_configuration"]),
    ],
)
def test_bad_input_exits_2_with_the_fix(
    trained: Trained, tmp_path: Path, case: str, expected: list[str]
) -> None:
    output = tmp_path / "out"
    args = predict_args(trained, output)
    if case == "no input folder":
        args[2] = str(tmp_path / "missing")
    elif case == "no trained model":
        args += ["-tr", "nnUNetTrainerNotTrained"]
    else:
        args = ["predict", "-i", str(trained.inputs), "-o", str(output), "-d", "501", "--from-find-best"]
    done = nnslurm(args, trained.env)
    assert done.returncode == 2, done.stderr
    for text in expected:
        assert text in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists(), "bad input wrote something"


def test_the_help_explains_resume_and_atomicity() -> None:
    done = nnslurm(["predict", "--help"], dict(os.environ))
    assert done.returncode == 0
    for text in ("--from-find-best", "staging", "os.replace", "75", "-chk", "--disable_tta"):
        assert text in done.stdout
