"""The stage loop of a non-training stage (preprocess, find best, predict).

A stage is a loop over units (cases to predict, steps to run) that are each either done on disk
or not: a stop signal is acted on at the next unit boundary, never inside one. The stage then
leaves as a stopped training does, through the one stop path (nnslurm.training.stoppable: the
monitor, the deadline watchdog, the exit) and the one after-stop decision
(nnslurm.jobs.base.exit_after_stop: requeue itself on walltime, let SLURM requeue on preemption,
nothing after scancel), with its own event log in the stage's folder. The next start redoes only
the units not yet done.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from nnslurm.core.config import StageSettings
from nnslurm.jobs.base import StoppableJob, exit_after_stop
from nnslurm.runs.events import Event, EventLog
from nnslurm.runs.outcome import Stopped
from nnslurm.training.signals import StopMonitor, StopRequest
from nnslurm.training.stoppable import AfterStop, leave, stop_monitor

logger = logging.getLogger(__name__)


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


def run_stage(name: str, folder: Path, work: StageWork, settings: StageSettings | None = None) -> None:
    """Run one stage in this process; returns only when its work is complete.

    `folder` holds the stage's event log (nnslurm_events.jsonl). A stop leaves the process with
    status 75 outside SLURM (run the same command again to go on), or after the scheduler
    decision inside a job: 144 on submitit's local executor (start again), else 75.
    """
    global _stage_pid
    _install_fork_hook()
    _stage_pid = os.getpid()
    try:
        _run_stage(name, folder, work, settings or StageSettings())
    finally:
        _stage_pid = None


def _run_stage(name: str, folder: Path, work: StageWork, settings: StageSettings) -> None:
    events = EventLog(folder)
    after_stop = _after_stop(settings)
    with stop_monitor(
        settings.stop_signals, settings.stop_deadline_s, after_stop, _abandon(name, folder)
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
            leave(_stopped(folder, stopped.request), after_stop)
        except Exception as error:
            events.append(Event.FAILED, stage=name, error=f"{type(error).__name__}: {error}")
            raise
        events.append(Event.FINISHED, stage=name)


def stopped_outside_stage(name: str, folder: Path, request: StopRequest) -> Stopped:
    """A stop signal that reached no monitor (submitit's own handler saw it, just before or after
    `run_stage`): what is done is on disk; recorded as a stopped stage."""
    logger.warning("%s: SIG%s outside the stage; what is done stays done", name, request.signal)
    EventLog(folder).append(Event.STOPPED, stage=name, signal=request.signal, abandoned="outside the stage")
    return _stopped(folder, request)


def _abandon(name: str, folder: Path) -> Callable[[StopRequest, str], Stopped]:
    """The watchdog: a unit outlasted the deadline after the stop signal; what is done stays done."""

    def abandon(request: StopRequest, phase: str) -> Stopped:
        logger.warning(
            "%s: SIG%s during %s, no unit boundary within the deadline; leaving it to the next start",
            name,
            request.signal,
            phase,
        )
        EventLog(folder).append(Event.STOPPED, stage=name, signal=request.signal, abandoned=phase)
        return _stopped(folder, request)

    return abandon


def _after_stop(settings: StageSettings) -> AfterStop:
    """The after-stop decision of every stopped process (nnslurm.jobs.base), with the stage's cap."""
    return functools.partial(exit_after_stop, max_requeues=settings.max_requeues)


def _stopped(folder: Path, request: StopRequest) -> Stopped:
    """What a stopped stage leaves: its finished units, on disk in `folder`."""
    return Stopped(folder=folder, signal=request.signal, reason=request.reason)


class StageJob(StoppableJob):
    """A stage as a submitit job (PreprocessJob, FindBestJob, PredictJob): every start does the
    units not yet done; its settings say how it stops."""

    stage: ClassVar[str]  # the stage's name in its event log
    settings: StageSettings

    @property
    def max_requeues(self) -> int:
        return self.settings.max_requeues

    @abc.abstractmethod
    def events_folder(self) -> Path:
        """The folder of the stage's event log."""

    def stopped_outside(self, request: StopRequest) -> Stopped:
        return stopped_outside_stage(self.stage, self.events_folder(), request)
