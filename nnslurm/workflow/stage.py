"""The stop path of a non-training stage (preprocess, find best, predict).

A stage is a loop over units (cases to predict, steps to run) that are each either done on disk
or not: a stop signal is acted on at the next unit boundary, never inside one. The stage then
leaves as a stopped training does, through the same decision (nnslurm.scheduler.after_stop:
requeue itself on walltime, let SLURM requeue on preemption, nothing after scancel), with its own
event log in the stage's folder. The next start redoes only the units not yet done.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from nnslurm import EXIT_RESUMABLE
from nnslurm.core.config import DEFAULT_STOP_SIGNALS, TrainingOptions
from nnslurm.runs.events import Event, EventLog
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.training.signals import StopMonitor, StopRequest
from nnslurm.training.stoppable import exit_process

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSettings:
    """How a stage stops: the same names as training's (nnslurm.core.config.TrainingOptions)."""

    stop_signals: tuple[str, ...] = DEFAULT_STOP_SIGNALS
    # A unit (one case) that outlasts this after a stop signal is abandoned: it is redone next start.
    stop_deadline_s: float = 60.0
    max_requeues: int = 20


class StageStopped(Exception):
    """Raised by a stage's work at a unit boundary once a stop was requested (`check`)."""

    def __init__(self, request: StopRequest, done: int) -> None:
        super().__init__(f"stopped by SIG{request.signal} after {done} unit(s)")
        self.request = request
        self.done = done


class StopCheck:
    """What a stage's work calls between units: raises StageStopped once a stop was requested."""

    def __init__(self, monitor: StopMonitor) -> None:
        self.monitor = monitor
        self.done = 0  # units finished in this start

    def __call__(self, phase: str = "stage") -> None:
        self.monitor.phase = phase
        request = self.monitor.request
        if request is not None:
            self.monitor.acknowledge()
            raise StageStopped(request, self.done)

    def unit_done(self) -> None:
        self.done += 1


# The work of a stage: does every unit not yet done, calling `check` between units.
StageWork = Callable[[StopCheck], None]


# The pid of the process running a stage, for forked children (nnslurm.workflow.stage._forked_child).
_stage_pid: int | None = None


def _forked_child() -> None:
    """A child forked while a stage runs gets SIGTERM's default back.

    multiprocessing.Pool.terminate() ends its workers with SIGTERM. nnU-Net's fork-context pools
    (create_lists_from_splitted_dataset_folder: every listing of a raw dataset or an input
    folder) inherit the monitor's handler, which ignores signals outside its own process, so the
    workers never died and `with Pool(...)` hung in terminate() for ever (seen: preprocess stuck
    in verify_dataset_integrity). USR1/USR2 stay ignored there: the walltime warning SLURM sends
    to every process of a step must not kill a worker whose task the pool would then wait for.
    """
    if _stage_pid is not None:
        with contextlib.suppress(ValueError):  # not the main thread: never fail a fork over it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@functools.cache
def _install_fork_hook() -> None:
    os.register_at_fork(after_in_child=_forked_child)  # once per process; it cannot be removed


def run_stage(name: str, folder: Path, work: StageWork, settings: StageSettings = StageSettings()) -> None:
    """Run one stage in this process; returns only when its work is complete.

    `folder` holds the stage's event log (nnslurm_events.jsonl). A stop leaves the process with
    status 75 outside SLURM (run the same command again to go on), or after the scheduler
    decision inside a job: 144 on submitit's local executor (start again), else 75.
    """
    global _stage_pid
    _install_fork_hook()
    _stage_pid = os.getpid()
    try:
        _run_stage(name, folder, work, settings)
    finally:
        _stage_pid = None


def _run_stage(name: str, folder: Path, work: StageWork, settings: StageSettings) -> None:
    events = EventLog(folder)
    with StopMonitor(
        settings.stop_signals, settings.stop_deadline_s, _abandon(name, folder, settings)
    ) as monitor:
        events.append(Event.STARTED, stage=name)
        check = StopCheck(monitor)
        try:
            work(check)
        except StageStopped as stopped:
            events.append(Event.STOPPED, stage=name, signal=stopped.request.signal, done=stopped.done)
            logger.warning(
                "%s: SIG%s, stopped after %d unit(s) of this start",
                name,
                stopped.request.signal,
                stopped.done,
            )
            _leave(folder, stopped.request, settings)
        except Exception as error:
            events.append(Event.FAILED, stage=name, error=f"{type(error).__name__}: {error}")
            raise
        events.append(Event.FINISHED, stage=name)
        monitor.ignore_after_restore()


def stop_outside_stage(name: str, folder: Path, signal_name: str, settings: StageSettings) -> NoReturn:
    """A stop signal that reached no monitor (submitit's own handler saw it, just before or after
    `run_stage`): what is done is on disk; decide as a stopped stage does and leave."""
    signal_name = signal_name.removeprefix("SIG")
    logger.warning("%s: SIG%s outside the stage; what is done stays done", name, signal_name)
    request = StopRequest(signal_name, time.time())
    EventLog(folder).append(Event.STOPPED, stage=name, signal=signal_name, abandoned="outside the stage")
    _leave(folder, request, settings)


def _abandon(name: str, folder: Path, settings: StageSettings) -> Callable[[StopRequest, str], None]:
    """The watchdog: a unit outlasted the deadline after the stop signal; what is done stays done."""

    def on_deadline(request: StopRequest, phase: str) -> None:
        logger.warning(
            "%s: SIG%s during %s, no unit boundary within the deadline; leaving it to the next start",
            name,
            request.signal,
            phase,
        )
        EventLog(folder).append(Event.STOPPED, stage=name, signal=request.signal, abandoned=phase)
        try:
            _leave(folder, request, settings)
        except BaseException:  # nobody above the watchdog thread reports it
            logger.exception("after the stop")
            exit_process(EXIT_RESUMABLE)

    return on_deadline


def _leave(folder: Path, request: StopRequest, settings: StageSettings) -> NoReturn:
    """Decide what the stop means (inside SLURM) and exit: the same decision a training makes."""
    env = SlurmEnvironment.from_environ()
    if not env.in_slurm and not env.local:
        exit_process(EXIT_RESUMABLE)  # `nnslurm predict` by hand: run it again to go on
    from nnslurm.jobs.training_job import LOCAL_REQUEUE_EXIT, requeue_cap
    from nnslurm.scheduler.after_stop import after_stop
    from nnslurm.training.process import TrainingOutcome

    outcome = TrainingOutcome(
        status="stopped",
        output_folder=folder,
        epoch=0,
        iteration=0,
        stop_signal=request.signal,
        stop_reason=request.reason,
    )
    options = TrainingOptions(max_requeues=requeue_cap(settings.max_requeues, env.local))
    requeued: list[str] = []
    after_stop(outcome, options, requeue_job=requeued.append if env.local else None)
    exit_process(LOCAL_REQUEUE_EXIT if requeued else EXIT_RESUMABLE)
