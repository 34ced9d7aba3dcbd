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
from signal_trainers import VARIANT_PREFIX
from support import (
    TINY_PLANS,
    NnunetEnv,
    final_weights,
    stops_and_resumes,
    train_until_finished,
)

pytestmark = pytest.mark.nnunet

ITERATIONS = 4
RUN = [
    "-d", "501", "-f", "0", "-p", TINY_PLANS, "--device", "cpu",
    "--iterations-per-epoch", str(ITERATIONS), "--val-iterations-per-epoch", "1",
    "--deterministic", "--no-final-validation",
]  # fmt: skip
# mid-epoch in epoch 0, and in epoch 1 (after an epoch end: its schedule step, its checkpoints);
# a signal lands at an iteration and the stop comes at the next boundary
POINTS = "0:2,1:1"
STOPPED_AT = [(0, 3), (1, 2)]

VARIANTS = [
    pytest.param("nnUNetTrainer_warmup", 2, id="lr-warmup"),
    pytest.param("nnUNetTrainerAdam", 2, id="optimizer-adam"),
    pytest.param("nnUNetTrainerDA5", 2, id="augmentation-da5"),
    pytest.param("nnUNetTrainerTopk10Loss", 2, id="loss-topk"),
    pytest.param("nnUNetTrainerNoDeepSupervision", 2, id="no-deep-supervision"),
    pytest.param("nnUNetTrainer_5epochs", None, id="length-5-epochs"),
]


@pytest.mark.parametrize(("variant", "epochs"), VARIANTS)
def test_stopped_twice_ends_bitwise_equal_to_never_stopped(
    variant: str, epochs: int | None, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    trainer = VARIANT_PREFIX + variant
    args = [*RUN, "-tr", f"signal_trainers:{trainer}", *(["--epochs", str(epochs)] if epochs else [])]
    reference = NnunetEnv(nnunet_env.raw, nnunet_env.preprocessed, tmp_path / "reference")
    reference.results.mkdir()
    assert train_until_finished(reference.env(nnUNet_n_proc_DA="0"), args) == [0]

    env = nnunet_env.env(
        nnUNet_n_proc_DA="0", NNSLURM_TEST_SIGNALS=POINTS, NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired")
    )
    assert train_until_finished(env, args) == [75, 75, 0]  # a variant that cannot resume exits 1 here
    run_folder = nnunet_env.run_folder(trainer)
    stopped, resumed = stops_and_resumes(run_folder)
    assert stopped == STOPPED_AT
    assert resumed == stopped  # no iteration redone
    expected, actual = final_weights(reference.run_folder(trainer)), final_weights(run_folder)
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not expected[key].equal(actual[key])]
    assert not different, f"{variant}: weights differ after two stops: {different[:5]}"
