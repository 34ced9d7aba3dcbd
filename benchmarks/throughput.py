"""Training throughput: `nnslurm train` vs plain nnU-Net, same trainer, data, settings and seed.

Each repetition trains every arm from scratch in a fresh process. The throughput of a run is
its training iterations per second of wall time over epochs 1..E-1 (from the end of epoch 0 to
the end of the last epoch: training, validation and everything between epochs, i.e. nnslurm's
background checkpoints and nnU-Net's synchronous ones), so start-up and the first epoch's
warm-up are left out. The process's CPU time over the same window (all threads: nnslurm's
writer too) gives CPU seconds per iteration. nnslurm runs with its defaults (checkpoint_latest.pth
every epoch, in the background); plain nnU-Net with its own (save_every=50: no periodic save in
a short run; checkpoint_best.pth synchronously whenever the EMA Dice improves).

Two ways to put the arms side by side:
- interleaved (default): one run after the other, in alternating order (A B, B A, ...);
- --concurrent: both arms at the same time, each pinned to its own CPU (swapped every
  repetition), so that other jobs on a shared machine slow both alike. Each arm then trains on
  one core, and nnslurm's background writer shares that core with its training: the work
  nnslurm adds is paid for in full.

--arms picks the arms: plain (nnU-Net's own loop), nnslurm (this checkout), plain-tuned (nnU-Net's
loop with glibc's malloc thresholds fixed as nnslurm fixes them, see nnslurm/training/malloc.py, through
MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_), other (`nnslurm train` of another copy of the
package, --compare-checkout DIR holding DIR/nnslurm, e.g. a `git worktree` of the commit before a
change). Ratios are against the first arm.

Goal (issue 6): nnslurm / plain >= 0.99.
"""

from __future__ import annotations

from pathlib import Path

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
    spread,
    start_child,
    workspace,
)

from nnslurm.training.malloc import MMAP_THRESHOLD, TRIM_THRESHOLD

GOAL = 0.99
ARMS = ("plain", "nnslurm", "plain-tuned", "other")
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


def run_throughput(record: Path) -> tuple[float, float, float]:
    """(iterations/s, CPU s/iteration over epochs 1.., median train_step s) of one run's records."""
    records = read_records(record)
    steps = [r for r in records if "seconds" in r]
    ends = sorted((r for r in records if "epoch_end" in r), key=lambda r: r["epoch"])
    later = [r for r in steps if r["epoch"] >= 1]
    if len(ends) < 2 or not later:
        raise RuntimeError(f"{record}: fewer than two epochs recorded")
    wall = ends[-1]["epoch_end"] - ends[0]["epoch_end"]
    cpu = ends[-1]["cpu"] - ends[0]["cpu"]
    return len(later) / wall, cpu / len(later), median([r["seconds"] for r in steps])


def run_arms(
    space: Workspace,
    training: Training,
    batch: list[tuple[int, str]],
    checkout: Path | None,
    cpus: list[int | None],
) -> dict[str, Path]:
    """Start the (repetition, arm) runs of `batch` together (one CPU each, or unpinned); their records."""
    started = []
    for (repetition, arm), cpu in zip(batch, cpus, strict=True):
        results = space.fresh("throughput", f"{arm}-{repetition}")
        record = results / "record.jsonl"
        process = start_child(
            space, training, "plain" if arm.startswith("plain") else "nnslurm", results, record,
            checkout=checkout if arm == "other" else None, cpu=cpu,
            environ=TUNED_MALLOC if arm == "plain-tuned" else None,
        )  # fmt: skip
        started.append((arm, process, record))
    records = {}
    for arm, process, record in started:
        process.wait()
        check_exit(process, [0], record.with_suffix(".log"))
        records[arm] = record
    return records


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per arm (default: %(default)s)")
    parser.add_argument("--plans", default=DEFAULT_PLANS, help="plans identifier (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=5)
    parser.add_argument("--arms", default="plain,nnslurm", help="comma-separated (default: %(default)s)")
    parser.add_argument("--concurrent", action="store_true", help="two arms at once, one CPU each")
    parser.add_argument("--compare-checkout", type=Path, help="folder holding the 'other' nnslurm package")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.plans, args.epochs, args.iterations, args.val_iterations = 1, TINY_PLANS, 2, 2, 1
    arms = tuple(args.arms.split(","))
    if not set(arms) <= set(ARMS) or len(set(arms)) != len(arms) or len(arms) < 2:
        parser.error(f"--arms: two or more of {', '.join(ARMS)}")
    if "other" in arms and args.compare_checkout is None:
        parser.error("--arms other needs --compare-checkout DIR")
    if args.concurrent and len(arms) != 2:
        parser.error("--concurrent runs exactly two arms (one per CPU)")
    checkout = args.compare_checkout.resolve() if args.compare_checkout else None
    mode = "concurrent, one CPU each" if args.concurrent else "interleaved"
    print_header(f"training throughput: {' vs '.join(arms)} ({mode})")
    space = workspace(args.workdir)
    training = Training(args.plans, args.epochs, args.iterations, args.val_iterations)
    rates: dict[str, list[float]] = {arm: [] for arm in arms}
    cpus: dict[str, list[float]] = {arm: [] for arm in arms}
    steps: dict[str, list[float]] = {arm: [] for arm in arms}
    if args.concurrent:
        batches = [[(rep, arm) for arm in arms] for rep in range(args.reps)]
        pins: list[list[int | None]] = [[rep % 2, 1 - rep % 2] for rep in range(args.reps)]
    else:
        batches = [[run] for run in interleaved(arms, args.reps)]
        pins = [[None] for _ in batches]
    for batch, pin in zip(batches, pins, strict=True):
        for arm, record in run_arms(space, training, batch, checkout, pin).items():
            rate, cpu, step = run_throughput(record)
            rates[arm].append(rate)
            cpus[arm].append(cpu)
            steps[arm].append(step)
            line = f"{rate:.4f} it/s, {cpu:.4f} CPU s/it, train_step median {step:.4f} s"
            print(f"rep {batch[0][0]} {arm:8s} {line}", flush=True)
    print_table(
        f"throughput, {args.plans}, {args.epochs} epochs x {args.iterations} iterations "
        f"(+{args.val_iterations} validation), {args.reps} repetitions, {mode}",
        ["arm", "median it/s", "range it/s", "median CPU s/it", "range CPU s/it", "median train_step s"],
        [
            [arm, median(rates[arm]), spread(rates[arm]), median(cpus[arm]), spread(cpus[arm]),
             median(steps[arm])]
            for arm in arms
        ],
    )  # fmt: skip
    base, rows = arms[0], []
    for arm in arms[1:]:
        pairs = [a / b for a, b in zip(rates[arm], rates[base], strict=True)]
        ratio = median(rates[arm]) / median(rates[base])
        per_cpu = median(cpus[base]) / median(cpus[arm])  # iterations per CPU second
        goal = base == "plain" and arm in ("nnslurm", "other")
        rows += [
            [f"{arm} / {base} it/s (ratio of medians)", ratio, f">= {GOAL}" if goal else "",
             ratio >= GOAL if goal else ""],
            [f"{arm} / {base} it/s (median of paired ratios)", median(pairs), f">= {GOAL}" if goal else "",
             median(pairs) >= GOAL if goal else ""],
            [f"{arm} / {base} paired ratios", " ".join(f"{p:.3f}" for p in pairs), "", ""],
            [f"{arm} / {base} iterations per CPU second", per_cpu, "", ""],
        ]  # fmt: skip
    print_table("ratio", ["measure", "value", "goal", "met"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
