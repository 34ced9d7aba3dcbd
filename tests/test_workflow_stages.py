"""The preprocess and find-best stages on real nnU-Net: the files nnU-Net's own commands write, a
stop between units (75) and a rerun that skips what is done, refusals before any work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    TESTS,
    TINY_PLANS,
    TINY_TRAINING,
    NnunetEnv,
    folder_digests,
    nnslurm,
    patience,
    read_events,
)

pytestmark = pytest.mark.nnunet

DATASET = "Dataset501_Synthetic"
MODEL = f"nnUNetTrainer__{TINY_PLANS}__3d_fullres"
FIND_BEST = ["find-best", "-d", "501", "-c", "3d_fullres", "-p", TINY_PLANS, "-np", "1", "-f", "0", "1"]


def stop_when_logged(args: list[str], env: dict[str, str], line: str) -> tuple[int, str]:
    """Run the CLI, which sends itself SIGUSR1 (the walltime warning) the moment its log shows `line`
    (tests/cli_hooks.py): the stop arrives at that point of the work, however fast the machine;
    (exit status, the log)."""
    done = subprocess.run(
        [sys.executable, str(TESTS / "cli_hooks.py"), *args],
        env=dict(env, NNSLURM_TEST_SIGNAL_ON_LOG=line),
        capture_output=True,
        text=True,
        timeout=patience(100),
    )
    assert line in done.stderr, done.stderr[-3000:]
    return done.returncode, done.stderr


def mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --- preprocess -----------------------------------------------------------------------------------


def test_preprocess_stops_between_units_resumes_and_writes_what_nnunet_writes(
    nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    preprocessed = tmp_path / "preprocessed"
    env = nnunet_env.env(nnUNet_preprocessed=str(preprocessed))
    # (--no_verify_dataset_integrity: the default check costs a pool start, and changes no file)
    args = ["preprocess", "-d", "501", "-c", "3d_fullres", "3d_lowres", "--no_verify_dataset_integrity"]
    ours, theirs = preprocessed / DATASET, nnunet_env.preprocessed / DATASET  # theirs: nnU-Net's API
    markers = ours / ".nnslurm" / "preprocess"

    # The walltime warning during the fingerprint: it is finished, then the stage stops (75).
    status, log = stop_when_logged(args, env, "unit fingerprint")
    assert status == 75, log[-3000:]
    assert (markers / "fingerprint.json").is_file() and not (markers / "plans.json").exists()
    assert not (ours / "nnUNetPlans.json").exists()
    stopped = read_events(markers)[-1]
    assert (stopped["event"], stopped["signal"], stopped["done"]) == ("stopped", "USR1", 1)
    fingerprint_written = mtimes(ours)

    # Inside a SLURM job of 1 CPU the rest runs with -np 1; the fingerprint is not redone.
    resumed = nnslurm(args, nnunet_env.env(nnUNet_preprocessed=str(preprocessed), SLURM_JOB_ID="4242",
                                           SLURM_CPUS_PER_TASK="1"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "nnU-Net gets -np 1 (SLURM_CPUS_PER_TASK=1" in resumed.stderr
    assert "fingerprint already done" in resumed.stderr and "unit fingerprint" not in resumed.stderr
    assert "configuration 3d_lowres is not in nnUNetPlans.json" in resumed.stderr
    assert "train with -p nnUNetPlans" in resumed.stdout
    for name, mtime in fingerprint_written.items():
        if name.startswith("dataset_fingerprint") or name.endswith("fingerprint.json"):
            assert (ours / name).stat().st_mtime_ns == mtime, name
    assert json.loads((markers / "data_nnUNetPlans_3d_fullres.json").read_text())["processes"] == 1

    # The same files as nnU-Net's own plan-and-preprocess (conftest's dataset), byte for byte.
    assert json.loads((ours / "nnUNetPlans.json").read_text()) == json.loads(
        (theirs / "nnUNetPlans.json").read_text()
    )
    assert folder_digests(ours / "nnUNetPlans_3d_fullres") == folder_digests(
        theirs / "nnUNetPlans_3d_fullres"
    )
    assert len(list((ours / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == 8  # every case
    assert folder_digests(ours / "gt_segmentations") == folder_digests(theirs / "gt_segmentations")

    # Done is done: a third run changes nothing but the stage's event log.
    before = {k: v for k, v in mtimes(ours).items() if not k.endswith("nnslurm_events.jsonl")}
    again = nnslurm(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "unit " not in again.stderr
    assert {k: v for k, v in mtimes(ours).items() if not k.endswith("nnslurm_events.jsonl")} == before


def test_preprocess_refuses_a_dataset_that_is_not_in_nnunet_raw(
    nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    result = nnslurm(["preprocess", "-d", "777"], nnunet_env.env(nnUNet_preprocessed=str(tmp_path / "pre")))
    assert result.returncode == 2
    assert "no dataset with id 777 in nnUNet_raw" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pre").exists()


# --- find best ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synthetic_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$nnUNet_results with folds 0 and 1 of the tiny model trained with --npz (once per module)."""
    raw, preprocessed = synthetic_dataset
    results = tmp_path_factory.mktemp("trained") / "results"
    results.mkdir()
    env = NnunetEnv(raw, preprocessed, results).env()
    for fold in ("0", "1"):
        arguments = [*TINY_TRAINING, "--npz"]
        arguments[arguments.index("-f") + 1] = fold
        result = nnslurm(["train", *arguments], env)
        assert result.returncode == 0, result.stderr[-3000:]
    return results


@pytest.fixture
def results(trained: Path, nnunet_env: NnunetEnv) -> Iterator[Path]:
    """This test's own copy of the trained folds (find best writes next to them)."""
    shutil.rmtree(nnunet_env.results)
    shutil.copytree(trained, nnunet_env.results)
    yield nnunet_env.results / DATASET


def test_find_best_stops_before_its_unit_then_writes_nnunets_files(
    nnunet_env: NnunetEnv, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = nnunet_env.env()
    stage = results / ".nnslurm" / "find_best"

    status, log = stop_when_logged(FIND_BEST, env, "importing nnU-Net's evaluation")
    assert status == 75, log[-3000:]
    assert read_events(stage)[-1]["event"] == "stopped" and read_events(stage)[-1]["done"] == 0
    assert not (results / "inference_information.json").exists()

    done = nnslurm(FIND_BEST, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"best: {MODEL}" in done.stdout
    information = json.loads((results / "inference_information.json").read_text())
    [selected] = information["best_model_or_ensemble"]["selected_model_or_models"]
    assert selected == {
        "configuration": "3d_fullres",
        "trainer": "nnUNetTrainer",
        "plans_identifier": TINY_PLANS,
    }
    assert information["folds"] == [0, 1]
    instructions = (results / "inference_instructions.txt").read_text()
    assert f"nnUNetv2_predict -d {DATASET}" in instructions and "-c 3d_fullres" in instructions
    assert f"-p {TINY_PLANS}" in instructions and "-f  0 1" in instructions
    assert (results / MODEL / "crossval_results_folds_0_1" / "postprocessing.pkl").is_file()
    assert read_events(stage)[-1]["event"] == "finished"

    # The predict stage reads it only through the marker: a torn file is refused.
    from nnslurm.core.errors import NnunetSetupError
    from nnslurm.workflow.find_best import read_inference_information

    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, env[variable])
    assert read_inference_information("501") == information
    text = (results / "inference_information.json").read_text()
    (results / "inference_information.json").write_text(text[: len(text) // 2])
    with pytest.raises(NnunetSetupError, match="changed after find best completed"):
        read_inference_information("501")


def test_find_best_refuses_an_untrained_fold_and_a_fold_without_npz(
    nnunet_env: NnunetEnv, results: Path
) -> None:
    env = nnunet_env.env()
    untrained = nnslurm([*FIND_BEST, "2"], env)
    assert untrained.returncode == 2
    assert f"{MODEL} fold 2: not trained to the end (no fold_2/validation/summary.json" in untrained.stderr
    assert "Traceback" not in untrained.stderr

    # A second trainer whose folds were trained without --npz: nothing to ensemble.
    other = results / f"nnUNetTrainerNoNpz__{TINY_PLANS}__3d_fullres"
    shutil.copytree(results / MODEL, other)
    for path in other.glob("fold_*/validation/*.npz"):
        path.unlink()
    two = [*FIND_BEST, "-tr", "nnUNetTrainer", "nnUNetTrainerNoNpz"]
    refused = nnslurm(two, env)
    assert refused.returncode == 2
    for fold in ("0", "1"):
        assert (
            f"nnUNetTrainerNoNpz__{TINY_PLANS}__3d_fullres fold {fold}: no .npz probabilities"
            in refused.stderr
        )
    assert f"{MODEL} fold" not in refused.stderr
    assert "--val --npz" in refused.stderr and "Traceback" not in refused.stderr
    assert not (results / "inference_information.json").exists() and not (results / ".nnslurm").exists()
