"""The exception tree. Only `nnslurm.cli` turns these into exit codes and messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class NnslurmError(Exception):
    """Base of every error nnslurm reports to the user; the message says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\nHINT: {self.hint}" if self.hint else base


class UsageError(NnslurmError):
    """Bad command-line input or settings."""

    exit_code = 2


class NnunetSetupError(NnslurmError):
    """nnU-Net's folders, dataset, plans or trainer are missing or inconsistent."""


class CheckpointError(NnslurmError):
    """A checkpoint cannot be read, does not belong to this run, or cannot be written."""


class RunLockedError(NnslurmError):
    """Another process is training into the same output folder."""


class CommandError(NnslurmError):
    """An external command (sbatch, scontrol, ...) failed; keeps its command line and output."""

    def __init__(
        self, argv: list[str], returncode: int | None, stdout: str, stderr: str, hint: str | None = None
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with status {returncode}"
        detail = (stderr or stdout).strip()
        message = f"`{' '.join(argv)}` {status}" + (f": {detail}" if detail else "")
        super().__init__(message, hint)


class SchedulerError(NnslurmError):
    """The scheduler answered something nnslurm cannot interpret."""


class RequeueLimitReached(NnslurmError):
    """The run was stopped for walltime more often than --max-requeues allows."""


class NoProgress(RequeueLimitReached):
    """Several starts in a row made no progress: requeueing again would only spend the requeues."""


@contextmanager
def nnunet_failures(what: str, hint: str) -> Iterator[None]:
    """nnU-Net's own exceptions inside as one NnslurmError: its message, the traceback only with -v.
    nnslurm's errors pass through unchanged."""
    try:
        yield
    except NnslurmError:
        raise
    except Exception as error:
        logger.debug("nnU-Net's traceback", exc_info=True)
        raise NnslurmError(f"nnU-Net's {what} failed: {type(error).__name__}: {error}", hint=hint) from error
