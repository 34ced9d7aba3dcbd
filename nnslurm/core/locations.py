"""Where things are: nnU-Net's three folders and nnslurm's own `.nnslurm/` folders inside them.

nnU-Net's folders come from the environment, read on each call (like nnunetv2/paths.py), never at
import time. nnslurm keeps its own files in a hidden `.nnslurm/` folder beside what it belongs to:

    $nnUNet_results/.nnslurm/submitit/<job id>/    submitit's scripts, pickles and logs (default)
    $nnUNet_results/.nnslurm/chains/<id>.json      the record of a chain of stages
    $nnUNet_results/.nnslurm/demo/                 `nnslurm demo`'s submitit folder
    $nnUNet_preprocessed/DatasetXXX_Name/.nnslurm/preprocess/   the preprocess stage's log and markers
    $nnUNet_results/DatasetXXX_Name/.nnslurm/find_best/         the find-best stage's log and marker
    OUTPUT/.nnslurm/  (staging/ inside)            a prediction's log, lock, record and staged files

A run folder's own files (events.jsonl, the lock) are nnU-Net's fold_N folder itself
(`core.nnunet.output_folder` names it). Every path above is built here and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nnslurm.core.errors import NnunetSetupError

RAW = "nnUNet_raw"
PREPROCESSED = "nnUNet_preprocessed"
RESULTS = "nnUNet_results"
FOLDER_VARIABLES = (RAW, PREPROCESSED, RESULTS)

STATE_FOLDER = ".nnslurm"  # nnslurm's own files, inside an nnU-Net folder, a dataset folder or an output


def env_folder(variable: str, must_exist: bool = True, environ: Mapping[str, str] | None = None) -> Path:
    """The folder an nnU-Net environment variable points to, with a clear error when it is unusable."""
    value = (os.environ if environ is None else environ).get(variable)
    if not value:
        raise NnunetSetupError(
            f"{variable} is not set.",
            hint=f"export {variable}=/path/to/folder (as for nnUNetv2_train); "
            "see nnU-Net's documentation/setting_up_paths.md.",
        )
    path = Path(value)
    if must_exist and not path.is_dir():
        raise NnunetSetupError(
            f"{variable}={value} is not an existing folder.",
            hint=f"create it or point {variable} to the folder nnU-Net uses.",
        )
    return path


def results_or_none(environ: Mapping[str, str] | None = None) -> Path | None:
    """$nnUNet_results as given, or None when it is not set (for the commands that can do without)."""
    value = (os.environ if environ is None else environ).get(RESULTS)
    return Path(value) if value else None


# --- nnslurm's own folders -------------------------------------------------------------------------


def submitit_folder(results: Path) -> Path:
    """Where `nnslurm submit` keeps submitit's files by default (one folder per job id inside)."""
    return results / STATE_FOLDER / "submitit"


def default_log_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$nnUNet_results/.nnslurm/submitit, the default of --log-dir; refused when nnUNet_results is unset."""
    results = results_or_none(environ)
    if results is None:
        raise NnunetSetupError(
            "nnUNet_results is not set, so there is no default folder for the job logs.",
            hint="export nnUNet_results=/path/to/results (the job needs it anyway), or pass --log-dir.",
        )
    return submitit_folder(results)


def chains_folder(results: Path | None = None) -> Path:
    """The chain records: `results`/.nnslurm/chains (default: $nnUNet_results, which need not exist yet)."""
    base = results if results is not None else env_folder(RESULTS, must_exist=False)
    return base / STATE_FOLDER / "chains"


def demo_folder(results: Path) -> Path:
    """`nnslurm demo`'s submitit folder."""
    return results / STATE_FOLDER / "demo"


def dataset_stage_folder(dataset_folder: Path, stage: str) -> Path:
    """A workflow stage's event log and markers, inside the dataset folder it works on."""
    return dataset_folder / STATE_FOLDER / stage


def output_state_folder(output_dir: Path) -> Path:
    """OUTPUT/.nnslurm: a prediction's event log, lock, record and staging."""
    return Path(output_dir) / STATE_FOLDER


def staging_folder(output_dir: Path) -> Path:
    """OUTPUT/.nnslurm/staging: files being written, moved to their final names when complete."""
    return output_state_folder(output_dir) / "staging"
