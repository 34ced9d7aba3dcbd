"""Following submitted jobs to their end (`submit --wait`): each job's state without blocking, the
run's position from its event log, and a resubmitted run followed to its new job."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import submitit

from nnslurm.core.config import TrainJob
from nnslurm.core.errors import CommandError, SchedulerError
from nnslurm.jobs.submission import run_folder
from nnslurm.runs.events import POSITION_EVENTS, Event, read_events
from nnslurm.runs.history import submission_time
from nnslurm.slurm.commands import SchedulerJob, job_info, query_scheduler
from nnslurm.slurm.states import JobState, Phase, is_live, phase, requeue_follows

if TYPE_CHECKING:
    from nnslurm.jobs.submission import Submission

FINISHED, FAILED, CANCELLED, RUNNING = "finished", "failed", "cancelled", "running"


@dataclass(frozen=True)
class JobReport:
    job_id: str
    train_job: TrainJob
    state: str  # finished | failed | cancelled | running
    detail: str  # the scheduler state, or the error's last line
    epoch: int | None
    iteration: int | None
    num_epochs: int | None
    stops: int  # stop events in the run's log
    requeues: int  # requeued events in the run's log
    earlier_jobs: tuple[str, ...] = ()  # the jobs this one was resubmitted after, oldest first


def progress(train_job: TrainJob) -> dict[str, Any]:
    """Position and interruptions from the run's event log."""
    folder = run_folder(train_job)
    records = read_events(folder) if folder else ()
    summary: dict[str, Any] = {
        "epoch": None,
        "iteration": None,
        "num_epochs": None,
        "stops": 0,
        "requeues": 0,
    }
    for record in records:
        kind = record.get("event")
        if kind == Event.STARTED:
            summary["num_epochs"] = record.get("num_epochs")
        if "epoch" in record and kind in POSITION_EVENTS:
            summary["epoch"], summary["iteration"] = record.get("epoch"), record.get("iteration")
        summary["stops"] += kind == Event.STOPPED
        summary["requeues"] += kind == Event.REQUEUED
    summary["last"] = records[-1].get("event") if records else None
    return summary


def job_state(job: submitit.Job[Any], since: float | None = None) -> tuple[str, str]:
    """(finished|failed|cancelled|running, detail) without blocking (`since`: when we submitted
    the job, to tell its accounting record from an older job's with the same id)."""
    if not job.done(force_check=True):
        return RUNNING, live_detail(job, str(job.state), since)
    if job.paths.result_pickle.exists():
        error = job.exception()
        if error is None:
            return FINISHED, str(JobState.COMPLETED)
        lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("---")]
        message = next((line for line in reversed(lines) if "Error" in line or "HINT" in line), lines[-1])
        return FAILED, message.strip()
    state = str(job.state)  # submitit's word: sacct's newest record under the job's id, maybe not ours
    answer = scheduler_answer(job, since)
    if answer is not None and is_live(answer.state):
        # Not over, whatever submitit read: SLURM requeued the job, or that record was an older
        # job's with the same id (ids start again after a controller's state is reset).
        return RUNNING, f"{state}, requeued by SLURM" if requeue_follows(state) else answer.state
    if answer is not None and answer.state != state.split(maxsplit=1)[0]:
        state = answer.state  # this job's own record, not an older job's
    if phase(state) == Phase.CANCELLED or state == "INTERRUPTED":  # INTERRUPTED: submitit's local job
        return CANCELLED, state
    # A job with --requeue that SLURM requeues (its node failed, it was preempted) shows its end in
    # sacct, which submitit takes for the end, until it is PENDING again (measured: a node failure's
    # NODE_FAIL was seen by `--wait` before the requeue).
    if requeue_follows(state) and queued_again(str(job.job_id)):
        return RUNNING, f"{state}, requeued by SLURM"
    return FAILED, f"{state}, ended without a result: see {job.paths.stderr}"


def live_detail(job: submitit.Job[Any], state: str, since: float | None) -> str:
    """submitit's state, with SLURM's reason while the job is pending: why it has not started (a
    begin time, a dependency, or a hold that lasts until someone releases the job)."""
    if state != "PENDING":
        return state
    answer = scheduler_answer(job, since)
    if answer is None or answer.reason in ("", "None"):
        return state
    if "held" in answer.reason.lower():  # JobHeldUser, JobHeldAdmin, "launch failed requeued held"
        return f"{state}: {answer.reason}; it starts only once released: scontrol release {job.job_id}"
    return f"{state}: {answer.reason}"


def scheduler_answer(job: submitit.Job[Any], since: float | None) -> SchedulerJob | None:
    """squeue's word on a SLURM job while it knows the job, else sacct's record of the job we
    submitted at `since` (an older job's record under the same id is not ours); None when neither
    has one, or for a job of the local executor."""
    if isinstance(job, submitit.LocalJob):
        return None
    job_id = str(job.job_id)
    answers = query_scheduler([job_id], None if since is None else {job_id: since})
    return (answers or {}).get(job_id)


def queued_again(job_id: str) -> bool:
    """Whether scontrol still has the job queued or running (it was requeued, not ended)."""
    try:
        return is_live(job_info(job_id, timeout=15).state)
    except (CommandError, SchedulerError):
        return False  # gone from slurmctld (or unreachable): what sacct says stands


def submitted_at(train_job: TrainJob, job_id: str) -> float | None:
    """When the run's job `job_id` was submitted, by its run folder's record, or None."""
    folder = run_folder(train_job)
    return submission_time(read_events(folder), job_id) if folder else None


def resubmitted_as(train_job: TrainJob, job_id: str) -> str | None:
    """The job the run was resubmitted as after `job_id` (its "resubmitted" record), if it was."""
    folder = run_folder(train_job)
    for record in read_events(folder) if folder else ():
        if record.get("event") == Event.RESUBMITTED and record.get("old_job_id") == job_id:
            return str(record["job_id"]) if record.get("job_id") else None
    return None


def follow_resubmission(
    job: submitit.Job[Any], train_job: TrainJob, submission: Submission
) -> submitit.Job[Any] | None:
    """The submitit job of the run's resubmission after `job`, or None. An ended job without a
    result whose run was resubmitted is not over: the new job carries the run on."""
    new_id = resubmitted_as(train_job, str(job.job_id))
    if new_id is None:
        return None
    return submitit.SlurmJob(folder=submission.folder, job_id=new_id)


def wait(
    jobs: Sequence[submitit.Job[Any]],
    submission: Submission,
    poll_s: float = 5.0,
    echo: Callable[[str], None] = print,
    clock: Callable[[], float] = time.time,
) -> list[JobReport]:
    """Block until every job ended; echo a line whenever a job's state or position changes.

    A job whose run was resubmitted (preempted where SLURM does not requeue) is followed by its
    new job (the run's event log names it); the report is the last job's."""
    shown: dict[str, str] = {}
    started = clock()
    current = list(jobs)
    earlier: list[tuple[str, ...]] = [() for _ in jobs]
    reports: dict[int, JobReport] = {}
    while len(reports) < len(current):
        for index, (job, train_job) in enumerate(zip(current, submission.jobs, strict=True)):
            if index in reports:
                continue
            state, detail = job_state(job, submitted_at(train_job, str(job.job_id)))
            following = follow_resubmission(job, train_job, submission) if state != RUNNING else None
            if following is not None:
                echo(f"[{clock() - started:6.0f} s] job {job.job_id}: {state} [{detail}]; run resubmitted")
                echo(f"[{clock() - started:6.0f} s] following its new job {following.job_id}")
                earlier[index] = (*earlier[index], str(job.job_id))
                current[index] = following
                continue
            info = progress(train_job)
            report = JobReport(
                job_id=str(job.job_id),
                train_job=train_job,
                state=state,
                detail=detail,
                epoch=info["epoch"],
                iteration=info["iteration"],
                num_epochs=info["num_epochs"],
                stops=info["stops"],
                requeues=info["requeues"],
                earlier_jobs=earlier[index],
            )
            line = describe_report(report)
            if shown.get(report.job_id) != line:
                shown[report.job_id] = line
                echo(f"[{clock() - started:6.0f} s] {line}")
            if state != RUNNING:
                reports[index] = report
        if len(reports) < len(current):
            time.sleep(poll_s)
    return [reports[index] for index in range(len(current))]


def describe_report(report: JobReport) -> str:
    run = report.train_job.run
    where = ""
    if report.epoch is not None:
        total = f"/{report.num_epochs}" if report.num_epochs else ""
        where = f", epoch {report.epoch}{total} iteration {report.iteration}"
    story = (
        f", {report.stops} stop(s), {report.requeues} requeue(s)" if report.stops or report.requeues else ""
    )
    name = f"job {report.job_id} ({run.configuration} fold {run.fold})"
    after = f", resubmitted after job {', '.join(report.earlier_jobs)}" if report.earlier_jobs else ""
    return f"{name}: {report.state} [{report.detail}]{where}{story}{after}"
