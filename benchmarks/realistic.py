"""A real nnU-Net 3d_fullres trainer of realistic size, built in this process (no data needed).

The network comes from nnU-Net's own plans for a dataset of 160³ cases (patch 128³, 6 stages,
32..320 features: 31 M parameters, what a typical CT/MR task gets); one SGD step with random
gradients gives the optimizer its momentum buffers, so the state is what a user's job saves:
~125 MB of weights + ~125 MB of momentum, about 250 MB on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common import DEFAULT_PLANS, REALISTIC_ID, REALISTIC_NAME, Workspace, realistic_plans


def build_trainer(space: Workspace, results: Path, trainer_class: type, realistic: bool = True) -> Any:
    """An initialised nnU-Net trainer (CPU) with momentum buffers; `realistic=False`: dataset 501's plans."""
    import torch

    if realistic:
        plans_file = realistic_plans(space)
    else:
        plans_file = space.preprocessed / "Dataset501_Synthetic" / f"{DEFAULT_PLANS}.json"
    os.environ.update(
        nnUNet_raw=str(space.raw), nnUNet_preprocessed=str(space.preprocessed), nnUNet_results=str(results)
    )
    plans = json.loads(plans_file.read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((plans_file.parent / "dataset.json").read_text())
    trainer = trainer_class(
        plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json, device=torch.device("cpu")
    )
    trainer.initialize()
    for parameter in trainer.network.parameters():
        parameter.grad = torch.randn_like(parameter)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return trainer


def nnslurm_trainer(space: Workspace, results: Path, realistic: bool = True) -> Any:
    """`build_trainer` with nnslurm's loop mixed in and its context set, as `nnslurm train` has it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnslurm.checkpoints import BackgroundWriter
    from nnslurm.runs.events import EventLog
    from nnslurm.training.signals import StopMonitor
    from nnslurm.training.trainer import LoopContext, preemptible_class

    trainer = build_trainer(space, results, preemptible_class(nnUNetTrainer), realistic)
    trainer.nnslurm = LoopContext(
        monitor=StopMonitor(("USR1",), 60.0, lambda request, phase: None),
        writer=BackgroundWriter(),
        events=EventLog(Path(trainer.output_folder)),
        overrides={},
        save_every_minutes=None,
        deterministic=False,
    )
    return trainer


def state_megabytes(trainer: Any) -> float:
    """Bytes torch.save writes for weights + optimizer (shared storages counted once)."""
    storages = {}
    for tensor in list(trainer.network.state_dict().values()) + [
        value
        for state in trainer.optimizer.state.values()
        for value in state.values()
        if hasattr(value, "untyped_storage")
    ]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 1e6


REALISTIC_DATASET = f"Dataset{REALISTIC_ID}_{REALISTIC_NAME}"
