"""The cost of the ranks' agreement: one all_reduce(MAX) of four numbers per iteration boundary.

Several ranks (`nnslurm train -num_gpus N`) decide together at every iteration boundary and
validation step (nnslurm.training.agreement.RankGroup.agree): a stop signal on any rank, rank 0's
timed save, rank 0's end-time rule. This benchmark spawns two CPU ranks that join as a training's
ranks do (`joined`: gloo, nnslurm's own groups) and time `agree` alone, in blocks, with no stop;
alongside, the same two ranks time an empty loop, so the table shows the agreement's own cost.

Its share of an iteration is against the tiny CPU iteration of the tests (measured in the same
run: one train_step of the synthetic dataset's nnU-Net network on one thread) and against a
40 ms iteration, the fastest GPU iteration nnU-Net's defaults give (../shared/notes).

Goal (issue 18): the agreement costs well under 1 % of an iteration.
"""

from __future__ import annotations

import multiprocessing
import socket
import statistics
import time
from typing import Any

from common import new_parser, print_header, print_table

GPU_ITERATION_S = 0.040


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="agreements per block")
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    calls, blocks = (200, 3) if args.quick else (args.calls, args.blocks)
    print_header("agreement cost (2 CPU ranks, gloo)")
    port = _free_port()
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    ranks = [context.Process(target=_rank, args=(rank, port, calls, blocks, results)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=600)
        if process.exitcode != 0:
            raise SystemExit(f"a rank failed (exit {process.exitcode})")
    measured = [results.get() for _ in ranks]
    agree_us = statistics.median(value for rank in measured for value in rank["agree_us"])
    empty_us = statistics.median(value for rank in measured for value in rank["empty_us"])
    cost_us = max(agree_us - empty_us, 0.0)
    iteration_s = _tiny_iteration_s()
    cpu_share, gpu_share = cost_us / 1e6 / iteration_s, cost_us / 1e6 / GPU_ITERATION_S
    print_table(
        "goal",
        ["measure", "value", "goal", "met"],
        [
            ["one agreement, µs (median of blocks, both ranks)", cost_us, "", ""],
            ["its share of a tiny CPU iteration", cpu_share, "<= 0.01", cpu_share <= 0.01],
            ["its share of a 40 ms GPU iteration", gpu_share, "<= 0.01", gpu_share <= 0.01],
        ],
    )
    print(f"\ntiny CPU iteration: {iteration_s * 1000:.1f} ms; empty loop per call: {empty_us:.2f} µs")


def _rank(rank: int, port: int, calls: int, blocks: int, results: Any) -> None:
    import torch

    from nnslurm.training.agreement import joined
    from nnslurm.training.ranks import LOCALHOST, Rank

    torch.set_num_threads(1)
    with joined(Rank(rank, 2, rank, LOCALHOST, port), torch.device("cpu"), 60.0) as group:
        for _ in range(50):  # warm-up: connections, first allocations
            group.agree(None, False, False)
        agree_us, empty_us = [], []
        for _ in range(blocks):
            started = time.perf_counter()
            for _ in range(calls):
                group.agree(None, False, False)
            agree_us.append((time.perf_counter() - started) / calls * 1e6)
            started = time.perf_counter()
            for _ in range(calls):
                pass
            empty_us.append((time.perf_counter() - started) / calls * 1e6)
    results.put({"agree_us": agree_us, "empty_us": empty_us})


def _tiny_iteration_s() -> float:
    """One forward+backward of a small 3d conv net on one thread: the order of the tests' iteration."""
    import torch

    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 3, padding=1)
    )
    data = torch.randn(2, 1, 32, 32, 32)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        net(data).sum().backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
