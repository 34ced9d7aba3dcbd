"""The one subprocess seam to SLURM, and the parsers of what scontrol, squeue and sacct print.

Every call of sbatch/scontrol/sacct/squeue/scancel that nnslurm makes goes through `run_command`
(argument lists, never a shell, always a timeout; a failure raises CommandError carrying the
command, exit status, stdout and stderr). Tests replace the runner with `use_runner`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from nnslurm.core.errors import CommandError, SchedulerError
from nnslurm.core.timeparse import parse_scontrol_time
from nnslurm.slurm.job_ids import is_slurm_job

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
# `nnslurm status` asks squeue and sacct once for all runs; a login node must not hang on them.
QUERY_TIMEOUT_S = 15.0


# --- the subprocess seam ------------------------------------------------------------------------


class Runner(Protocol):
    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]: ...


def subprocess_runner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The real runner: no shell, text output captured, never raises for a non-zero status."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


_runner: list[Runner] = [subprocess_runner]


@contextlib.contextmanager
def use_runner(runner: Runner) -> Iterator[None]:
    """Replace the runner of every SLURM command (tests: a fake cluster at the subprocess boundary)."""
    _runner.append(runner)
    try:
        yield
    finally:
        _runner.remove(runner)


def run_command(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one SLURM command; raises CommandError (command, status, output) unless it exits 0."""
    args = [str(arg) for arg in argv]
    logger.debug("running %s", " ".join(args))
    try:
        result = _runner[-1](args, timeout)
    except FileNotFoundError as error:
        raise CommandError(
            args,
            127,
            "",
            f"{args[0]}: command not found ({error.strerror or error})",
            hint=f"is SLURM installed here and `{args[0]}` on the PATH? Without SLURM use "
            "`--executor local`, or start the test cluster: scripts/slurm-dev-cluster up",
        ) from error
    except subprocess.TimeoutExpired as error:
        raise CommandError(
            args,
            None,
            _text(error.stdout),
            _text(error.stderr),
            hint=f"slurmctld did not answer within {timeout:g} s; check `scontrol ping`.",
        ) from error
    if result.returncode != 0:
        raise CommandError(args, result.returncode, result.stdout or "", result.stderr or "")
    return result


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# --- scontrol -----------------------------------------------------------------------------------

# A key starts a token: letters first, then letters, digits and : / _ (AllocNode:Sid, CPUs/Task).
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


@dataclass(frozen=True)
class JobInfo:
    """`scontrol show job -o ID`: the fields nnslurm decides on, plus all of them raw."""

    job_id: str  # JobId
    state: str  # JobState: PENDING, RUNNING, COMPLETING, CANCELLED, ...
    reason: str  # Reason: None, TimeLimit, BeginTime, ...
    restarts: int  # Restarts: how often the job has been requeued
    requeue: bool  # Requeue: 1 when the job may be requeued (--requeue / JobRequeue=1)
    time_limit_s: int | None  # TimeLimit (None: UNLIMITED)
    run_time_s: int | None  # RunTime
    start_time: datetime | None  # StartTime
    end_time: datetime | None  # EndTime: the limit, or PreemptTime + GraceTime once preempted
    preempt_time: datetime | None  # PreemptTime: set when the job was chosen for preemption
    exit_code: str  # ExitCode "status:signal"
    fields: Mapping[str, str] = field(repr=False, default_factory=dict)  # every key=value

    def time_left(self, now: datetime | None = None) -> float | None:
        """Seconds until SLURM ends the job (EndTime), else TimeLimit - RunTime."""
        if self.end_time is not None:
            return (self.end_time - (now or datetime.now())).total_seconds()
        if self.time_limit_s is not None and self.run_time_s is not None:
            return float(self.time_limit_s - self.run_time_s)
        return None


def parse_job_info(text: str) -> JobInfo:
    """Parse one record of `scontrol show job -o`; SchedulerError (showing the text) if it is not one."""
    fields = _key_values(text)
    if "JobId" not in fields or "JobState" not in fields:
        raise SchedulerError(
            "cannot read the output of `scontrol show job -o`: no JobId=/JobState= in it:\n"
            + (text.strip()[:2000] or "(empty output)"),
            hint="nnslurm expects key=value pairs as Slurm 20-24 print them.",
        )
    try:
        return JobInfo(
            job_id=fields["JobId"],
            state=fields["JobState"],
            reason=fields.get("Reason", "None"),
            restarts=int(fields.get("Restarts", "0")),
            requeue=fields.get("Requeue", "1") == "1",
            time_limit_s=parse_scontrol_time(fields.get("TimeLimit", "")),
            run_time_s=parse_scontrol_time(fields.get("RunTime", "")),
            start_time=_timestamp(fields.get("StartTime")),
            end_time=_timestamp(fields.get("EndTime")),
            preempt_time=_timestamp(fields.get("PreemptTime")),
            exit_code=fields.get("ExitCode", ""),
            fields=fields,
        )
    except ValueError as error:
        raise SchedulerError(
            f"cannot read the output of `scontrol show job -o`: {error}:\n{text.strip()[:2000]}"
        ) from error


def _key_values(text: str) -> dict[str, str]:
    """The key=value pairs of the first non-empty line of `scontrol show ... -o` (values may hold spaces)."""
    line = next((candidate for candidate in text.splitlines() if candidate.strip()), "")
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(line))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(line)
        fields.setdefault(match.group(1), line[match.end() : end].strip())
    return fields


def _timestamp(text: str | None) -> datetime | None:
    if not text or text in ("None", "Unknown", "N/A", "(null)"):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def job_info(job_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> JobInfo:
    """The scheduler's view of one job (an array task as "ARRAY_TASK")."""
    result = run_command(["scontrol", "show", "job", "-o", job_id], timeout)
    return parse_job_info(result.stdout)


def parse_preempt_mode(text: str) -> str | None:
    """PreemptMode of `scontrol show partition -o NAME` ("CANCEL", "REQUEUE", "SUSPEND,GANG")."""
    mode = _key_values(text).get("PreemptMode")
    return mode.upper() if mode else None


def partition_preempt_mode(partition: str, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """How SLURM preempts jobs of `partition` (the partition's own PreemptMode, as scontrol applies it);
    None when scontrol cannot say."""
    try:
        result = run_command(["scontrol", "show", "partition", "-o", partition], timeout)
    except CommandError as error:
        logger.warning("cannot read the PreemptMode of partition %s: %s", partition, error)
        return None
    return parse_preempt_mode(result.stdout)


def requeue(job_id: str, timeout: float = 60.0) -> None:
    """`scontrol requeue ID`: SLURM kills the job (TERM, KILL after KillWait) and queues it again."""
    try:
        run_command(["scontrol", "requeue", job_id], timeout)
    except CommandError as error:
        error.hint = (
            "the job could not be requeued; the checkpoint is complete, so resubmitting the same "
            "command resumes it. If the message says the job is not requeueable, the cluster sets "
            "JobRequeue=0 and the job lacks --requeue."
        )
        raise


def update_dependency(job_id: str, dependency: str) -> None:
    """`scontrol update JobId=ID Dependency=EXPR`: a pending job (or array task) waits for other jobs."""
    run_command(["scontrol", "update", f"JobId={job_id}", f"Dependency={dependency}"])


def update_time_limit(job_id: str, minutes: int) -> None:
    """`scontrol update JobId=ID TimeLimit=MINUTES`: a job (pending, or being requeued) asks for this
    limit again. Non-admin users may only lower a limit: raising one fails with CommandError."""
    run_command(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"])


def cancel(job_id: str) -> None:
    """`scancel ID` (an array id: every task). SLURM sends TERM; the job checkpoints and stays cancelled."""
    run_command(["scancel", job_id])


def hostnames(nodelist: str, timeout: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """`scontrol show hostnames LIST`: "gpu[01-02],cpu7" -> ["gpu01", "gpu02", "cpu7"], in SLURM's
    order (the first is where a job's rank 0 runs)."""
    return run_command(["scontrol", "show", "hostnames", nodelist], timeout).stdout.split()


def available() -> bool:
    """Whether a SLURM controller answers (sinfo)."""
    try:
        run_command(["sinfo", "-h", "-o", "%P"], timeout=15)
    except CommandError:
        return False
    return True


# --- squeue and sacct ---------------------------------------------------------------------------

# sacct's fields: the State's first word, and Submit to tell our job from an older one with its id.
SACCT_FIELDS = "JobID,State,Submit"
# How much earlier than our own record of a submission SLURM may have stamped it (sacct's Submit):
# the record is written after sbatch returned, and the controller's clock may differ a little.
SUBMIT_SLACK_S = 60.0


@dataclass(frozen=True)
class SchedulerJob:
    job_id: str
    state: str  # squeue %T or sacct State (first word): PENDING, RUNNING, CANCELLED, ...
    reason: str  # squeue %r ("" from sacct)
    source: str  # squeue | sacct
    time_limit_s: int | None = None  # squeue %l: the limit now (granted, with --time-min); None: unknown


@dataclass(frozen=True)
class AccountingRecord:
    """One line of `sacct -X -n -P -o JobID,State,Submit`: one job (or one start of it, with -D)."""

    job_id: str  # JobID
    state: str  # State's first word ("CANCELLED by 0" -> CANCELLED)
    submit: float | None  # Submit (seconds since the epoch; None: not printed or unreadable)


def parse_sacct_records(text: str) -> list[AccountingRecord]:
    """Every record of `sacct -X -n -P -o JobID,State[,Submit]`, in sacct's order."""
    records = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[1].strip():
            submit = _timestamp(parts[2].strip()) if len(parts) > 2 else None
            records.append(
                AccountingRecord(parts[0], parts[1].split()[0], submit.timestamp() if submit else None)
            )
    return records


def ours(records: Iterable[AccountingRecord], since: float | None) -> list[AccountingRecord]:
    """The records of the job we submitted at `since`, oldest first: after a controller's state is
    reset, job ids start again and sacct also returns older jobs' records under the same id.
    Records SLURM stamped before our submission (less SUBMIT_SLACK_S) are not ours; a record
    without a Submit is kept (nothing tells it apart). A requeue stamps a new Submit, so sorting by
    it keeps the starts of a job in order."""
    kept = [
        record
        for record in records
        if since is None or record.submit is None or record.submit >= since - SUBMIT_SLACK_S
    ]
    if all(record.submit is not None for record in kept):
        kept.sort(key=lambda record: record.submit or 0.0)
    return kept


def parse_sacct(
    text: str, job_ids: Iterable[str] | None = None, since: Mapping[str, float] | None = None
) -> dict[str, str]:
    """`sacct -X -n -P -o JobID,State,Submit`: each job's State, from its newest record that is
    ours (`since`: when we submitted each job; see `ours`)."""
    wanted = None if job_ids is None else set(job_ids)
    by_job: dict[str, list[AccountingRecord]] = {}
    for record in parse_sacct_records(text):
        if wanted is None or record.job_id in wanted:
            by_job.setdefault(record.job_id, []).append(record)
    states: dict[str, str] = {}
    for job, records in by_job.items():
        mine = ours(records, (since or {}).get(job))
        if mine:
            states[job] = mine[-1].state
        else:
            logger.info("sacct: every record of job %s is older than its submission; ignored", job)
    return states


def accounting_states(
    job_ids: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S, since: Mapping[str, float] | None = None
) -> dict[str, str]:
    """The State of each job in sacct (its newest record since we submitted it); {} without accounting."""
    try:
        result = run_command(
            ["sacct", "-X", "-n", "-P", "-o", SACCT_FIELDS, "-j", ",".join(job_ids)], timeout
        )
    except CommandError as error:
        logger.debug("sacct failed: %s", error)
        return {}
    return parse_sacct(result.stdout, job_ids, since)


def accounting_state(
    job_id: str, timeout: float = DEFAULT_TIMEOUT_S, since: float | None = None
) -> str | None:
    """The job's State in sacct (its newest record since `since`), or None without accounting."""
    return accounting_states([job_id], timeout, None if since is None else {job_id: since}).get(job_id)


def parse_sacct_runs(text: str, job_id: str, since: float | None = None) -> list[str]:
    """`sacct -D -X -n -P -o JobID,State,Submit -j ID`: the State of each start of the job we
    submitted at `since` (requeues kept: -D), oldest first ("NODE_FAIL", "PREEMPTED", "REQUEUED",
    "RUNNING", ...)."""
    records = [record for record in parse_sacct_records(text) if record.job_id == job_id]
    return [record.state for record in ours(records, since)]


def accounting_runs(job_id: str, timeout: float = DEFAULT_TIMEOUT_S, since: float | None = None) -> list[str]:
    """The State of every start of the job in sacct, oldest first (`since`: see `ours`); [] without
    accounting."""
    try:
        result = run_command(["sacct", "-D", "-X", "-n", "-P", "-o", SACCT_FIELDS, "-j", job_id], timeout)
    except CommandError as error:
        logger.debug("sacct failed: %s", error)
        return []
    return parse_sacct_runs(result.stdout, job_id, since)


def query_scheduler(
    job_ids: Iterable[str], since: Mapping[str, float] | None = None
) -> dict[str, SchedulerJob] | None:
    """squeue for jobs SLURM still knows, sacct for the ended ones; None without SLURM.

    squeue's answer wins: it knows only the job that has the id now. sacct's records are matched
    to the jobs we submitted by `since` (when we submitted each job, from the run's "submitted"
    record): an older job's record under the same id is ignored, never taken for ours."""
    wanted = sorted({job for job in job_ids if is_slurm_job(job)})
    if not wanted:
        return {}
    found: dict[str, SchedulerJob] = {}
    try:
        result = run_command(
            ["squeue", "-h", "-r", "-o", "%i|%T|%r|%l", "-j", ",".join(wanted)], QUERY_TIMEOUT_S
        )
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0] in wanted:
                reason = parts[2] if len(parts) > 2 else ""
                limit = parse_scontrol_time(parts[3]) if len(parts) > 3 else None  # squeue prints as scontrol
                found[parts[0]] = SchedulerJob(parts[0], parts[1].strip(), reason.strip(), "squeue", limit)
    except CommandError as error:
        if error.returncode == 127 or error.returncode is None:
            logger.debug("no scheduler: %s", error)
            return None
        if "invalid job id" not in (error.stderr + error.stdout).lower():
            logger.warning("squeue failed; states come from the event logs only: %s", error)
            return None
    missing = [job for job in wanted if job not in found]
    if missing:
        states = accounting_states(missing, QUERY_TIMEOUT_S, since)
        found.update({job: SchedulerJob(job, state, "", "sacct") for job, state in states.items()})
    return found
