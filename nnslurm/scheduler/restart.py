"""At a restart of a SLURM job: what ended its previous start, when that start left no stop record.

A node that goes down (NODE_FAIL) takes the training process with it, or slurmd kills it without
a signal it could act on: the log then only shows a start without an end. SLURM requeues the job
(nnslurm submits with --requeue) and keeps one accounting record per start (`sacct -D`); the
restarted job reads the record of the start before it and writes it into the run's event log as
"interrupted", so `nnslurm status` and the log say "node failure" by evidence, not by guessing.
Both ways a job trains call `note_restart` at its start: submitit's callable (nnslurm.jobs.training_job) and
`nnslurm train` inside an sbatch template (nnslurm.commands.train).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nnslurm.core.config import TrainJob
from nnslurm.core.errors import NnslurmError
from nnslurm.runs.events import Event, EventLog
from nnslurm.runs.history import Outcome, read_history
from nnslurm.runs.interruptions import Kind
from nnslurm.slurm.commands import accounting_runs
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.states import requeue_cause

logger = logging.getLogger(__name__)


def note_restart(job: TrainJob, env: SlurmEnvironment | None = None) -> None:
    """At the start of a restarted SLURM job, before it trains: `note_previous_end` in the run's
    folder. Evidence for the log only: nothing here may stop the training."""
    env = env or SlurmEnvironment.from_environ()
    if not env.in_slurm or env.restart_count < 1:
        return
    from nnslurm.core.nnunet import output_folder

    try:
        note_previous_end(output_folder(job.run), env)
    except NnslurmError as error:  # no run folder (nnU-Net's setup): the training says why
        logger.debug("no run folder for %s: %s", job.run, error)
    except Exception:
        logger.exception("could not record what ended the previous start")


def note_previous_end(folder: Path, env: SlurmEnvironment | None = None) -> str | None:
    """Record in the run's log what ended this job's previous start, if it left no stop record;
    returns sacct's State of that start (None: nothing to record, or no accounting)."""
    env = env or SlurmEnvironment.from_environ()
    job_id = env.qualified_id
    if job_id is None or env.restart_count < 1:
        return None
    history = read_history(folder)
    mine = [segment for segment in history.segments if segment.job_id == env.event_job_id]
    if not mine or mine[-1].outcome != Outcome.OPEN:
        return None  # the previous start recorded its own end (stop, decision, failure)
    runs = accounting_runs(job_id, since=history.submitted_at(env.event_job_id))  # this job's starts only
    previous = runs[env.restart_count - 1] if len(runs) >= env.restart_count else None
    node_failure = requeue_cause(previous) == Kind.NODE_FAILURE
    reason = (
        "node failure: the node went down (sacct NODE_FAIL); SLURM requeued the job"
        if node_failure
        else f"no stop record; sacct says {previous or 'nothing (no accounting)'} for that start"
    )
    EventLog(folder).append(
        Event.INTERRUPTED,
        **env.record_fields(),
        kind=Kind.NODE_FAILURE if node_failure else Kind.KILL,
        accounting=previous,
        previous_restart_count=env.restart_count - 1,
        reason=reason,
    )
    logger.warning(
        "job %s, start %d: the previous start ended without a stop record: %s",
        job_id,
        env.restart_count,
        reason,
    )
    return previous
