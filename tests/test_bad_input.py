"""Bad input: a clear message naming the problem and the fix, a non-zero exit, nothing touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support import TINY_TRAINING, NnunetEnv, folder_digests, nnslurm

pytestmark = pytest.mark.nnunet


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.fixture(scope="module")
def trained(synthetic_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> NnunetEnv:
    """A finished tiny run of fold 0, whose folder must stay byte-for-byte unchanged."""
    raw, preprocessed = synthetic_dataset
    env = NnunetEnv(raw, preprocessed, tmp_path_factory.mktemp("results"))
    result = nnslurm(["train", *TINY_TRAINING, "--epochs", "1", "--no-final-validation"], env.env())
    assert result.returncode == 0, result.stderr[-3000:]
    return env


CASES = [
    ("unknown dataset id", lambda a: with_flag(a, "-d", "777"), 1, ["dataset '777' not found", "HINT"]),
    ("dataset name", lambda a: with_flag(a, "-d", "Dataset501_Other"), 1, ["not found"]),
    (
        "configuration not in plans",
        lambda a: [*a, "-c", "2d_huge"],
        1,
        ["configuration '2d_huge'", "it has: "],
    ),
    ("fold out of range", lambda a: with_flag(a, "-f", "7"), 1, ["fold '7' is out of range", "0..4"]),
    (
        "unknown trainer",
        lambda a: [*a, "-tr", "nnUNetTrainerDoesNotExist"],
        1,
        ["trainer class 'nnUNetTrainerDoesNotExist' not found"],
    ),
    (
        "unknown plans",
        lambda a: with_flag(a, "-p", "nnUNetResEncUNetMPlans"),
        1,
        ["plans 'nnUNetResEncUNetMPlans' not found", "nnUNetv2_plan_and_preprocess"],
    ),
    (
        "zero save interval",
        lambda a: [*a, "--save-every-epochs", "0"],
        2,
        ["--save-every-epochs must be a positive number"],
    ),
    (
        "negative minutes",
        lambda a: [*a, "--save-every-minutes", "-5"],
        2,
        ["--save-every-minutes must be positive"],
    ),
    ("unknown signal", lambda a: [*a, "--stop-signals", "USR1,BOGUS"], 2, ["unknown signal 'BOGUS'"]),
    (
        "resume from missing file",
        lambda a: [*a, "--resume-from", "/nonexistent/checkpoint.pth"],
        1,
        ["no such file"],
    ),
]


@pytest.mark.parametrize(("name", "change", "code", "messages"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(
    trained: NnunetEnv, name: str, change, code: int, messages: list[str]
) -> None:
    before = folder_digests(trained.results)
    result = nnslurm(["train", *change(list(TINY_TRAINING))], trained.env())
    assert result.returncode == code, result.stderr[-2000:]
    for message in messages:
        assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert folder_digests(trained.results) == before


@pytest.mark.parametrize("variable", ["nnUNet_preprocessed", "nnUNet_results"])
def test_unset_or_missing_nnunet_folder(trained: NnunetEnv, variable: str) -> None:
    before = folder_digests(trained.results)
    env = trained.env()
    del env[variable]
    result = nnslurm(["train", *TINY_TRAINING], env)
    assert result.returncode == 1 and f"{variable} is not set" in result.stderr
    env = trained.env(**{variable: "/nonexistent/folder"})
    result = nnslurm(["train", *TINY_TRAINING], env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert folder_digests(trained.results) == before


def test_dataset_not_preprocessed_names_the_command(trained: NnunetEnv, tmp_path: Path) -> None:
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(trained.preprocessed, preprocessed)
    shutil.rmtree(preprocessed / "Dataset501_Synthetic" / "nnUNetPlans_3d_fullres")
    result = nnslurm(["train", *TINY_TRAINING], trained.env(nnUNet_preprocessed=str(preprocessed)))
    assert result.returncode == 1
    assert "not preprocessed" in result.stderr and "nnUNetv2_preprocess -d 501" in result.stderr


def test_resume_from_non_checkpoint_and_other_runs_checkpoint(trained: NnunetEnv, tmp_path: Path) -> None:
    before = folder_digests(trained.results)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text(json.dumps({"hello": 1}))
    result = nnslurm(["train", *TINY_TRAINING, "--resume-from", str(not_a_checkpoint)], trained.env())
    assert result.returncode == 1 and "does not load" in result.stderr and "Traceback" not in result.stderr

    other_fold = tmp_path / "fold1.pth"
    checkpoint = torch.load(trained.run_folder() / "checkpoint_final.pth", weights_only=False)
    checkpoint["init_args"]["fold"] = 1
    torch.save(checkpoint, other_fold)
    result = nnslurm(["train", *TINY_TRAINING, "--resume-from", str(other_fold)], trained.env())
    assert result.returncode == 1
    assert "belongs to another run" in result.stderr and "fold '1'" in result.stderr
    assert folder_digests(trained.results) == before
