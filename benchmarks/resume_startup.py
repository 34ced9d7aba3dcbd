"""Start-up to the first training iteration when resuming: `nnslurm train` vs nnU-Net's `--c`.

Both arms resume a run that was interrupted at epoch 1 iteration 2 (nnslurm: by SIGUSR1, so
it resumes mid-epoch from its stop checkpoint; plain nnU-Net: killed by the same signal, it
resumes from checkpoint_latest.pth of the previous epoch, saved with save_every=1). Measured
from this process starting the child to the child being about to run its first training
iteration (the child exits there, so the same folder is resumed in every repetition):
interpreter start, imports, checkpoint choice and loading, the trainer's on_train_start (data
loaders), RNG restore, on_epoch_start/on_train_epoch_start. The first batch is not included:
its cost depends on the augmentation drawn (0.2 to 2 s here), and a resumed RNG draws other
augmentations than a fresh one. nnslurm's side also reads and checksums candidate files to pick
the newest valid one.

Goal (issue 6): nnslurm / plain <= 1.1.
"""

from __future__ import annotations

import subprocess
import time

from common import (
    DEFAULT_PLANS,
    TINY_PLANS,
    Training,
    Workspace,
    check_exit,
    interleaved,
    median,
    new_parser,
    print_header,
    print_table,
    read_records,
    run_child,
    spread,
    workspace,
)

GOAL = 1.1
STOP_AT = "1:2"


def prepare(space: Workspace, training: Training, label: str) -> dict[str, tuple]:
    """One interrupted run per arm; returns arm -> (results folder, extra child flags for resuming)."""
    folders = {}
    for arm in ("nnslurm", "plain"):
        results = space.fresh("resume_startup", f"{label}-{arm}")
        record = results / "prepare.jsonl"
        extra = ["--signals", STOP_AT, "--signal-state", str(results / "fired")]
        if arm == "plain":
            extra += ["--save-every", "1"]
        result = run_child(space, training, arm, results, record, extra)
        check_exit(result, [75] if arm == "nnslurm" else [-10], record.with_suffix(".log"))
        folders[arm] = (results, ["--save-every", "1", "--continue"] if arm == "plain" else [])
    return folders


def time_to_first_step(space: Workspace, training: Training, arm: str, folder: tuple, index: int) -> float:
    results, extra = folder
    record = results / f"startup-{index}.jsonl"
    command = [*training.child_args(arm, record), *extra, "--first-step-exit"]
    started = time.time()
    with open(record.with_suffix(".log"), "w") as log:
        code = subprocess.run(
            command, env=space.env(results), stdout=log, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        raise RuntimeError(f"{arm} resume exited {code}; see {record.with_suffix('.log')}")
    first = next(r["first_step"] for r in read_records(record) if "first_step" in r)
    return first - started


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument(
        "--reps", type=int, default=9, help="repetitions per arm and size (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    print_header("start-up to first training iteration when resuming: nnslurm vs nnU-Net --c")
    space = workspace(args.workdir)
    sizes = [("tiny", Training(TINY_PLANS, 2, 3, 1))] if args.quick else [
        ("nnUNetPlans", Training(DEFAULT_PLANS, 3, 4, 1)),
        ("nnUNetPlans+200MB", Training(DEFAULT_PLANS, 3, 4, 1, padding_mb=200)),
    ]  # fmt: skip
    reps = 1 if args.quick else args.reps
    rows, ratios = [], []
    for label, training in sizes:
        folders = prepare(space, training, label)
        seconds: dict[str, list[float]] = {"nnslurm": [], "plain": []}
        for index, (_, arm) in enumerate(interleaved(("nnslurm", "plain"), reps)):
            seconds[arm].append(time_to_first_step(space, training, arm, folders[arm], index))
            print(f"{label} {arm}: {seconds[arm][-1]:.3f} s", flush=True)
        ratio = median(seconds["nnslurm"]) / median(seconds["plain"])
        ratios.append(ratio)
        for arm in ("nnslurm", "plain"):
            rows.append(
                [label, arm, median(seconds[arm]), spread(seconds[arm]), ratio if arm == "nnslurm" else ""]
            )
    print_table(
        f"seconds from process start to first train_step, {reps} interleaved repetitions",
        ["checkpoint", "arm", "median s", "range s", "nnslurm / plain"],
        rows,
    )
    print_table(
        "ratio",
        ["measure", "value", "goal", "met"],
        [[f"resume start-up nnslurm / plain --c ({label})", ratio, f"<= {GOAL}", ratio <= GOAL]
         for (label, _), ratio in zip(sizes, ratios, strict=True)],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
