"""Stop and resume across the trainers nnU-Net itself ships, continued: the loss, the architecture and
the training length (the schedule, the optimizer and the augmentation, and why these stand for the
rest: tests/test_trainer_variants.py; two files so that two test workers share them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import NnunetEnv, variant_stopped_twice_ends_bitwise_equal

pytestmark = pytest.mark.nnunet

VARIANTS = [
    pytest.param("nnUNetTrainerTopk10Loss", 2, id="loss-topk"),
    pytest.param("nnUNetTrainerNoDeepSupervision", 2, id="no-deep-supervision"),
    pytest.param("nnUNetTrainer_5epochs", None, id="length-5-epochs"),
]


@pytest.mark.parametrize(("variant", "epochs"), VARIANTS)
def test_stopped_twice_ends_bitwise_equal_to_never_stopped(
    variant: str, epochs: int | None, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    variant_stopped_twice_ends_bitwise_equal(variant, epochs, nnunet_env, tmp_path)
