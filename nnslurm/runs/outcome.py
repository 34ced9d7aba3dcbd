"""What a stopped process leaves behind: the one input of the after-stop decision.

A training (nnslurm.training.process.TrainingOutcome.stopped) and a workflow stage
(nnslurm.workflow.stage) both stop on a stop request with what they did durable on disk; the
scheduler (nnslurm.scheduler.after_stop) decides what the stop means from this record alone.

It lives in runs/, below both nnslurm.training and nnslurm.scheduler (which must not import each
other): it names the folder whose event log the decision is written to, and the run's position in
it, which is what runs/ is about; nothing here imports more than the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stopped:
    """A process that stopped on a stop request, its durable state on disk."""

    folder: Path  # where its event log is: a training's run folder, a stage's folder
    signal: str | None  # the first stop request: "USR1", "TERM", ...; "ENDTIME": the end-time rule
    reason: str | None = None  # a stop no signal asked for (the end-time rule): why, with its numbers
    # The newest durable state of a training: the epoch to run next and the iterations of it done.
    # A stage's units are each done on disk or not: it records 0, 0 here, as it always has.
    epoch: int = 0
    iteration: int = 0
    phase: str | None = None  # what the process was doing ("training", "final validation", ...)
    checkpoint: Path | None = None  # the checkpoint written at the stop (None: the newest valid one stands)
