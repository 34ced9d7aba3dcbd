"""Stop and resume across the trainers nnU-Net itself ships (nnunetv2.training.nnUNetTrainer.variants),
not only nnUNetTrainer: one of each kind, a deterministic run stopped twice by real signals (mid-epoch
in the first epoch, mid-epoch in the second: after an epoch end, its schedule step and its
checkpoints) against the same run never stopped, their final weights bitwise equal.

Each variant runs with tests/signal_trainers.py's signal points laid over it
(`-tr signal_trainers:Signals_<variant>`, found as `-tr <variant>` is), tiny epochs, one training
process at a time: about 4 starts per variant. The kinds and what stands for them:

- learning-rate schedule: nnUNetTrainer_warmup. It overrides load_checkpoint with a torch.load in
  torch's safe default mode, which refused nnU-Net's own checkpoints (the numpy scalars in the
  logging state: exit 1 and a traceback, as with nnUNetv2_train --c) until nnslurm allowed those
  values, and only those, for that call (nnslurm/training/trainer.py load_checkpoint,
  nnslurm/checkpoints/read.py numpy_values_allowed). (nnUNetTrainerCosAnneal, not run here, steps
  a torch scheduler by epoch as nnUNetTrainer's PolyLR does.)
- optimizer: nnUNetTrainerAdam (an optimizer state of another shape in the checkpoint).
  nnUNetTrainerAdan needs the adan-pytorch package, which nnU-Net does not install.
- data augmentation: nnUNetTrainerDA5 (nnU-Net's heaviest pipeline: the most random draws).
- loss: nnUNetTrainerTopk10Loss (the hardest 10 % of voxels only).
- architecture: nnUNetTrainerNoDeepSupervision.
- training length: nnUNetTrainer_5epochs (its own num_epochs, no --epochs).

The other variants change one of these things the same way (another epoch count, loss, optimizer,
BatchNorm for InstanceNorm, mirroring off, another oversampling share); the benchmarking and
competition trainers are not for training runs. They are not run here, to keep this file to a
few minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import NnunetEnv, variant_stopped_twice_ends_bitwise_equal

pytestmark = pytest.mark.nnunet

VARIANTS = [  # the other three: tests/test_trainer_variants_model.py (two files: two test workers)
    pytest.param("nnUNetTrainer_warmup", 2, id="lr-warmup"),
    pytest.param("nnUNetTrainerAdam", 2, id="optimizer-adam"),
    pytest.param("nnUNetTrainerDA5", 2, id="augmentation-da5"),
]


@pytest.mark.parametrize(("variant", "epochs"), VARIANTS)
def test_stopped_twice_ends_bitwise_equal_to_never_stopped(
    variant: str, epochs: int | None, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    variant_stopped_twice_ends_bitwise_equal(variant, epochs, nnunet_env, tmp_path)
