"""Work lost to interruptions: nnslurm vs nnU-Net `--c`, both stopped by the same real signals.

A run of E epochs x I iterations is interrupted K times by SIGUSR1 at the same K points (epoch,
iteration) in both arms, and restarted after each interruption until it finishes, as a requeued
SLURM job would be:

- nnslurm: `nnslurm train` (defaults) stops at the next iteration boundary, checkpoints, exits 75;
  the same command resumes from the newest valid checkpoint;
- plain nnU-Net: the trainer loop of `nnUNetv2_train --c` (nnU-Net installs no handler: the
  signal kills it), with save_every scaled down from 50 of 1000 epochs to the same fraction of E.

Every finished train_step is counted, across all processes of a run (child.py's record).
Iterations redone per interruption = iterations computed before the interruption that were
computed again after it; for nnslurm also from its event log (stopped vs resumed positions).

Goals (issue 6): redone per interruption <= 1; computed / (E x I) <= 1 + K / (E x I).
"""

from __future__ import annotations

import random
from typing import Any

from common import (
    TINY_PLANS,
    Training,
    Workspace,
    check_exit,
    new_parser,
    print_header,
    print_table,
    read_events,
    read_records,
    run_child,
    run_folder,
    workspace,
)


def choose_points(epochs: int, iterations: int, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` interruption points in distinct epochs, at random iterations (seeded)."""
    chooser = random.Random(seed)
    chosen = sorted(chooser.sample(range(epochs), count))
    return [(epoch, chooser.randrange(iterations)) for epoch in chosen]


def train_until_done(
    space: Workspace, training: Training, arm: str, points: list[tuple[int, int]], save_every: int
) -> tuple[list[int], Any]:
    """Start the arm again after every interruption; returns (exit codes, results folder)."""
    results = space.fresh("interruptions", arm)
    record = results / "record.jsonl"
    extra = ["--signals", ",".join(f"{e}:{i}" for e, i in points), "--signal-state", str(results / "fired")]
    if arm == "plain":
        extra += ["--save-every", str(save_every), "--continue"]
    interrupted = 75 if arm == "nnslurm" else -10  # nnslurm: exit 75; nnU-Net: killed by SIGUSR1
    codes = []
    for _ in range(len(points) + 2):
        result = run_child(space, training, arm, results, record, extra)
        check_exit(result, [0, interrupted], record.with_suffix(".log"))
        codes.append(result.returncode)
        if result.returncode == 0:
            return codes, results
    raise RuntimeError(f"{arm} did not finish after {len(codes)} starts: {codes}")


def redone_per_restart(records: list[dict[str, Any]], iterations: int) -> list[int]:
    """For each restart: steps computed before it that the next process computed again."""
    redone, last_done, after_restart = [], -1, False
    for record in records:
        if "process_start" in record:
            after_restart = last_done >= 0
        elif "seconds" in record:
            index = record["epoch"] * iterations + record["iteration"]
            if after_restart:
                redone.append(max(0, last_done + 1 - index))
                after_restart = False
            last_done = index
    return redone


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    parser.add_argument("--interruptions", type=int, default=3, help="K (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=6, help="seed for choosing the points")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.iterations, args.interruptions = 2, 3, 1
    print_header("iterations lost to interruptions: nnslurm vs nnU-Net --c")
    space = workspace(args.workdir)
    training = Training(TINY_PLANS, args.epochs, args.iterations, 1)
    total = args.epochs * args.iterations
    save_every = max(1, round(args.epochs * 50 / 1000))
    points = choose_points(args.epochs, args.iterations, args.interruptions, args.seed)
    if args.quick:
        points = [(1, 1)]
    print(
        f"{args.epochs} epochs x {args.iterations} iterations = {total}; SIGUSR1 at (epoch, iteration) "
        f"{points}; plain nnU-Net save_every={save_every} (50 of 1000 epochs, scaled)",
        flush=True,
    )
    rows, summary = [], []
    for arm in ("nnslurm", "plain"):
        codes, results = train_until_done(space, training, arm, points, save_every)
        records = read_records(results / "record.jsonl")
        computed = sum(1 for r in records if "seconds" in r)
        redone = redone_per_restart(records, args.iterations)
        events_redone = ""
        if arm == "nnslurm":
            events = read_events(run_folder(results, TINY_PLANS))
            stopped = [
                e["epoch"] * args.iterations + e["iteration"] for e in events if e["event"] == "stopped"
            ]
            resumed = [
                e["epoch"] * args.iterations + e["iteration"] for e in events if e["event"] == "resumed"
            ]
            events_redone = " ".join(str(s - r) for s, r in zip(stopped, resumed, strict=True))
        ratio = computed / total
        rows.append(
            [arm, " ".join(map(str, codes)), " ".join(map(str, redone)), events_redone, computed, ratio]
        )
        summary.append((arm, max(redone, default=0), ratio))
    goal = 1 + len(points) / total
    print_table(
        f"K={len(points)} interruptions of a {total}-iteration run",
        ["arm", "exit codes", "redone per interruption (records)", "(event log)", "iterations computed",
         "computed / total"],
        rows,
    )  # fmt: skip
    print_table(
        "goals",
        ["measure", "nnslurm", "plain nnU-Net --c", "goal", "nnslurm met"],
        [
            [
                "max iterations redone per interruption",
                summary[0][1],
                summary[1][1],
                "<= 1",
                summary[0][1] <= 1,
            ],
            [
                "computed / uninterrupted",
                summary[0][2],
                summary[1][2],
                f"<= {goal:.4g}",
                summary[0][2] <= goal,
            ],
        ],
    )
    interval = save_every * args.iterations
    print(
        f"plain nnU-Net redoes what it computed since its last save: 0..{interval - 1} iterations here, "
        f"{(interval - 1) / 2:.1f} on average for a signal at a random time; at full length (1000 x 250, "
        f"save_every=50) 0..{50 * 250 - 1}, {(50 * 250 - 1) / 2:.0f} on average"
    )

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
