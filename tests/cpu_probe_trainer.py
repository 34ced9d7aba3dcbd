"""A trainer for tests: nnU-Net's, which records what the process really uses for CPUs while it trains.

At epoch 1 iteration 1 (the training and validation augmenters of epoch 0 both started) it writes
{"torch_threads", "children", "pid"} as JSON to $NNSLURM_TEST_CPU_PROBE: torch's intra-op thread
count as torch reports it, and the live child processes of this process counted in /proc (nnU-Net's
augmentation workers: NonDetMultiThreadedAugmenter forks `nnUNet_n_proc_DA` for training and
max(1, n // 2) for validation; none with 0, the single-threaded augmenter).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def child_pids(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc/PID/stat."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, parent = stat.rpartition(")")[2].split()[:2]  # after "(comm)": state, ppid
        if int(parent) == pid and state != "Z":
            children.append(int(entry.name))
    return children


class nnUNetTrainerCpuProbe(nnUNetTrainer):
    def train_step(self, batch: dict) -> Any:
        result = super().train_step(batch)
        steps = getattr(self, "probe_steps", 0) + 1
        self.probe_steps = steps
        if steps == self.num_iterations_per_epoch + 2:  # epoch 1, iteration 1 (a fresh start)
            record = {"torch_threads": torch.get_num_threads(), "children": len(child_pids(os.getpid()))}
            Path(os.environ["NNSLURM_TEST_CPU_PROBE"]).write_text(json.dumps({**record, "pid": os.getpid()}))
        return result
