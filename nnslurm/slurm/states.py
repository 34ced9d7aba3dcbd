"""SLURM's job states, and what each one means to nnslurm, decided here once.

`TABLE` gives every state SLURM reports (squeue's JOB STATE CODES; scontrol's JobState; sacct's
State, whose first word is the state: "CANCELLED by 0") exactly one `Phase`, and says of the
states that end a start whether SLURM requeues a job with --requeue after it. The lock, status,
chain status, `submit --wait` and the after-stop decision ask the predicates below, never a
list of names of their own. A state this table does not know (a newer SLURM) is in no phase:
every predicate is False for it, so nothing takes it for a live job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    """The states SLURM 20-24 report; the values are SLURM's own names."""

    BOOT_FAIL = "BOOT_FAIL"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    COMPLETING = "COMPLETING"
    CONFIGURING = "CONFIGURING"
    DEADLINE = "DEADLINE"
    FAILED = "FAILED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PENDING = "PENDING"
    PREEMPTED = "PREEMPTED"
    REQUEUED = "REQUEUED"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESIZING = "RESIZING"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    REVOKED = "REVOKED"
    RUNNING = "RUNNING"
    SIGNALING = "SIGNALING"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    STAGE_OUT = "STAGE_OUT"
    STOPPED = "STOPPED"
    SUSPENDED = "SUSPENDED"
    TIMEOUT = "TIMEOUT"


class Phase(StrEnum):
    """Where a job stands; each state has exactly one phase."""

    QUEUED = "queued"  # waiting for its first start
    REQUEUED = "requeued"  # queued again after a start (or being requeued)
    RUNNING = "running"  # holds its allocation; its processes run (or are suspended, stopped)
    COMPLETING = "completing"  # ended, but its processes or data may still be on the nodes
    COMPLETED = "completed"  # ended successfully (exit code 0)
    CANCELLED = "cancelled"  # ended by scancel (a user or an administrator)
    PREEMPTED = "preempted"  # this start ended by preemption
    FAILED = "failed"  # ended without success: an exit code, a limit, a node, a launch
    ELSEWHERE = "elsewhere"  # a federation removed it here: it runs on another cluster


@dataclass(frozen=True)
class Meaning:
    phase: Phase
    requeue_follows: bool  # a start that ended so is followed by SLURM's requeue of a --requeue job
    slurm_says: str  # SLURM's own description (squeue(1), JOB STATE CODES)


S, P = JobState, Phase
TABLE: dict[JobState, Meaning] = {
    S.PENDING: Meaning(P.QUEUED, False, "awaiting resource allocation"),
    S.RESV_DEL_HOLD: Meaning(P.QUEUED, False, "held after its requested reservation was deleted"),
    S.REQUEUED: Meaning(P.REQUEUED, True, "a completing job being requeued"),
    S.REQUEUE_HOLD: Meaning(P.REQUEUED, False, "held after being requeued"),
    S.REQUEUE_FED: Meaning(P.REQUEUED, False, "being requeued by a federation"),
    S.SPECIAL_EXIT: Meaning(P.REQUEUED, False, "requeued in a special state (held), e.g. by an epilog"),
    S.CONFIGURING: Meaning(P.RUNNING, False, "allocated nodes, waiting for them to become ready"),
    S.RUNNING: Meaning(P.RUNNING, False, "has an allocation"),
    S.RESIZING: Meaning(P.RUNNING, False, "about to change size"),
    S.SIGNALING: Meaning(P.RUNNING, False, "being signaled"),
    S.SUSPENDED: Meaning(P.RUNNING, False, "has an allocation, execution suspended, CPUs released"),
    S.STOPPED: Meaning(P.RUNNING, False, "has an allocation, execution stopped (SIGSTOP), CPUs kept"),
    S.COMPLETING: Meaning(P.COMPLETING, False, "completing; processes on some nodes may still be active"),
    S.STAGE_OUT: Meaning(P.COMPLETING, False, "staging out files"),
    S.COMPLETED: Meaning(P.COMPLETED, False, "terminated with exit code zero on all nodes"),
    S.CANCELLED: Meaning(P.CANCELLED, False, "cancelled by the user or an administrator"),
    S.PREEMPTED: Meaning(P.PREEMPTED, True, "terminated by preemption"),
    S.NODE_FAIL: Meaning(P.FAILED, True, "terminated by the failure of an allocated node"),
    S.FAILED: Meaning(P.FAILED, False, "terminated with a non-zero exit code or another failure"),
    S.TIMEOUT: Meaning(P.FAILED, False, "terminated on reaching its time limit"),
    S.OUT_OF_MEMORY: Meaning(P.FAILED, False, "terminated for running out of memory"),
    S.BOOT_FAIL: Meaning(P.FAILED, False, "terminated by a launch failure (a node could not boot)"),
    S.DEADLINE: Meaning(P.FAILED, False, "terminated on its deadline"),
    S.REVOKED: Meaning(P.ELSEWHERE, False, "removed here: another cluster of the federation started it"),
}

_QUEUED = frozenset({P.QUEUED, P.REQUEUED})
_ON_NODES = frozenset({P.RUNNING, P.COMPLETING})
_ENDED = frozenset({P.COMPLETED, P.CANCELLED, P.PREEMPTED, P.FAILED, P.ELSEWHERE})
# Why SLURM requeued a job, by the state its start ended in (the "reason" of a "requeued" record;
# the values are nnslurm.runs.interruptions.Kind's). Other states: a `scontrol requeue` from outside.
_REQUEUE_CAUSES = {S.PREEMPTED: "preemption", S.NODE_FAIL: "node failure"}


def state_of(text: str | None) -> JobState | None:
    """The state in squeue's, scontrol's or sacct's words ("CANCELLED by 0" -> CANCELLED); None if
    there is none or SLURM reports one this table does not know."""
    word = (text or "").split(maxsplit=1)[0] if (text or "").strip() else ""
    try:
        return JobState(word.upper())
    except ValueError:
        return None


def phase(text: str | None) -> Phase | None:
    """The phase of a state (None: no state, or an unknown one)."""
    state = state_of(text)
    return TABLE[state].phase if state is not None else None


def is_queued(text: str | None) -> bool:
    """Waiting to start, for the first time or again."""
    return phase(text) in _QUEUED


def is_running(text: str | None) -> bool:
    """Holds its allocation and has not begun to end: this start still runs."""
    return phase(text) == P.RUNNING


def on_nodes(text: str | None) -> bool:
    """Its processes may still run on its nodes (running, or ending): a lock it holds is held."""
    return phase(text) in _ON_NODES


def is_live(text: str | None) -> bool:
    """Not over: queued, running, or ending; SLURM will still run or finish it."""
    return phase(text) in _QUEUED | _ON_NODES


def is_ended(text: str | None) -> bool:
    """Over, as far as SLURM knows right now (a requeue may still follow: `requeue_follows`)."""
    return phase(text) in _ENDED


def is_failed(text: str | None) -> bool:
    """Ended without success, neither cancelled nor preempted."""
    return phase(text) == P.FAILED


def requeue_follows(text: str | None) -> bool:
    """A start that ended in this state is followed by SLURM's own requeue of a --requeue job."""
    state = state_of(text)
    return state is not None and TABLE[state].requeue_follows


def requeue_cause(text: str | None) -> str | None:
    """Why SLURM requeued a job whose start ended in this state ("preemption", "node failure"), or
    None (a requeue from outside)."""
    state = state_of(text)
    return _REQUEUE_CAUSES.get(state) if state is not None else None
