"""Training throughput: `nnslurm train` vs plain nnU-Net, same trainer, data, settings and seed.

Each repetition trains both arms from scratch in fresh processes, in alternating order. The
throughput of a run is its training iterations per second of wall time over epochs 1..E-1
(from the end of epoch 0 to the end of the last epoch: training, validation and everything
between epochs, i.e. nnslurm's background checkpoints and nnU-Net's synchronous ones), so
start-up and the first epoch's warm-up are left out. Beside wall time, the process's CPU time
over the same window (all threads: nnslurm's writer thread too) gives CPU seconds per
iteration: on a shared machine it is far less sensitive to other jobs than wall time, and it
still counts all the work nnslurm adds. nnslurm runs with its defaults
(checkpoint_latest.pth every epoch in the background); plain nnU-Net with its own
(save_every=50: no periodic save in a short run; checkpoint_best.pth synchronously).

--compare-checkout DIR adds a third arm: `nnslurm train` of another copy of the nnslurm package
(DIR/nnslurm, e.g. `git worktree add DIR HEAD~1`), to measure a change side by side.

Goal (issue 6): nnslurm / plain >= 0.99.
"""

from __future__ import annotations

from pathlib import Path

from common import (
    DEFAULT_PLANS,
    TINY_PLANS,
    Training,
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

ARMS = ("plain", "nnslurm")
GOAL = 0.99


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


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per arm (default: %(default)s)")
    parser.add_argument("--plans", default=DEFAULT_PLANS, help="plans identifier (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=5)
    parser.add_argument(
        "--compare-checkout", type=Path, help="folder with another nnslurm package: a third arm, 'other'"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.plans, args.epochs, args.iterations, args.val_iterations = 1, TINY_PLANS, 2, 2, 1
    print_header("training throughput: nnslurm train vs plain nnU-Net")
    space = workspace(args.workdir)
    training = Training(args.plans, args.epochs, args.iterations, args.val_iterations)
    arms = (*ARMS, "other") if args.compare_checkout else ARMS
    rates: dict[str, list[float]] = {arm: [] for arm in arms}
    cpus: dict[str, list[float]] = {arm: [] for arm in arms}
    steps: dict[str, list[float]] = {arm: [] for arm in arms}
    for repetition, arm in interleaved(arms, args.reps):
        results = space.fresh("throughput", f"{arm}-{repetition}")
        record = results / "record.jsonl"
        other = arm == "other"
        result = run_child(
            space, training, "nnslurm" if other else arm, results, record,
            checkout=args.compare_checkout.resolve() if other else None,
        )  # fmt: skip
        check_exit(result, [0], record.with_suffix(".log"))
        rate, cpu, step = run_throughput(record)
        rates[arm].append(rate)
        cpus[arm].append(cpu)
        steps[arm].append(step)
        print(
            f"rep {repetition} {arm:8s} {rate:.4f} it/s, {cpu:.4f} CPU s/it, train_step median {step:.4f} s",
            flush=True,
        )
    pairs = [n / p for n, p in zip(rates["nnslurm"], rates["plain"], strict=True)]
    ratio = median(rates["nnslurm"]) / median(rates["plain"])
    cpu_ratio = median(cpus["plain"]) / median(cpus["nnslurm"])  # iterations per CPU second
    print_table(
        f"throughput, {args.plans}, {args.epochs} epochs x {args.iterations} iterations "
        f"(+{args.val_iterations} validation), {args.reps} interleaved repetitions",
        ["arm", "median it/s", "range it/s", "median CPU s/it", "range CPU s/it", "median train_step s"],
        [
            [
                arm,
                median(rates[arm]),
                spread(rates[arm]),
                median(cpus[arm]),
                spread(cpus[arm]),
                median(steps[arm]),
            ]
            for arm in arms
        ],
    )
    rows = [
        ["nnslurm / plain (ratio of medians)", ratio, f">= {GOAL}", ratio >= GOAL],
        ["nnslurm / plain (median of paired ratios)", median(pairs), f">= {GOAL}", median(pairs) >= GOAL],
        ["paired ratios", " ".join(f"{p:.3f}" for p in pairs), "", ""],
        ["iterations per CPU second nnslurm / plain", cpu_ratio, f">= {GOAL}", cpu_ratio >= GOAL],
    ]
    if args.compare_checkout:
        other_ratio = median(rates["other"]) / median(rates["plain"])
        other_cpu = median(cpus["plain"]) / median(cpus["other"])
        rows += [
            ["other / plain (ratio of medians)", other_ratio, f">= {GOAL}", other_ratio >= GOAL],
            ["iterations per CPU second other / plain", other_cpu, f">= {GOAL}", other_cpu >= GOAL],
        ]
    print_table("ratio", ["measure", "value", "goal", "met"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
