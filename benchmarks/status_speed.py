"""`nnslurm status --json` over many run folders: how long a user (or each `--watch` refresh) waits.

The results folder holds RUNS synthetic run folders ($nnUNet_results/DatasetXXX_Name/
Trainer__Plans__Config/fold_N, 10 datasets x 10 models x 5 folds for 500) whose event logs are
written as a SLURM job writes them: "submitted", "started", one "checkpoint" per epoch
(save_every_epochs=1, nnslurm's default), and for some runs one to three interruptions (signal,
checkpoint, stopped, decision, requeued, then resumed and started again by the next start); some
runs finished, some failed, some still run. Epochs per run are drawn up to --epochs (seeded: every
run of the benchmark builds the same folder), so a log has ~EPOCHS/2 records on average.

Each command runs in a fresh `python -m nnslurm` process, as a user runs it, timed from start to
exit; arms alternate and each is summarised by its median:

- empty: an empty results folder (the floor: interpreter start-up and nnslurm's imports);
- runs, --no-scheduler: nnslurm's own work, every log read and judged;
- runs, no SLURM on PATH: the default command where squeue/sacct are not on PATH (a laptop, a login
  node without SLURM): the event logs decide, as with --no-scheduler but through the query path.
  On a cluster one squeue and one sacct for all runs come on top (the cluster's time, not ours).

Goal (issue 16): status --json over 500 runs under 0.5 s.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, median, new_parser, print_header, print_table, spread

GOAL_S = 0.5
TRAINERS = ("nnUNetTrainer", "nnUNetTrainer_250epochs")
PLANS = ("nnUNetPlans", "nnUNetResEncUNetMPlans")
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres", "3d_fullres_bs4")
HOST = "node17"


def models() -> list[str]:
    return [f"{t}__{p}__{c}" for t in TRAINERS for p in PLANS for c in CONFIGURATIONS]


def run_folders(results: Path, count: int) -> list[Path]:
    """`count` run folders, filled dataset by dataset: 10 models x 5 folds each."""
    folders = []
    for index in range(count):
        dataset, rest = divmod(index, 50)
        model, fold = divmod(rest, 5)
        name = f"Dataset{100 + dataset:03d}_Bench{dataset}"
        folders.append(results / name / models()[model] / f"fold_{fold}")
    return folders


def event_log(rng: random.Random, job: int, max_epochs: int, now: float) -> list[dict[str, Any]]:
    """The records a real run of `epochs` epochs writes, interrupted 0-3 times, in time order."""
    epochs = rng.randint(0, max_epochs)
    interruptions = sorted(
        rng.sample(range(1, epochs), k=min(rng.choice((0, 0, 1, 2, 3)), max(epochs - 1, 0)))
    )
    ending = rng.choice(("finished", "running", "failed", "stopped")) if epochs else "running"
    epoch_s = 90.0
    t = now - 3600 - epochs * epoch_s * 1.2
    job_id = str(job)
    pid = 4000 + job % 1000
    records: list[dict[str, Any]] = []

    def add(event: str, **fields: Any) -> None:
        records.append(
            {"event": event, "time": round(t, 3), "host": HOST, "pid": pid, "job_id": job_id, **fields}
        )

    add(
        "submitted",
        executor="slurm",
        array_index=None,
        log_folder=f"/scratch/submitit/{job}",
        time_limit_s=86400,
        signal="USR1@120",
        max_requeues=20,
    )
    t += 30
    add(
        "started",
        num_epochs=1000,
        iterations_per_epoch=250,
        trainer="nnUNetTrainer",
        deterministic=False,
        epoch=0,
        iteration=0,
    )
    for epoch in range(epochs):
        t += epoch_s
        if epoch in interruptions:
            at = {"epoch": epoch, "iteration": rng.randint(0, 249)}
            add("signal", signal="USR1", received_at=t, **at)
            add("checkpoint", path="checkpoint_latest.pth", seconds=0.31, reason="stop", **at)
            add("stopped", signal="USR1", signal_to_durable_s=0.4, **at)
            add("decision", kind="walltime", reason="the job's end time is within the warning", **at)
            add("requeued", reason="walltime", by="nnslurm", requeues_left=19)
            t += rng.uniform(60, 900)  # queued again
            pid += 1
            add("resumed", checkpoint="checkpoint_latest.pth", finished=False, restart_count=1, **at)
            add(
                "started",
                num_epochs=1000,
                iterations_per_epoch=250,
                trainer="nnUNetTrainer",
                deterministic=False,
                restart_count=1,
                **at,
            )
        add(
            "checkpoint",
            path="checkpoint_latest.pth",
            epoch=epoch + 1,
            iteration=0,
            seconds=0.29,
            reason="epoch",
        )
    if ending == "finished":
        add("finished", epoch=1000, iteration=0)
    elif ending == "failed":
        add("failed", error="RuntimeError: CUDA error: an illegal memory access was encountered")
    elif ending == "stopped":
        at = {"epoch": epochs, "iteration": 17}
        add("signal", signal="USR1", received_at=t, **at)
        add("checkpoint", path="checkpoint_latest.pth", seconds=0.3, reason="stop", **at)
        add("stopped", signal="USR1", signal_to_durable_s=0.4, **at)
    return records


def build(results: Path, count: int, max_epochs: int) -> int:
    """The results folder with `count` runs (built once per size); returns the number of records."""
    done = results / ".built.json"
    wanted = {"runs": count, "epochs": max_epochs, "version": 1}
    if done.is_file() and json.loads(done.read_text()).get("wanted") == wanted:
        return int(json.loads(done.read_text())["records"])
    rng = random.Random(16)
    now = time.time()
    total = 0
    for index, folder in enumerate(run_folders(results, count)):
        folder.mkdir(parents=True, exist_ok=True)
        records = event_log(rng, 880000 + index, max_epochs, now)
        (folder / "nnslurm_events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        total += len(records)
    done.write_text(json.dumps({"wanted": wanted, "records": total}))
    return total


def status_seconds(results: Path, extra: list[str], path: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of one `status --json` process."""
    env = dict(os.environ, nnUNet_results=str(results), PATH=path, PYTHONPATH=str(REPO))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "nnslurm", "status", "--json", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if result.returncode != 0:
        raise RuntimeError(f"nnslurm status failed ({result.returncode}):\n{result.stderr[-3000:]}")
    json.loads(result.stdout)  # a complete answer
    return seconds, cpu


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--runs", type=int, default=500, help="run folders (default %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=100, help="most epochs logged per run (default %(default)s)"
    )
    parser.add_argument("--repetitions", type=int, default=7, help="timed runs per arm (default %(default)s)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.epochs, args.repetitions = 20, 10, 1
    print_header(f"nnslurm status --json over {args.runs} runs")
    root = args.workdir.expanduser().resolve() / "status-speed"
    empty = root / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    results = root / f"results-{args.runs}x{args.epochs}"
    records = build(results, args.runs, args.epochs)
    print(f"{args.runs} run folders, {records} event records in {results}", flush=True)
    no_slurm = os.path.dirname(sys.executable)  # python only: no squeue, no sacct
    arms = {
        "empty results folder": (empty, ["--no-scheduler"], no_slurm),
        f"{args.runs} runs, --no-scheduler": (results, ["--no-scheduler"], no_slurm),
        f"{args.runs} runs, no SLURM on PATH": (results, [], no_slurm),
    }
    status_seconds(results, ["--no-scheduler"], no_slurm)  # warm the page cache and .pyc files
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    for repetition in range(args.repetitions):
        order = list(arms) if repetition % 2 == 0 else list(reversed(arms))
        for arm in order:
            wall, used = status_seconds(*arms[arm])
            times[arm].append(wall)
            cpu[arm].append(used)
    print_table(
        "status --json, fresh process each (CPU s: user + system, less sensitive to a busy machine)",
        ["arm", "median s", "range s", "median CPU s", "runs"],
        [[arm, median(times[arm]), spread(times[arm]), median(cpu[arm]), len(times[arm])] for arm in arms],
    )
    measured = median(times[f"{args.runs} runs, --no-scheduler"])
    print_table(
        "goal",
        ["measure", "value", "goal", "met"],
        [[f"status --json over {args.runs} runs (s)", measured, f"<= {GOAL_S}", measured <= GOAL_S]],
    )


if __name__ == "__main__":
    main()
