"""nnU-Net's final validation under nnslurm: which weights, whether it is done, and a stop within it.

nnU-Net's `perform_actual_validation` predicts every validation case and writes its segmentation
(with --npz also its softmax .npz and .pkl) in spawned export workers; it skips nothing that
exists, so a second run rewrites every case. Its last write is validation/summary.json
(`compute_metrics_on_folder`, after every export finished). nnslurm builds on that:

- before a validation starts, validation/ is removed and nnslurm_validation.json (atomically)
  records what this validation writes (which checkpoint, npz or not);
- so a summary.json that parses means: every case of the recorded validation is written whole.
  A validation stopped or killed at any point leaves no summary.json (or a torn one, which does
  not parse); the next start removes what it wrote, torn files included, and redoes it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nnslurm.core.config import TrainingOptions
from nnslurm.core.errors import NnslurmError
from nnslurm.core.files import write_json

logger = logging.getLogger(__name__)

VALIDATION_FOLDER = "validation"  # nnU-Net's: <run folder>/validation
SUMMARY = "summary.json"  # nnU-Net's metrics, written last
RECORD = "nnslurm_validation.json"  # in the run folder: what validation/ holds (or is being written)


@dataclass(frozen=True)
class Validation:
    """One final validation, as nnUNetv2_train's flags ask for it."""

    checkpoint: str  # "final" | "best" (--val_best): whose weights are validated
    npz: bool  # --npz: softmax .npz and .pkl beside each segmentation

    @property
    def checkpoint_name(self) -> str:
        return f"checkpoint_{self.checkpoint}.pth"

    def covers(self, other: Validation) -> bool:
        """These outputs serve a request for `other` (npz files on top do no harm)."""
        return self.checkpoint == other.checkpoint and (self.npz or not other.npz)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def requested(options: TrainingOptions) -> Validation | None:
    """The validation this command asks for; None: none (--no-final-validation)."""
    if not options.final_validation:
        return None
    return Validation(checkpoint=options.validation_checkpoint, npz=options.npz)


def is_done(folder: Path, wanted: Validation) -> bool:
    """validation/ holds a complete validation that serves `wanted`."""
    if _read_json(folder / VALIDATION_FOLDER / SUMMARY) is None:
        return False
    record = _read_json(folder / RECORD)
    if record is None:  # validated by plain nnU-Net or an older nnslurm: checkpoint_final, no npz known
        return Validation("final", npz=False).covers(wanted)
    try:
        return Validation(checkpoint=str(record["checkpoint"]), npz=bool(record["npz"])).covers(wanted)
    except (KeyError, TypeError):
        return False


def checkpoint_for(folder: Path, validation: Validation) -> Path:
    """The checkpoint file to validate; it must exist (nnUNetv2_train: --val needs a finished run)."""
    path = folder / validation.checkpoint_name
    if not path.is_file():
        raise NnslurmError(
            f"cannot validate: {path} does not exist.",
            hint="checkpoint_best.pth is written by training when the pseudo-Dice improves; validate "
            "checkpoint_final.pth instead (drop --val_best)."
            if validation.checkpoint == "best"
            else "train the run first (the same command without --val).",
        )
    return path


def begin(folder: Path, validation: Validation) -> None:
    """Before nnU-Net's validation: remove what an earlier one wrote, then record this one."""
    outputs = folder / VALIDATION_FOLDER
    if outputs.exists():
        logger.info("removing %s: a validation writes every case anew", outputs)
        shutil.rmtree(outputs)
    write_json(folder / RECORD, validation.record())


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not complete JSON (torn by a kill)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
