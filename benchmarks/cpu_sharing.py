"""Two jobs sharing a node: `nnslurm train` with threads following the allocation vs taking every core.

Two trainings run at the same time on this machine, unpinned (a node without CPU binding,
TaskPlugin=task/none: each process's affinity is the whole node), each as if SLURM had given it
one CPU (SLURM_JOB_ID, SLURM_CPUS_PER_TASK=1, SLURM_JOB_CPUS_PER_NODE=1; every SLURM command on
the PATH is a fake that only answers scontrol's EndTime, an hour away, so nothing reaches a real
cluster). Arms:

- rule: nnslurm's default (nnslurm/slurm/cpus.py): torch threads = the allocation, 1;
- every-core: NNSLURM_IGNORE_ALLOCATION=1, what nnslurm did before the rule: torch threads = the
  affinity, every core of the node.

Both arms augment in the main process (nnUNet_n_proc_DA=0, kept by the rule as a user's value),
so the torch threads are the only difference. A repetition starts both trainings of one arm
together; the arms alternate (A B, B A, ...). A training's throughput is its iterations per second
over epochs 1..E-1 (benchmarks/throughput.py's measure); an arm's value per repetition is the
median of its two trainings, summarised over repetitions by the median. The torch threads each
process used are read from its own log line ("CPUs: ...").

Goal (issue 12 item 7): rule / every-core it/s >= 1 (measured in the issue: 4x on 2 CPUs).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common import (
    TINY_PLANS,
    Training,
    Workspace,
    check_exit,
    interleaved,
    median,
    new_parser,
    print_header,
    print_table,
    spread,
    start_child,
    workspace,
)
from throughput import run_throughput

GOAL = 1.0
ARMS = {"rule": {}, "every-core": {"NNSLURM_IGNORE_ALLOCATION": "1"}}
TRAININGS = 2  # at the same time, one CPU each by SLURM's count
THREADS = re.compile(r"CPUs: .*: torch threads (\d+)")
SLURM_COMMANDS = ("scontrol", "sacct", "squeue", "sbatch", "scancel", "srun")
FAKE_SLURM = """#!/bin/bash
if [ "$(basename "$0")" = scontrol ] && [ "$1" = show ]; then
  end=$(date -d @$(( $(date +%s) + 3600 )) +%Y-%m-%dT%H:%M:%S)
  echo "JobId=$4 JobName=t JobState=RUNNING Reason=None Restarts=0 Requeue=1 TimeLimit=01:00:00 \
RunTime=00:00:10 StartTime=2026-12-01T00:00:00 EndTime=$end PreemptTime=None ExitCode=0:0"
  exit 0
fi
exit 1
"""


def fake_slurm(space: Workspace) -> Path:
    """A bin folder of SLURM commands that reach no cluster (scontrol shows a job ending in an hour)."""
    bin_dir = space.root / "fake-slurm-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in SLURM_COMMANDS:
        (bin_dir / name).write_text(FAKE_SLURM)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_pair(
    space: Workspace, training: Training, arm: str, repetition: int, bin_dir: Path
) -> list[tuple[float, int]]:
    """Both trainings of one arm at once; (iterations/s, torch threads) of each."""
    started = []
    for index in range(TRAININGS):
        results = space.fresh("cpu_sharing", f"{arm}-{repetition}-{index}")
        record = results / "record.jsonl"
        job = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SLURM_JOB_ID": str(90000 + 10 * repetition + index),
            "SLURM_CPUS_PER_TASK": "1",
            "SLURM_JOB_CPUS_PER_NODE": "1",
            **ARMS[arm],
        }
        started.append((start_child(space, training, "nnslurm", results, record, environ=job), record))
    measured = []
    for process, record in started:
        process.wait()
        log = record.with_suffix(".log")
        check_exit(process, [0], log)
        threads = THREADS.findall(log.read_text())
        measured.append((run_throughput(record)[0], int(threads[0]) if threads else -1))
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--reps", type=int, default=1, help="repetitions per arm (default: %(default)s)")
    parser.add_argument("--plans", default=TINY_PLANS, help="plans identifier (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.plans, args.epochs, args.iterations, args.val_iterations = 1, TINY_PLANS, 2, 2, 1
    for name in [name for name in os.environ if name.startswith(("SLURM_", "SUBMITIT_"))]:
        del os.environ[name]  # run inside a real job or not: only the fake job's variables count
    print_header(f"two trainings sharing {os.cpu_count()} CPUs, 1 CPU each by SLURM: rule vs every core")
    space = workspace(args.workdir)
    bin_dir = fake_slurm(space)
    training = Training(args.plans, args.epochs, args.iterations, args.val_iterations)
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    threads: dict[str, set[int]] = {arm: set() for arm in ARMS}
    for repetition, arm in interleaved(tuple(ARMS), args.reps):
        pair = run_pair(space, training, arm, repetition, bin_dir)
        rates[arm].append(median([rate for rate, _ in pair]))
        threads[arm].update(count for _, count in pair)
        shown = ", ".join(f"{rate:.4f} it/s ({count} threads)" for rate, count in pair)
        print(f"rep {repetition} {arm:10s} {shown}", flush=True)
    print_table(
        f"two trainings at once, {args.plans}, {args.epochs} epochs x {args.iterations} iterations "
        f"(+{args.val_iterations} validation), {args.reps} repetitions",
        ["arm", "torch threads each", "median it/s (each training)", "range it/s"],
        [
            [arm, ",".join(map(str, sorted(threads[arm]))), median(rates[arm]), spread(rates[arm])]
            for arm in ARMS
        ],
    )
    ratio = median(rates["rule"]) / median(rates["every-core"])
    pairs = [a / b for a, b in zip(rates["rule"], rates["every-core"], strict=True)]
    print_table(
        "ratio",
        ["measure", "value", "goal", "met"],
        [
            ["rule / every-core it/s (ratio of medians)", ratio, f">= {GOAL}", ratio >= GOAL],
            ["rule / every-core paired ratios", " ".join(f"{p:.3f}" for p in pairs), "", ""],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
