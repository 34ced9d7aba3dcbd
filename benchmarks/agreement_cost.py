"""The cost of the ranks' agreement: one all_reduce(MAX) of four numbers per iteration boundary.

Several ranks (`nnslurm train -num_gpus N`) decide together at every iteration boundary and
validation step (nnslurm.training.agreement.RankGroup.agree): a stop signal on any rank, rank 0's
timed save, rank 0's end-time rule. This benchmark spawns two CPU ranks that join as a training's
ranks do (`joined`: gloo, nnslurm's own groups) and loop over "iterations" of 40 ms (about the
fastest GPU iteration of nnU-Net's default configurations; the host waits for the device), timing only
what the loop spends in the agreement, side by side in one run:

- blocking: the all_reduce waited for at the boundary (nnslurm's first version);
- overlapped: `RankGroup.agree` as the loop calls it: started at one boundary, its answer read at
  the next (the loop acts one boundary later; the end-time rule looks one phase further ahead).

Goal (issue 18): the agreement costs under 1 % of an iteration.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

from common import new_parser, print_header, print_table

from nnslurm.training.ranks import free_port

ITERATION_S = 0.040


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--calls", type=int, default=200, help="iterations per arm and block")
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    calls, blocks = (20, 1) if args.quick else (args.calls, args.blocks)
    print_header("agreement cost (2 CPU ranks, gloo, 40 ms iterations)")
    port = free_port()
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    ranks = [context.Process(target=_rank, args=(rank, port, calls, blocks, results)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=900)
        if process.exitcode != 0:
            raise SystemExit(f"a rank failed (exit {process.exitcode})")
    measured = [results.get() for _ in ranks]
    blocking = statistics.median(value for rank in measured for value in rank["blocking"])
    overlapped = statistics.median(value for rank in measured for value in rank["overlapped"])
    print_table(
        "goal",
        ["measure", "value", "goal", "met"],
        [
            ["blocking all_reduce per boundary, µs", blocking, "", ""],
            ["overlapped agreement per boundary, µs", overlapped, "", ""],
            ["overlapped / blocking", overlapped / blocking, "", ""],
            ["blocking: share of a 40 ms iteration", blocking / 1e6 / ITERATION_S, "", ""],
            [
                "overlapped: share of a 40 ms iteration",
                overlapped / 1e6 / ITERATION_S,
                "<= 0.01",
                overlapped / 1e6 / ITERATION_S <= 0.01,
            ],
        ],
    )


def _rank(rank: int, port: int, calls: int, blocks: int, results: Any) -> None:
    import torch
    import torch.distributed as dist

    from nnslurm.training.agreement import joined
    from nnslurm.training.ranks import LOCALHOST, Rank

    torch.set_num_threads(1)
    with joined(Rank(rank, 2, rank, LOCALHOST, port), torch.device("cpu"), 60.0) as group:
        plain = dist.new_group(backend="gloo")

        def blocking() -> None:
            dist.all_reduce(torch.zeros(4, dtype=torch.float64), op=dist.ReduceOp.MAX, group=plain)

        def overlapped() -> None:
            group.agree(None, False, False)

        timings: dict[str, list[float]] = {"blocking": [], "overlapped": []}
        for _ in range(blocks):
            for name, boundary in (("blocking", blocking), ("overlapped", overlapped)):
                boundary()  # warm-up, and the overlapped arm's first answer
                spent = 0.0
                for _ in range(calls):
                    time.sleep(ITERATION_S)  # the iteration: the host waits for the device
                    started = time.perf_counter()
                    boundary()
                    spent += time.perf_counter() - started
                timings[name].append(spent / calls * 1e6)
        group.settle()
    results.put(timings)


if __name__ == "__main__":
    main()
