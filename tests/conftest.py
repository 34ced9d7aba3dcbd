"""Shared fixtures: one real synthetic nnU-Net dataset per test session, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TINY_PLANS = "nnslurmTinyPlans"
# A few seconds of real nnU-Net training on a CPU: 3 epochs x 5 iterations, 2 validation steps.
TINY_TRAINING = [
    "-d", "501", "-f", "0", "-p", TINY_PLANS,
    "--epochs", "3", "--iterations-per-epoch", "5", "--val-iterations-per-epoch", "2",
    "--device", "cpu",
]  # fmt: skip


@dataclass(frozen=True)
class NnunetEnv:
    """nnUNet_raw/_preprocessed with dataset 501 built; each test gets its own nnUNet_results."""

    raw: Path
    preprocessed: Path
    results: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(self.raw),
            nnUNet_preprocessed=str(self.preprocessed),
            nnUNet_results=str(self.results),
            nnUNet_def_n_proc="1",  # final validation of tiny cases: 9 s instead of 38 s
            nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "2"),
            PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
        )
        env.update(extra)
        return env

    def run_folder(self, trainer: str = "nnUNetTrainer", fold: str = "0", plans: str = TINY_PLANS) -> Path:
        return self.results / "Dataset501_Synthetic" / f"{trainer}__{plans}__3d_fullres" / f"fold_{fold}"


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Dataset501_Synthetic, written and preprocessed once per session by `nnslurm synthetic-dataset`."""
    base = tmp_path_factory.mktemp("nnunet")
    raw, preprocessed = base / "raw", base / "preprocessed"
    raw.mkdir()
    env = dict(
        os.environ,
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(preprocessed),
        nnUNet_results=str(base / "results"),
    )
    env.pop("nnUNet_n_proc_DA", None)
    result = subprocess.run(
        [sys.executable, "-m", "nnslurm", "synthetic-dataset", "--id", "501"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return raw, preprocessed


@pytest.fixture
def nnunet_env(synthetic_dataset: tuple[Path, Path], tmp_path: Path) -> NnunetEnv:
    raw, preprocessed = synthetic_dataset
    results = tmp_path / "results"
    results.mkdir()
    return NnunetEnv(raw=raw, preprocessed=preprocessed, results=results)


def nnslurm(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process, as a user (or an sbatch script) would."""
    return subprocess.run(
        [sys.executable, "-m", "nnslurm", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def read_events(run_folder: Path) -> list[dict]:
    path = run_folder / "nnslurm_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def clean_env() -> Iterator[None]:
    """Keep tests that set nnUNet_* in-process from leaking into each other."""
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
