"""Training-loop stall of one periodic checkpoint: nnslurm (background) vs nnU-Net (torch.save).

Both arms call `save_checkpoint("checkpoint_latest.pth")` on the same real nnU-Net trainer of
realistic size (see realistic.py), as nnU-Net's on_epoch_end does every save_every epochs:

- nnslurm: the mixin's save_checkpoint: take a snapshot (host buffers, copied by a helper thread),
  hand it to the background writer, return; then nnU-Net's epoch end goes on (progress.png is
  plotted: run here too, not timed) and the loop waits for the snapshot copy to be complete
  before the weights can change (the end of on_epoch_end, the next iteration boundary);
- plain: nnUNetTrainer.save_checkpoint: torch.save of the live state, synchronously; then the
  same plot.

"stall" is the time the loop thread is blocked: the save call plus, for nnslurm, the wait for the
copy (median of interleaved repetitions). A third arm waits for the copy right after the call
(nothing to overlap with): the worst case, and the cost of a timed mid-epoch save, which copies
synchronously.
The background write is reported beside it: where training uses every core (CPU training, as
here), its CPU time is taken from training; the throughput benchmark counts that.

Goal (issue 6): stall(nnslurm) / stall(torch.save) <= 0.1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from common import (
    interleaved,
    median,
    new_parser,
    print_header,
    print_table,
    read_events,
    spread,
    timed,
    workspace,
)
from realistic import nnslurm_trainer, state_megabytes

GOAL = 0.1


def wait_for_copy(trainer: Any) -> None:
    """What the loop waits for at the end of on_epoch_end and at each iteration boundary."""
    trainer.nnslurm.writer.copies.wait()


def log_one_epoch(trainer: Any) -> None:
    """Values nnU-Net logs for one epoch, so that its plot_progress_png has something to draw."""
    now = time.time()
    for key, value in (
        ("mean_fg_dice", 0.5), ("dice_per_class_or_region", [0.5]), ("train_losses", -0.3),
        ("val_losses", -0.2), ("lrs", 0.01), ("epoch_start_timestamps", now - 60),
        ("epoch_end_timestamps", now),
    ):  # fmt: skip
        trainer.logger.log(key, value, 0)


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--reps", type=int, default=9, help="repetitions per arm (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = 1
    print_header("training-loop stall of one periodic checkpoint: nnslurm vs torch.save")
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    space = workspace(args.workdir, need_dataset=args.quick)
    results = space.fresh("checkpoint_stall")
    trainer = nnslurm_trainer(space, results, realistic=not args.quick)
    folder = Path(trainer.output_folder)
    megabytes = state_megabytes(trainer)
    print(f"state: {megabytes:.0f} MB (weights + optimizer), {torch.get_num_threads()} torch threads")

    log_one_epoch(trainer)
    parts: list[tuple[float, float]] = []

    def nnslurm_save() -> float:
        seconds = timed(lambda: trainer.save_checkpoint(str(folder / "checkpoint_latest.pth")))
        trainer.logger.plot_progress_png(str(folder))  # the rest of nnU-Net's on_epoch_end
        waited = timed(lambda: wait_for_copy(trainer))
        parts.append((seconds, waited))
        trainer.nnslurm.writer.wait()
        return seconds + waited

    def nnslurm_no_overlap() -> float:
        seconds = timed(lambda: trainer.save_checkpoint(str(folder / "checkpoint_latest.pth")))
        seconds += timed(lambda: wait_for_copy(trainer))
        trainer.logger.plot_progress_png(str(folder))
        trainer.nnslurm.writer.wait()
        return seconds

    def plain_save() -> float:
        seconds = timed(lambda: nnUNetTrainer.save_checkpoint(trainer, str(folder / "plain_latest.pth")))
        trainer.logger.plot_progress_png(str(folder))
        return seconds

    saves = {"nnslurm": nnslurm_save, "no overlap": nnslurm_no_overlap, "plain": plain_save}
    stall: dict[str, list[float]] = {arm: [] for arm in saves}
    for _, arm in interleaved(tuple(saves), args.reps):
        stall[arm].append(saves[arm]())
        os.sync()  # plain torch.save leaves dirty pages: flush them outside the timed part
    writes = [e["seconds"] for e in read_events(folder) if e["event"] == "checkpoint"]
    size = (folder / "checkpoint_latest.pth").stat().st_size / 1e6
    plain_size = (folder / "plain_latest.pth").stat().st_size / 1e6
    ratio = median(stall["nnslurm"]) / median(stall["plain"])
    worst = median(stall["no overlap"]) / median(stall["plain"])
    print_table(
        f"loop-thread stall, {megabytes:.0f} MB state, {args.reps} interleaved repetitions",
        ["arm", "median s", "range s", "file MB"],
        [
            ["nnslurm: save_checkpoint + wait for the copy", median(stall["nnslurm"]),
             spread(stall["nnslurm"]), f"{size:.0f}"],
            ["  of which save_checkpoint (snapshot + submit)", median([p[0] for p in parts]),
             spread([p[0] for p in parts]), ""],
            ["  of which wait for the copy, after the plot", median([p[1] for p in parts]),
             spread([p[1] for p in parts]), ""],
            ["nnslurm, waiting for the copy at once (worst case)", median(stall["no overlap"]),
             spread(stall["no overlap"]), ""],
            ["plain nnU-Net: save_checkpoint (torch.save)", median(stall["plain"]), spread(stall["plain"]),
             f"{plain_size:.0f}"],
            ["nnslurm background write, wall (not on the loop)", median(writes), spread(writes), ""],
        ],
    )  # fmt: skip
    print_table(
        "ratio",
        ["measure", "value", "goal", "met"],
        [
            ["loop-thread stall nnslurm / torch.save", ratio, f"<= {GOAL}", ratio <= GOAL],
            ["same, worst case (no overlap)", worst, f"<= {GOAL}", worst <= GOAL],
        ],
    )
    trainer.nnslurm.writer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
