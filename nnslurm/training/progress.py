"""A live progress bar for training on a terminal, and nothing at all anywhere else.

SLURM's .out files and the local executor's logs get the one line per epoch that the trainer logs;
a carriage-return bar there would fill them with redraws. On a terminal a rich bar shows the
iteration of the epoch and of the whole run, redrawn by rich's own thread, so the training loop pays
one counter update per iteration.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

DISABLE_ENV = "NNSLURM_NO_PROGRESS"  # set to anything: no bar even on a terminal


class TrainingProgress:
    """Context manager; `epoch(...)` at the start of each epoch, `advance()` after each iteration."""

    def __init__(self, epochs: int, iterations_per_epoch: int, stream: TextIO | None = None) -> None:
        self.epochs = epochs
        self.iterations_per_epoch = iterations_per_epoch
        stream = sys.stderr if stream is None else stream
        self._progress: Progress | None = None
        if stream.isatty() and not os.environ.get(DISABLE_ENV):
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=True,  # the per-epoch log lines stay, the bar goes
                refresh_per_second=4,
            )
        self._run_task: TaskID | None = None
        self._epoch_task: TaskID | None = None

    def __enter__(self) -> TrainingProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def epoch(self, epoch: int, start_iteration: int) -> None:
        progress = self._progress
        if progress is None:
            return
        done = epoch * self.iterations_per_epoch + start_iteration
        total = self.epochs * self.iterations_per_epoch
        if self._run_task is None:
            self._run_task = progress.add_task("run", total=total, completed=done)
        description = f"epoch {epoch + 1}/{self.epochs}"
        if self._epoch_task is None:
            self._epoch_task = progress.add_task(description, total=self.iterations_per_epoch)
        progress.update(self._epoch_task, description=description, completed=start_iteration)

    def advance(self) -> None:
        progress = self._progress
        if progress is None or self._run_task is None or self._epoch_task is None:
            return
        progress.advance(self._epoch_task)
        progress.advance(self._run_task)
