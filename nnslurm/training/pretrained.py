"""-pretrained_weights: loaded at a fresh start only, as nnUNetv2_train does, and recorded with the run.

nnU-Net loads them after `initialize` and before training (`run_training.maybe_load_checkpoint`),
with `load_pretrained_weights`: every weight but the segmentation layers. nnslurm does the same
at a fresh start, records the file (path and sha256) in the "started" event and in every
checkpoint, and never loads it over a checkpoint: a resume continues from the checkpoint's
weights, and a resume asked with other weights than the run started from is refused. The check
at submission (no torch) is nnslurm.training.weights_file's.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnslurm.core.errors import CheckpointError, UsageError
from nnslurm.training.weights_file import WEIGHTS_HINT

if TYPE_CHECKING:  # the checkpoints package imports torch: `nnslurm submit` checks weights without it
    from nnslurm.checkpoints import CheckpointInfo

logger = logging.getLogger(__name__)

META_FIELD = "pretrained_weights"  # in a checkpoint's nnslurm metadata: the record, or None


@dataclass(frozen=True)
class PretrainedWeights:
    path: str  # as given, made absolute
    sha256: str  # of the file's bytes

    @classmethod
    def of_file(cls, path: Path) -> PretrainedWeights:
        """Checked before anything is written: the file must exist and be readable."""
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
        except OSError as error:
            raise UsageError(
                f"-pretrained_weights {path}: {error.strerror or error}.",
                hint=WEIGHTS_HINT,
            ) from error
        return cls(path=str(path), sha256=digest.hexdigest())

    def record(self) -> dict[str, str]:
        return asdict(self)


def record_for_resume(
    given: PretrainedWeights | None, checkpoint: CheckpointInfo
) -> Mapping[str, Any] | None:
    """The record a resumed run carries on; refuses weights other than those the run started from.

    Checks only: nothing is loaded, the checkpoint's weights are the run's.
    """
    if META_FIELD not in checkpoint.meta:  # plain nnU-Net or an older nnslurm: nothing recorded
        if given is not None:
            logger.warning(
                "%s does not record pretrained weights: cannot check -pretrained_weights %s; resuming "
                "from the checkpoint's weights (the pretrained ones are not loaded again)",
                checkpoint.path,
                given.path,
            )
            return given.record()
        return None
    recorded: Mapping[str, Any] | None = checkpoint.meta[META_FIELD]
    if given is None:
        return recorded
    if recorded is None:
        raise CheckpointError(
            f"-pretrained_weights {given.path}: this run started without pretrained weights "
            f"({checkpoint.path.name}, epoch {checkpoint.epoch}); they apply at a fresh start only.",
            hint="drop -pretrained_weights to resume this run, or start a new run in another results folder.",
        )
    if recorded.get("sha256") != given.sha256:
        raise CheckpointError(
            f"-pretrained_weights {given.path} (sha256 {given.sha256[:12]}...) is not the file this run "
            f"started from: {recorded.get('path')} (sha256 {str(recorded.get('sha256'))[:12]}...).",
            hint="resume with the same -pretrained_weights file (or without the flag); other weights need "
            "a new run in another results folder.",
        )
    logger.info("resuming: the pretrained weights %s are not loaded again (the checkpoint's are)", given.path)
    return recorded


def load_into(trainer: Any, weights: PretrainedWeights) -> None:
    """As nnUNetv2_train at a fresh start: initialize, then nnU-Net's load_pretrained_weights."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    if not trainer.was_initialized:
        trainer.initialize()
    load_pretrained_weights(trainer.network, weights.path, verbose=False)
    logger.info("fresh start from pretrained weights %s (sha256 %s)", weights.path, weights.sha256)
