"""`-num_gpus N`: the process the user started launches N ranks on its node and waits for them;
with several nodes every srun task is such a launcher, its ranks placed among all by
nnslurm.training.ranks.Placement.

Why `multiprocessing`'s spawn context and not torch's `mp.spawn` or `subprocess`: a spawned child is
a fresh interpreter (no CUDA state and none of the launcher's threads copied by a fork, as nnU-Net's
own launcher does it), and unlike `mp.spawn` the launcher keeps the decisions: `mp.spawn` SIGTERMs
every rank as soon as one exits non-zero, and a rank's exit 75 after a stop is non-zero, so it would
kill rank 0 while it writes the checkpoint. (The one subprocess seam, nnslurm.slurm.commands, is
for programs with output to read; the ranks are this program.)

The launcher, torch-free:
- forwards every stop signal it receives to every rank (with cgroups SLURM may signal only it), the
  signals held blocked while the ranks start (nnslurm.training.ranks);
- leaves with the ranks' status: rank 0's, which decided (0 finished; after a stop what its
  after-stop decision returned: 75, or 144 on submitit's local executor); an error rank 0 reports is
  raised here, so the CLI or submitit reports it once;
- once a rank ended badly (killed, failed) or rank 0 ended, gives the others the stop deadline to
  end and then kills them: no process is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from nnslurm import EXIT_RESUMABLE
from nnslurm.core.config import TrainJob, parse_signal
from nnslurm.core.errors import NnslurmError
from nnslurm.core.logs import configure_logging
from nnslurm.runs.outcome import Stopped
from nnslurm.training.progress import DISABLE_ENV
from nnslurm.training.ranks import (
    Placement,
    Rank,
    die_with_launcher,
    free_port,
    hold_stop_signals,
    release_stop_signals,
)
from nnslurm.training.stoppable import AfterStop, exit_process, run_stoppable

logger = logging.getLogger(__name__)

# Rank 0's after-stop decision, made from the job in rank 0's process (a closure does not pickle).
AfterStopFor = Callable[[TrainJob], AfterStop]


class RankFailed(NnslurmError):
    """A rank ended without a decision of rank 0 (killed, crashed); or rank 0's own error."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


def launch(
    job: TrainJob,
    per_launcher: int,
    after_stop_for: AfterStopFor | None = None,
    placement: Placement | None = None,
) -> int:
    """Train `job` with `per_launcher` ranks on this node, placed among the job's launchers by
    `placement` (default: the only one); returns the exit status (0, or rank 0's after a stop);
    raises rank 0's error, or RankFailed when a rank died. Another launcher than rank 0's leaves
    with 0 once its ranks stopped (exit_process): rank 0 decides, and srun must not take this
    task's end for a failure and kill rank 0's (--kill-on-bad-exit) while it writes or decides."""
    placement = Placement() if placement is None else placement
    first_rank = placement.index * per_launcher  # the global rank of this launcher's first
    names = job.options.stop_signals
    context = multiprocessing.get_context("spawn")
    port = free_port() if placement.master_port is None else placement.master_port
    processes: list[BaseProcess] = []
    forwarder = _Forwarder(names, processes)
    forwarder.install()
    try:
        # Held before the first rank exists (it inherits the mask), and before the queues start
        # multiprocessing's resource tracker, which then never hears a stop signal: SLURM signals
        # every process of the step, and a tracker killed by USR1 was relaunched and printed a
        # KeyError traceback for every queue at the launcher's exit.
        hold_stop_signals(names)
        try:
            errors = context.SimpleQueue()
            decisions = context.SimpleQueue()  # rank 0's after-stop status: its exit status is no error
            for number in range(per_launcher):
                rank = placement.rank(number, per_launcher, port)
                process = context.Process(
                    target=_rank_main,
                    args=(job, rank, after_stop_for, os.getpid(), errors, decisions),
                    name=f"nnslurm-rank-{number}",
                )
                process.start()
                processes.append(process)
        finally:
            release_stop_signals(names)  # held ones reach the forwarder now, and every rank
        logger.info(
            "launched %d ranks (pids %s)%s, meeting at %s:%d",
            per_launcher,
            _pids(processes),
            "" if placement.launchers == 1 else f" as launcher {placement.index} of {placement.launchers}",
            placement.master_addr,
            port,
        )
        statuses = _wait(processes, grace_s=job.options.stop_deadline_s)
        logger.info("ranks ended: %s", _statuses_text(statuses, first_rank))
    finally:
        _kill_left(processes)
        forwarder.restore()
    reported = _reported(errors)
    status = _status(statuses, reported, _decided(decisions), first_rank=first_rank)
    if not placement.leads and status == EXIT_RESUMABLE:
        logger.info("this launcher's ranks stopped; rank 0's launcher decides what follows")
        exit_process(0)
    return status


def _rank_main(
    job: TrainJob,
    rank: Rank,
    after_stop_for: AfterStopFor | None,
    launcher_pid: int,
    errors: Any,
    decisions: Any,
) -> None:
    """A rank's process: the stop path of one training process, with `rank`."""
    die_with_launcher(launcher_pid)
    if not rank.leads:
        os.environ[DISABLE_ENV] = "1"  # one progress bar: rank 0's
    configure_logging(verbose=False)
    if not rank.leads:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the run; the others warn only
    after_stop = None
    if rank.leads and after_stop_for is not None:
        after_stop = _telling(after_stop_for(job), decisions)
    _harmless_after_the_monitor(job.options.stop_signals)
    try:
        run_stoppable(job, after_stop=after_stop, rank=rank)
    except NnslurmError as error:
        errors.put((rank.rank, error.exit_code, str(error)))
        raise SystemExit(error.exit_code) from None
    finally:
        _ignored_on_the_way_out(job.options.stop_signals)


def _ignored_on_the_way_out(names: tuple[str, ...]) -> None:
    """The rank's work is over (durable, finished or failed): stop signals are ignored from now on.
    Python puts SIG_DFL back for every signal it had a handler for while the interpreter shuts down
    (not for ignored ones), so a TERM in those last milliseconds (the one `scontrol requeue` sends
    to every process of the job right after rank 0's walltime decision) killed the rank: measured,
    "rank 1 killed by SIGTERM" after every walltime stop with two ranks on real SLURM."""
    for sig in (parse_signal(name) for name in names):
        signal.signal(sig, signal.SIG_IGN)


def _harmless_after_the_monitor(names: tuple[str, ...]) -> None:
    """What the stop monitor restores when it closes: a handler that does nothing, so a stop signal
    after the stop path (SLURM's TERM at the end of a preemption's grace time, forwarded as well)
    cannot kill a rank that has decided and is on its way out. Not SIG_IGN: that would discard a
    stop signal held pending since the launcher started this rank."""
    for sig in (parse_signal(name) for name in names):
        signal.signal(sig, _after_the_monitor)


def _after_the_monitor(signum: int, frame: FrameType | None) -> None:
    """A stop signal once this rank's stop path has run: nothing left to stop."""


def _telling(after_stop: AfterStop, decisions: Any) -> AfterStop:
    """Rank 0's decision, also told to the launcher (from the main thread or the watchdog)."""

    def decide(stopped: Stopped) -> int:
        status = after_stop(stopped)
        decisions.put(status)
        return status

    return decide


class _Forwarder:
    """The launcher's handlers: every stop signal goes on to every rank (a kill per rank, no I/O)."""

    def __init__(self, names: tuple[str, ...], processes: list[BaseProcess]) -> None:
        self._signals = [parse_signal(name) for name in names]
        self._processes = processes
        self._previous: dict[signal.Signals, Any] = {}
        self.received: list[str] = []

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
        for process in self._processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(process.pid, signum)

    def install(self) -> None:
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """The ranks have ended: a late stop signal (the walltime warning a second later) must not
        kill the launcher on its way out, so the stop signals are ignored from now on."""
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        if self.received:
            logger.info("launcher forwarded %s to the ranks", ", ".join(self.received))


def _wait(processes: list[BaseProcess], grace_s: float) -> list[int]:
    """Every rank's exit code (negative: killed by that signal). Once a rank ended badly, or rank 0
    ended, the others have `grace_s` to end before they are killed."""
    deadline: float | None = None
    while True:
        running = [process for process in processes if process.exitcode is None]
        if not running:
            return [int(process.exitcode or 0) for process in processes]
        if deadline is None and any(_ended_the_run(number, p) for number, p in enumerate(processes)):
            deadline = time.monotonic() + grace_s
            logger.debug("%s; the other ranks have %.0f s to end", _describe(processes), grace_s)
        if deadline is not None and time.monotonic() >= deadline:
            for process in running:
                logger.warning("rank %s (pid %s) did not end in time: killed", process.name, process.pid)
                process.kill()
            deadline = time.monotonic() + grace_s  # then wait for the kills to land
        multiprocessing.connection.wait([process.sentinel for process in running], timeout=0.5)


def _ended_the_run(number: int, process: BaseProcess) -> bool:
    code = process.exitcode
    return code is not None and (number == 0 or code not in (0, EXIT_RESUMABLE))


def _describe(processes: list[BaseProcess]) -> str:
    ended = [f"rank {n} {_exit_text(p.exitcode)}" for n, p in enumerate(processes) if p.exitcode is not None]
    return ", ".join(ended)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited {code}"


def _kill_left(processes: list[BaseProcess]) -> None:
    """Whatever happened in the launcher (an error, Ctrl-C), no rank outlives it."""
    for process in processes:
        if process.exitcode is None:
            process.kill()
            process.join(timeout=10)


def _reported(errors: Any) -> dict[int, tuple[int, str]]:
    found: dict[int, tuple[int, str]] = {}
    while not errors.empty():
        rank, code, message = errors.get()
        found.setdefault(rank, (code, message))
    return found


def _decided(decisions: Any) -> int | None:
    found: int | None = None
    while not decisions.empty():
        found = int(decisions.get())
    return found


def _status(
    statuses: list[int], reported: dict[int, tuple[int, str]], decided: int | None = None, first_rank: int = 0
) -> int:
    """Rank 0 decides: its status (0 finished, 75 or its after-stop decision's status after a
    stop), or its error; a rank killed or failed without one is RankFailed. `statuses` are this
    launcher's ranks', its first (global rank `first_rank`) first; another launcher than rank 0's
    judges by its own first rank the same way (75: it stopped with rank 0)."""
    killed = [f"rank {first_rank + n} {_exit_text(code)}" for n, code in enumerate(statuses) if code < 0]
    if first_rank in reported:
        code, message = reported[first_rank]
        if killed:  # rank 0's error followed from it (its next collective failed)
            message = f"{', '.join(killed)}; then rank {first_rank} failed: {message}"
        raise RankFailed(message, exit_code=code)
    leader = statuses[0]
    if decided is not None and leader < 0:  # killed after its decision (all durable by then): it stands
        logger.info("rank 0 %s after deciding (%d)", _exit_text(leader), decided)
        leader = decided
    stopped = (EXIT_RESUMABLE,) if decided is None else (EXIT_RESUMABLE, decided)
    if leader in (0, *stopped) and all(code in (0, EXIT_RESUMABLE) for code in statuses[1:]):
        return leader
    if leader in stopped:  # rank 0 stopped the run resumable; a peer ended badly with it
        logger.warning(
            "rank %d stopped the run (%d); %s", first_rank, leader, _statuses_text(statuses, first_rank)
        )
        return leader
    raise RankFailed(
        f"the ranks ended without finishing or stopping: {_statuses_text(statuses, first_rank)}.",
        hint="the run resumes from its newest valid checkpoint: run the same command (a rank killed "
        "by the kernel's OOM killer needs more memory, or fewer augmentation workers).",
    )


def _statuses_text(statuses: list[int], first_rank: int = 0) -> str:
    """ "rank 0 exited 75, rank 1 exited 75": global ranks, this launcher's first being `first_rank`."""
    return ", ".join(f"rank {first_rank + n} {_exit_text(code)}" for n, code in enumerate(statuses))


def _pids(processes: list[BaseProcess]) -> str:
    return ",".join(str(process.pid) for process in processes)
