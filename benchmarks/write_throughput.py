"""Checkpoint write throughput vs the disk's plain sequential write speed.

nnslurm's writer (what the background thread and the stop path run, write_checkpoint: the
weights checksum, then atomic_torch_save: temp file, torch.save, flush + fsync, os.replace,
fsync of the folder) writes the checkpoint of a real nnU-Net trainer of realistic size (see
realistic.py) over the previous one; `dd if=/dev/zero of=F bs=1M count=N conv=fsync` writes the
same number of bytes into a new file in the same folder (removing it is not timed, as nnslurm
frees the file it replaces in the background). A third arm, torch.save into an io.BytesIO, shows
what serialising costs without a disk (it includes the buffer growing by copies, so it is no lower
bound). Interleaved repetitions; throughput = bytes / median seconds.

Goal (issue 6): nnslurm's MB/s / dd's MB/s >= 0.8.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from typing import Any

from common import interleaved, median, new_parser, print_header, print_table, spread, timed, workspace
from realistic import nnslurm_trainer

GOAL = 0.8


def snapshot(trainer: Any) -> dict[str, Any]:
    """The state nnslurm's writer receives for a checkpoint, taken as the loop takes it."""
    from nnslurm.core import rng
    from nnslurm.training.agreement import RankState

    return trainer._snapshot(1, 0, [RankState((1, 0), rng.capture(), [])])


def serialise_only(trainer: Any) -> float:
    """torch.save of the same state into an io.BytesIO: serialisation (and the buffer's growth), no disk."""
    import torch

    state = snapshot(trainer)
    seconds = timed(lambda: torch.save(state, io.BytesIO()))
    trainer.nnslurm.writer.copies.release(state)
    return seconds


def write(trainer: Any, target: Path) -> tuple[float, float]:
    """write_checkpoint's two steps timed apart: (weights checksum s, atomic_torch_save s)."""
    from nnslurm.checkpoints import META_KEY, atomic_torch_save, weights_checksum

    state = snapshot(trainer)  # not timed: the loop's part (checkpoint_stall.py)
    checksum = timed(lambda: state[META_KEY].update(weights_crc32=weights_checksum(state["network_weights"])))
    saving = timed(lambda: atomic_torch_save(state, target))
    trainer.nnslurm.writer.copies.release(state)
    return checksum, saving


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--reps", type=int, default=9, help="repetitions per arm (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = 1
    print_header("checkpoint write throughput vs dd conv=fsync")
    space = workspace(args.workdir, need_dataset=args.quick)
    results = space.fresh("write_throughput")
    trainer = nnslurm_trainer(space, results, realistic=not args.quick)
    folder = Path(trainer.output_folder)
    target, dd_target = folder / "checkpoint_latest.pth", folder / "dd.bin"
    write(trainer, target)
    size = target.stat().st_size
    count = max(1, round(size / 2**20))
    dd = ["dd", "if=/dev/zero", f"of={dd_target}", "bs=1M", f"count={count}", "conv=fsync"]

    def run_dd() -> None:
        subprocess.run(dd, check=True, capture_output=True, timeout=600)

    seconds: dict[str, list[float]] = {"checksum": [], "save": [], "writer": [], "dd": [], "memory": []}
    for _, arm in interleaved(("nnslurm", "dd", "memory"), args.reps):
        if arm == "nnslurm":
            checksum, saving = write(trainer, target)
            seconds["checksum"].append(checksum)
            seconds["save"].append(saving)
            seconds["writer"].append(checksum + saving)
        elif arm == "dd":
            seconds["dd"].append(timed(run_dd))
            dd_target.unlink()  # not timed: nnslurm frees the file it replaces in the background too
        else:
            seconds["memory"].append(serialise_only(trainer))
        os.sync()
    rates = {arm: size / 1e6 / median(values) for arm, values in seconds.items()}
    print_table(
        f"{size / 1e6:.0f} MB into {folder.parent.parent.parent}, {args.reps} interleaved repetitions",
        ["writer", "median s", "range s", "MB/s"],
        [
            ["nnslurm atomic_torch_save", median(seconds["save"]), spread(seconds["save"]), rates["save"]],
            ["nnslurm weights checksum (before the save)", median(seconds["checksum"]),
             spread(seconds["checksum"]), ""],
            ["nnslurm writer: checksum + save", median(seconds["writer"]), spread(seconds["writer"]),
             rates["writer"]],
            [f"dd bs=1M count={count} conv=fsync", median(seconds["dd"]), spread(seconds["dd"]), rates["dd"]],
            ["torch.save into an io.BytesIO (no disk)", median(seconds["memory"]),
             spread(seconds["memory"]), rates["memory"]],
        ],
    )  # fmt: skip
    print_table(
        "ratio",
        ["measure", "value", "goal", "met"],
        [
            [
                f"{name} MB/s / dd MB/s",
                rates[arm] / rates["dd"],
                f">= {GOAL}",
                rates[arm] / rates["dd"] >= GOAL,
            ]
            for name, arm in (("atomic_torch_save", "save"), ("writer (checksum + save)", "writer"))
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
