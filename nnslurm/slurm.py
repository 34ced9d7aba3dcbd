"""SLURM from inside and outside a job: the one subprocess seam, the job's view, and what a stop means.

Every call of sbatch/scontrol/sacct/squeue that nnslurm makes goes through `run_command`
(argument lists, never a shell, always a timeout; a failure raises CommandError carrying the
command, exit status, stdout and stderr). Tests replace the runner with `use_runner`.

What a stop signal means is decided by evidence, `scontrol show job -o <id>` read after the
checkpoint is written, never by guessing. Measured on Slurm 22.05.8 (single node, KillWait=10,
partition low: PreemptMode=REQUEUE GraceTime=20, cred_expire=5), with a probe that queried
scontrol/squeue/sacct at the moment each signal arrived:

- walltime warning, --signal=USR1@30: USR1 arrived 45-49 s before the limit (srun step, or the
  batch shell with B:). scontrol: JobState=RUNNING, PreemptTime=None, Restarts unchanged.
- time limit reached without a warning: TERM 12-14 s after the limit, KILL 10 s later.
  scontrol: JobState=COMPLETING Reason=TimeLimit; sacct TIMEOUT.
- preemption without preempt_send_user_signal: srun step tasks get TERM at once; an `exec`-ed
  batch process (--signal=B:...) gets nothing until the grace time ends.
  scontrol: JobState=RUNNING, PreemptTime=<now>, EndTime=PreemptTime+GraceTime.
- preemption with preempt_send_user_signal: the job's --signal (USR1) at once, to the step or,
  with B:, to the batch shell. scontrol: as above (RUNNING, PreemptTime set).
- end of the grace time: TERM to every process, KILL after KillWait.
  scontrol: JobState=COMPLETING, Restarts already +1; sacct PREEMPTED.
- scancel: TERM to every process. scontrol: JobState=COMPLETING, Reason=None, Restarts
  unchanged, ExitCode=0:15; sacct CANCELLED.
- scontrol requeue from outside: TERM to every process. scontrol: JobState=COMPLETING,
  Restarts already +1; sacct REQUEUED.

Consequences, all measured:
- A preempted job whose batch script ends before GraceTime is over is NOT requeued: it ends
  COMPLETED (or FAILED) and is lost. So after a preemption nnslurm checkpoints, then waits for
  SLURM to requeue the job at the end of the grace time (Restarts goes up), then exits. Only if
  SLURM has not done so well past the grace end does it requeue the job itself (one requeue
  either way: `scontrol requeue` of a job that is no longer running fails).
- `scontrol requeue` of a job that is COMPLETING after scancel succeeds and brings the cancelled
  job back: never requeue unless the evidence says walltime.
- `scontrol requeue` of a job COMPLETING for TimeLimit works: a job that missed the warning is
  still requeued (and counted against --max-requeues).
- A self-requeued job starts again 6-7 s after it ended (BeginTime = end + cred_expire + 1 s);
  a preempted one likewise after its step is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nnslurm.errors import CommandError, RequeueLimitReached, SchedulerError
from nnslurm.events import EventLog
from nnslurm.timeparse import describe, parse_scontrol_time

if TYPE_CHECKING:
    from nnslurm.config import TrainingOptions
    from nnslurm.training import TrainingOutcome

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
# Set by `nnslurm submit` and the templates: the signal of the job's --signal (walltime warning).
WARNING_SIGNAL_ENV = "NNSLURM_WARNING_SIGNAL"
# After the grace time of a preemption ends, how long to wait for SLURM's requeue before doing it.
REQUEUE_WAIT_MARGIN_S = 45.0


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


# --- the job's own environment ------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmEnvironment:
    """What SLURM tells a process of a job through its environment (read on demand)."""

    job_id: str | None  # SLURM_JOB_ID: this job (each array task has its own)
    array_job_id: str | None  # SLURM_ARRAY_JOB_ID: the array's id, for array tasks
    array_task_id: str | None  # SLURM_ARRAY_TASK_ID: the task's index
    restart_count: int  # SLURM_RESTART_COUNT: unset on the first run, then 1, 2, ...
    procid: int  # SLURM_PROCID: the task's global rank (0 acts)
    warning_signal: str | None  # NNSLURM_WARNING_SIGNAL: the --signal of this job, if nnslurm set it
    local_job_id: str | None  # SUBMITIT_LOCAL_JOB_ID: submitit's local executor, no SLURM

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SlurmEnvironment:
        env = os.environ if environ is None else environ
        return cls(
            job_id=env.get("SLURM_JOB_ID") or None,
            array_job_id=env.get("SLURM_ARRAY_JOB_ID") or None,
            array_task_id=env.get("SLURM_ARRAY_TASK_ID") or None,
            restart_count=_int(env.get("SLURM_RESTART_COUNT"), 0),
            procid=_int(env.get("SLURM_PROCID"), 0),
            warning_signal=(env.get(WARNING_SIGNAL_ENV) or "").upper().removeprefix("SIG") or None,
            local_job_id=env.get("SUBMITIT_LOCAL_JOB_ID") or None,
        )

    @property
    def in_slurm(self) -> bool:
        return self.job_id is not None

    @property
    def qualified_id(self) -> str | None:
        """ "ARRAY_TASK" for array tasks (what scontrol and sacct accept), else the job id."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    @property
    def event_job_id(self) -> str | None:
        """The job id as the event log records it (nnslurm.events does the same)."""
        if self.in_slurm:
            return self.qualified_id
        return f"local-{self.local_job_id}" if self.local_job_id else None


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


# --- scontrol show job --------------------------------------------------------------------------

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
    line = next((candidate for candidate in text.splitlines() if candidate.strip()), "")
    fields: dict[str, str] = {}
    matches = list(_KEY.finditer(line))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(line)
        fields.setdefault(match.group(1), line[match.end() : end].strip())
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


def time_left(job_id: str, now: datetime | None = None) -> float | None:
    """Seconds before SLURM ends the job, from scontrol; None when unlimited."""
    return job_info(job_id).time_left(now)


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


def accounting_state(job_id: str, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """The job's State in sacct (its latest record), or None without accounting."""
    try:
        result = run_command(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id], timeout)
    except CommandError as error:
        logger.debug("sacct failed: %s", error)
        return None
    states = [line.split("|")[1] for line in result.stdout.splitlines() if "|" in line]
    return states[-1].split()[0] if states else None


def available() -> bool:
    """Whether a SLURM controller answers (sinfo)."""
    try:
        run_command(["sinfo", "-h", "-o", "%P"], timeout=15)
    except CommandError:
        return False
    return True


# --- what a stop means ---------------------------------------------------------------------------

WALLTIME = "walltime"  # the warning before the time limit: requeue ourselves
TIMELIMIT = "timelimit"  # the time limit passed without a (usable) warning: requeue ourselves
PREEMPTION = "preemption"  # chosen for preemption: SLURM requeues at the end of the grace time
REQUEUED = "requeued"  # SLURM already requeued the job (scontrol requeue from outside, or preemption)
CANCEL = "cancel"  # scancel: stay cancelled
SIGNAL = "signal"  # a stop signal with no scheduler event behind it (kill, scancel --signal TERM)
LIMIT = "requeue-limit"  # a self-requeue was due, but --max-requeues were used up


@dataclass(frozen=True)
class StopDecision:
    kind: str  # one of WALLTIME, TIMELIMIT, PREEMPTION, REQUEUED, CANCEL, SIGNAL, LIMIT
    requeue_self: bool  # whether this job must requeue itself now
    reason: str  # the evidence, in words, for the log and the event record
    wait_for_scheduler: bool = False  # PREEMPTION: stay alive until SLURM has requeued the job


@dataclass(frozen=True)
class StopEvidence:
    signal: str | None  # the first stop signal received ("USR1", "TERM", ...)
    env: SlurmEnvironment  # this process's SLURM variables
    info: JobInfo | None  # scontrol's view after the checkpoint (None: it could not be read)
    accounting: str | None = None  # sacct State, asked only to tell preemption from requeue
    now: datetime | None = None  # for time_left; None = now


def decide(evidence: StopEvidence) -> StopDecision:
    """Walltime, preemption, cancel or requeue from outside: the table in this module's docstring."""
    sig, env, info = evidence.signal, evidence.env, evidence.info
    warning = env.warning_signal
    if not env.in_slurm:  # submitit's local executor: its only signal before SIGINT/KILL is the warning
        if env.local_job_id and sig is not None and sig != "TERM" and (warning is None or sig == warning):
            return StopDecision(WALLTIME, True, f"SIG{sig} from the local executor: its --time is nearly up")
        return StopDecision(SIGNAL, False, f"SIG{sig} outside SLURM: nothing to requeue")
    if info is None:
        if sig is not None and sig != "TERM" and (warning is None or sig == warning):
            return StopDecision(
                WALLTIME, True, f"SIG{sig} and scontrol unreadable: taking it for the walltime warning"
            )
        return StopDecision(
            SIGNAL, False, f"SIG{sig} and scontrol unreadable: not requeueing (could be scancel)"
        )
    left = info.time_left(evidence.now)
    left_text = "unlimited" if left is None else describe(max(0.0, left))
    if info.restarts > env.restart_count:
        source = "preemption" if evidence.accounting == "PREEMPTED" else "scontrol requeue or preemption"
        if evidence.accounting == "REQUEUED":
            source = "scontrol requeue from outside"
        return StopDecision(
            REQUEUED,
            False,
            f"SLURM already requeued the job ({source}): Restarts={info.restarts} > {env.restart_count}",
        )
    if info.preempt_time is not None and info.state in ("RUNNING", "SUSPENDED", "COMPLETING"):
        return StopDecision(
            PREEMPTION,
            False,
            f"preempted at {info.preempt_time.isoformat()} (JobState={info.state}, {left_text} of grace "
            "left): SLURM requeues the job when the grace time ends",
            wait_for_scheduler=info.state != "COMPLETING",
        )
    if info.state in ("COMPLETING", "TIMEOUT") and info.reason == "TimeLimit":
        return StopDecision(TIMELIMIT, True, f"time limit reached (JobState={info.state} Reason=TimeLimit)")
    if info.state in ("CANCELLED", "COMPLETING", "COMPLETED", "FAILED"):
        return StopDecision(
            CANCEL, False, f"JobState={info.state}, Restarts unchanged, no preemption: cancelled (scancel)"
        )
    is_warning = sig == warning if warning else sig != "TERM"
    if info.state == "RUNNING" and is_warning:
        return StopDecision(
            WALLTIME, True, f"SIG{sig} with {left_text} left, JobState=RUNNING: walltime warning"
        )
    return StopDecision(
        SIGNAL,
        False,
        f"SIG{sig} with JobState={info.state}, no preemption, no requeue, {left_text} left: "
        "a signal sent by hand (kill, scancel --signal); not requeueing",
    )


def gather_evidence(signal_name: str | None, env: SlurmEnvironment | None = None) -> StopEvidence:
    """Ask scontrol (and sacct when it matters) about this job, right now."""
    env = env or SlurmEnvironment.from_environ()
    job_id = env.qualified_id
    if job_id is None:
        return StopEvidence(signal_name, env, None)
    try:
        info: JobInfo | None = job_info(job_id)
    except (CommandError, SchedulerError) as error:
        logger.warning(
            "job %s: cannot read the job's state (%s); deciding by the signal alone", job_id, error
        )
        info = None
    accounting = None
    if info is not None and info.restarts > env.restart_count:
        accounting = accounting_state(job_id)
    return StopEvidence(signal_name, env, info, accounting)


def self_requeues(events: EventLog, job_id: str | None) -> int:
    """How often this job (id) has requeued itself for walltime, from the run's event log."""
    return sum(
        1
        for record in events.read()
        if record.get("event") == "requeued"
        and record.get("by") == "nnslurm"
        and record.get("reason") == "walltime"
        and record.get("job_id") == job_id
    )


def apply_requeue_limit(
    decision: StopDecision, used: int, max_requeues: int, outcome: TrainingOutcome
) -> StopDecision:
    if not decision.requeue_self or used < max_requeues:
        return decision
    return StopDecision(
        LIMIT,
        False,
        f"{decision.reason}; but this job already requeued itself {used} time(s) "
        f"(--max-requeues {max_requeues})",
    )


def record_decision(
    events: EventLog,
    decision: StopDecision,
    evidence: StopEvidence,
    outcome: TrainingOutcome,
    requeues_left: int,
) -> None:
    info = evidence.info
    left = info.time_left(evidence.now) if info else None
    events.append(
        "decision",
        job_id=evidence.env.event_job_id,
        kind=decision.kind,
        requeue_self=decision.requeue_self,
        reason=decision.reason,
        signal=evidence.signal,
        job_state=info.state if info else None,
        restarts=info.restarts if info else None,
        preempt_time=info.preempt_time.isoformat() if info and info.preempt_time else None,
        time_left_s=round(left, 1) if left is not None else None,
        accounting=evidence.accounting,
        requeues_left=requeues_left,
        epoch=outcome.epoch,
        iteration=outcome.iteration,
    )
    logger.warning(
        "job %s on %s: stopped by SIG%s at epoch %d iteration %d -> %s: %s (self-requeues left: %d)",
        evidence.env.event_job_id,
        socket.gethostname(),
        evidence.signal,
        outcome.epoch,
        outcome.iteration,
        decision.kind,
        decision.reason,
        requeues_left,
    )


def limit_error(outcome: TrainingOutcome, max_requeues: int, job_id: str | None) -> RequeueLimitReached:
    return RequeueLimitReached(
        f"job {job_id} reached the walltime {max_requeues + 1} times and requeued itself {max_requeues} "
        f"time(s), the most --max-requeues allows; it stops here. The checkpoint at epoch {outcome.epoch} "
        f"iteration {outcome.iteration} in {outcome.output_folder} is complete.",
        hint="submit the same command again to continue from it, with a longer --time or a higher "
        "--max-requeues.",
    )


@contextlib.contextmanager
def _ignoring_term() -> Iterator[None]:
    """SLURM sends TERM around a requeue; the decision's records must still be written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_requeue(
    job_id: str,
    restart_count: int,
    seconds: float,
    poll_s: float = 1.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> JobInfo | None:
    """Poll scontrol until the job is no longer running this incarnation (requeued, cancelled)."""
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    until = clock() + seconds
    last: JobInfo | None = None
    while True:
        try:
            last = job_info(job_id)
        except (CommandError, SchedulerError) as error:
            logger.debug("job %s: %s", job_id, error)
        else:
            if last.restarts > restart_count or last.state not in ("RUNNING", "SUSPENDED"):
                return last
        if clock() >= until:
            return last
        sleep(poll_s)


def after_stop(
    outcome: TrainingOutcome,
    options: TrainingOptions,
    requeue_job: Callable[[str], None] | None = None,
) -> StopDecision:
    """Inside a SLURM job, after training stopped on a signal with a complete checkpoint.

    Walltime (warning or limit) -> requeue this job (`requeue_job`, default `scontrol requeue`),
    unless it already did so --max-requeues times: then RequeueLimitReached. Preemption -> wait
    for SLURM's own requeue at the end of the grace time (exiting earlier loses the job).
    scancel, requeue from outside, a signal by hand -> nothing. Every decision is logged and
    recorded in the run's event log.
    """
    env = SlurmEnvironment.from_environ()
    events = EventLog(Path(outcome.output_folder))
    with _ignoring_term():
        evidence = gather_evidence(outcome.stop_signal, env)
        decision = decide(evidence)
        job_id = env.event_job_id
        used = self_requeues(events, job_id)
        decision = apply_requeue_limit(decision, used, options.max_requeues, outcome)
        requeues_left = max(0, options.max_requeues - used - (1 if decision.requeue_self else 0))
        record_decision(events, decision, evidence, outcome, requeues_left)
        if decision.kind == LIMIT:
            raise limit_error(outcome, options.max_requeues, job_id)
        target = env.qualified_id or job_id
        if decision.requeue_self and target:
            events.append(
                "requeued",
                job_id=job_id,
                reason="walltime",
                by="nnslurm",
                requeues_left=requeues_left,
                restart_count=env.restart_count,
            )
            try:
                (requeue_job or requeue)(target)
            except Exception as error:
                events.append(
                    "decision", job_id=job_id, kind="requeue-failed", requeue_self=False, error=str(error)
                )
                raise
        elif decision.wait_for_scheduler and env.qualified_id:
            finish_preemption(events, env, evidence, requeue_job or requeue)
        elif decision.kind == REQUEUED:
            source = "preemption" if evidence.accounting == "PREEMPTED" else "external"
            events.append("requeued", job_id=job_id, reason=source, by="slurm", requeues_left=requeues_left)
    return decision


def finish_preemption(
    events: EventLog,
    env: SlurmEnvironment,
    evidence: StopEvidence,
    requeue_job: Callable[[str], None],
) -> None:
    """Stay alive until SLURM requeues the preempted job; requeue it ourselves if it does not."""
    job_id = env.qualified_id
    assert job_id is not None
    left = evidence.info.time_left() if evidence.info else None
    wait_s = max(0.0, left or 0.0) + REQUEUE_WAIT_MARGIN_S
    logger.info(
        "job %s on %s: checkpoint written; waiting up to %s for SLURM to requeue the preempted job",
        job_id,
        socket.gethostname(),
        describe(wait_s),
    )
    started = time.monotonic()
    info = wait_for_requeue(job_id, env.restart_count, wait_s)
    waited = round(time.monotonic() - started, 1)
    if info is not None and info.restarts > env.restart_count:
        events.append("requeued", job_id=env.event_job_id, reason="preemption", by="slurm", waited_s=waited)
        logger.info("job %s: SLURM requeued it after %.1f s (Restarts=%d)", job_id, waited, info.restarts)
        return
    if info is not None and info.state not in ("RUNNING", "SUSPENDED"):
        events.append(
            "decision",
            job_id=env.event_job_id,
            kind=CANCEL,
            requeue_self=False,
            waited_s=waited,
            reason=f"preempted, then JobState={info.state} without a requeue (PreemptMode=CANCEL "
            "or scancel): not requeueing",
        )
        logger.warning(
            "job %s: preempted and ended as %s without a requeue; resubmit to resume", job_id, info.state
        )
        return
    events.append(
        "requeued",
        job_id=env.event_job_id,
        reason="preemption",
        by="nnslurm",
        waited_s=waited,
        note="SLURM had not requeued the preempted job by the end of its grace time",
    )
    logger.warning(
        "job %s: SLURM did not requeue the preempted job within %.0f s; requeueing it", job_id, waited
    )
    requeue_job(job_id)
