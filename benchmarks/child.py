"""One training process of a benchmark: plain nnU-Net or `nnslurm train`, with the same probes.

Both arms run the real `nnUNetTrainer` on the same data with the same settings and seed; the
probes are patched onto nnU-Net's base class, so both pay for them alike:

- each process appends {"process_start": time.time()} first;
- every finished `train_step` appends {"epoch", "iteration", "start", "seconds"} to --record
  (`start` from time.time(), so the parent can line it up with a signal it sent);
- every `on_epoch_end` appends {"epoch_end": time.monotonic(), "cpu": time.process_time()}, at
  the instant nnU-Net logs epoch_end_timestamps (process CPU time: every thread, the writer's too);
- --signals "E:I,...": SIGUSR1 to this process just before the step at epoch E iteration I, once
  per point across restarts (--signal-state). Plain nnU-Net has no handler: it dies there.
- --first-step-exit: record {"first_step": time} when the first training iteration is about to
  start (on_train_epoch_start has run; its batch is not drawn yet: what a batch costs depends on
  the random augmentation drawn, which differs between a resumed RNG and a fresh one), exit 0.
- --padding-mb N: N MB of extra network weights, for checkpoints of a real 3d_fullres size.

The plain arm does what `nnUNetv2_train` does (nnunetv2.run.run_training: get_trainer_from_args,
maybe_load_checkpoint for --c, trainer.run_training()), with the epoch lengths overridden.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arm", choices=("plain", "nnslurm"), required=True)
    parser.add_argument("--dataset", default="501")
    parser.add_argument("--plans", default="nnslurmTinyPlans")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--val-iterations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--save-every", type=int, default=50, help="plain arm: nnU-Net's save_every")
    parser.add_argument("--continue", dest="continue_training", action="store_true", help="plain: --c")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--signals", default="")
    parser.add_argument("--signal-state", type=Path)
    parser.add_argument("--first-step-exit", action="store_true")
    parser.add_argument("--padding-mb", type=int, default=0)
    parser.add_argument("nnslurm_args", nargs="*", help="extra `nnslurm train` flags (after --)")
    args = parser.parse_args()
    _instrument(args)
    if args.arm == "plain":
        return _plain(args)
    return _nnslurm(args)


def _instrument(args: argparse.Namespace) -> None:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    points = {p.strip() for p in args.signals.split(",") if p.strip()}

    def write(record: dict[str, Any]) -> None:
        os.write(fd, (json.dumps(record) + "\n").encode())

    spec = importlib.util.find_spec("nnslurm")  # which copy of nnslurm this process runs
    write({"process_start": time.time(), "pid": os.getpid(), "nnslurm": spec.origin if spec else None})

    def fire_once(point: str) -> None:
        state = args.signal_state
        fired = state.read_text().split() if state is not None and state.exists() else []
        if point not in points or point in fired:
            return
        if state is not None:
            state.write_text("\n".join([*fired, point]))
        os.kill(os.getpid(), signal.SIGUSR1)

    original_initialize = nnUNetTrainer.initialize
    original_epoch_start = nnUNetTrainer.on_train_epoch_start
    original_epoch_end = nnUNetTrainer.on_epoch_end
    original_step = nnUNetTrainer.train_step

    def initialize(self: Any) -> None:
        original_initialize(self)
        if args.padding_mb and not hasattr(self.network, "bench_padding"):
            self.network.register_buffer("bench_padding", torch.ones(args.padding_mb * 262144))

    def on_train_epoch_start(self: Any) -> None:
        self.bench_iteration = 0
        original_epoch_start(self)
        if args.first_step_exit:
            write({"first_step": time.time()})
            os._exit(0)

    def on_epoch_end(self: Any) -> None:
        write({"epoch_end": time.monotonic(), "cpu": time.process_time(), "epoch": self.current_epoch})
        original_epoch_end(self)

    def train_step(self: Any, batch: dict) -> Any:
        context = getattr(self, "nnslurm", None)
        if context is not None:  # nnslurm's loop knows where it is (also mid-epoch after a resume)
            epoch, iteration = context.position
        else:
            epoch, iteration = self.current_epoch, self.bench_iteration
        fire_once(f"{epoch}:{iteration}")
        started_wall, started, started_cpu = time.time(), time.perf_counter(), time.thread_time()
        result = original_step(self, batch)
        write(
            {
                "epoch": epoch,
                "iteration": iteration,
                "start": started_wall,
                "seconds": time.perf_counter() - started,
                "thread_cpu": time.thread_time() - started_cpu,  # this thread only (torch: 1 thread)
            }
        )
        self.bench_iteration = iteration + 1
        return result

    nnUNetTrainer.initialize = initialize  # type: ignore[method-assign]
    nnUNetTrainer.on_train_epoch_start = on_train_epoch_start  # type: ignore[method-assign]
    nnUNetTrainer.on_epoch_end = on_epoch_end  # type: ignore[method-assign]
    nnUNetTrainer.train_step = train_step  # type: ignore[method-assign]


def _plain(args: argparse.Namespace) -> int:
    """nnunetv2.run.run_training.run_training, single process, -device cpu, epoch lengths overridden."""
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as nnslurm (nnU-Net: every core of the node)
    trainer = get_trainer_from_args(
        args.dataset,
        "3d_fullres",
        0,
        "nnUNetTrainer",
        args.plans,
        args.continue_training,
        device=torch.device("cpu"),
    )
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations
    trainer.save_every = args.save_every
    maybe_load_checkpoint(trainer, args.continue_training, False, None)
    trainer.run_training()
    return 0


def _nnslurm(args: argparse.Namespace) -> int:
    from nnslurm.cli import main as nnslurm_main

    return nnslurm_main(
        [
            "train",
            "-d", args.dataset, "-f", "0", "-p", args.plans,
            "--epochs", str(args.epochs),
            "--iterations-per-epoch", str(args.iterations),
            "--val-iterations-per-epoch", str(args.val_iterations),
            "--seed", str(args.seed),
            "--device", "cpu",
            "--no-final-validation",
            *args.nnslurm_args,
        ]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
