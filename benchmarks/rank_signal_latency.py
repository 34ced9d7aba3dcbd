"""Signal -> checkpoint durable with two ranks against one: `nnslurm train -num_gpus 2` and the same
training in one process, a real SIGUSR1 sent from outside to the process the user started.

Both arms train the same tiny run with nnslurm's paced trainer (every iteration takes at least
--iteration-s, so both arms have the same iteration whatever the two ranks' share of the cores),
one after the other, interleaved. The benchmark waits for nnU-Net's "Epoch 0" log line (start-up
over), a random number of iterations more and a random part of one, and sends SIGUSR1 to the
process it started: with two ranks that is the launcher, which forwards it to both ranks. Measured
per stop:

- outside: from the moment this process sent the signal to the stop checkpoint's "checkpoint" event
  (appended right after the file and its folder were fsynced);
- save: the stop's own checkpoint_seconds (checksum + write), from its "stopped" event.

The bound: one iteration + the save with one rank; with two, one iteration more, because the ranks'
agreement is overlapped with the work (nnslurm.training.agreement: its answer is read at the next
boundary), plus rank 0's gather of the other rank's state.

Goal (issue 18): signal -> durable with 2 ranks <= 2 iterations + save; the ratio 2 ranks / 1 rank
printed beside it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    TINY_PLANS,
    Workspace,
    median,
    new_parser,
    print_header,
    print_table,
    read_events,
    run_folder,
    workspace,
)

from nnslurm.commands.synthetic import MIN_ITERATION_ENV

TRAINER = "nnUNetTrainerPaced"


def one_stop(
    space: Workspace, ranks: int, results: Path, iteration_s: float, wait_s: float
) -> dict[str, Any]:
    """Train with `ranks` ranks, send SIGUSR1 `wait_s` after the "started" event, measure the stop."""
    folder = run_folder(results, TINY_PLANS).parents[1] / f"{TRAINER}__{TINY_PLANS}__3d_fullres" / "fold_0"
    args = [
        sys.executable, "-m", "nnslurm", "train", "501", "3d_fullres", "0", "-p", TINY_PLANS,
        "-tr", f"nnslurm.commands.synthetic:{TRAINER}", "-device", "cpu",
        "--epochs", "2", "--iterations-per-epoch", "400", "--val-iterations-per-epoch", "1",
        "--no-final-validation", *(["-num_gpus", str(ranks)] if ranks > 1 else []),
    ]  # fmt: skip
    env = space.env(results, **{MIN_ITERATION_ENV: str(iteration_s)})
    with open(results / "train.log", "w") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_first_epoch(folder, process)
            time.sleep(wait_s)
            sent = time.time()
            os.kill(process.pid, signal.SIGUSR1)
            code = process.wait(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
    if code != 75:
        raise RuntimeError(f"{ranks} rank(s): exit {code}, expected 75; see {results / 'train.log'}")
    events = read_events(folder)
    stopped = next(e for e in events if e["event"] == "stopped")
    durable = next(e for e in events if e["event"] == "checkpoint" and e["reason"] == "stop")
    return {
        "outside": durable["time"] - sent,
        "save": float(stopped["checkpoint_seconds"]),
        "position": f"{stopped['epoch']}:{stopped['iteration']}",
    }


def _wait_for_first_epoch(folder: Path, process: subprocess.Popen[bytes]) -> None:
    """Until nnU-Net logs "Epoch 0" (on_epoch_start: start-up is over, the first iteration begins)."""
    while not any(
        line.partition(": ")[2].strip() == "Epoch 0"
        for log in folder.glob("training_log_*.txt")
        for line in log.read_text().splitlines()
    ):
        if process.poll() is not None:
            raise RuntimeError(f"training ended (exit {process.returncode}) before its first epoch")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--reps", type=int, default=5, help="stops per arm (default: %(default)s)")
    parser.add_argument(
        "--iteration-s", type=float, default=0.25, help="the iteration floor (default: %(default)s s)"
    )
    args = parser.parse_args(argv)
    print_header("signal -> checkpoint durable, 2 ranks against 1")
    space = workspace(args.workdir)
    chooser = random.Random(18)
    reps = 1 if args.quick else args.reps
    measured: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    rows = []
    for repetition in range(reps):
        wait_s = args.iteration_s * (chooser.randint(4, 20) + chooser.random())
        for ranks in (1, 2) if repetition % 2 == 0 else (2, 1):
            results = space.fresh("rank_signal_latency", f"{ranks}-ranks-{repetition}")
            m = one_stop(space, ranks, results, args.iteration_s, wait_s)
            bound = args.iteration_s * (1 if ranks == 1 else 2) + m["save"]
            measured[ranks].append(m)
            rows.append([ranks, repetition, m["position"], m["save"], m["outside"], bound])
            print(f"{ranks} rank(s) rep {repetition}: {m}", flush=True)
    print_table(
        "stops (seconds)",
        ["ranks", "rep", "stopped at", "save", "outside (sent -> durable)", "bound"],
        rows,
    )  # fmt: skip
    one = median([m["outside"] for m in measured[1]])
    two = median([m["outside"] for m in measured[2]])
    bound_two = 2 * args.iteration_s + median([m["save"] for m in measured[2]])
    print_table(
        "goal",
        ["measure", "value", "goal", "met"],
        [
            ["1 rank: signal -> durable, median s", one, "", ""],
            ["2 ranks: signal -> durable, median s", two, "", ""],
            ["2 ranks / 1 rank (medians)", two / one, "", ""],
            ["2 ranks: median / (2 iterations + save)", two / bound_two, "<= 1", two <= bound_two],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
