"""submitit's insides that nnslurm relies on, in this module only: every private name, and why.

submitit has no public way to do these things; each name below was checked against
`CHECKED_WITH`, and tests/test_submitit_insides.py fails, naming the installed submitit version and
the name that moved, when a release changes one of them. Nothing else in nnslurm touches a
private submitit name or depends on a submitit fact that is not in its public API. The values
submitit keeps private are written here, not imported, so that a release that renames one breaks
that test, not every import of nnslurm; the private functions are looked up when called.

1. `submitit.slurm.slurm._make_sbatch_string`: the function SlurmExecutor writes its sbatch
   script with. `--dry-run`, `submit-chain --dry-run` and the golden files show the script without
   submitting, which SlurmExecutor cannot (it needs srun on the PATH and writes the script only
   inside `submit`).
2. `SlurmExecutor._make_submission_file_text`: the one hook between "script rendered" and
   "script submitted". submitit always writes `#SBATCH --signal=USR2@<signal_delay_s>`; nnslurm's
   own `--signal` replaces it, and with `--no-signal` the job must get no signal at all, so the
   line is dropped there (`without_submitit_signal`).
3. `SlurmExecutor._submitit_command_str`: what the job runs (`python -u -m submitit.core._submit
   FOLDER`); `submitit_command` renders it for the dry-run script.
4. `submitit.core.job_environment._PREEMPT_SIG_ENV` ("SUBMITIT_PREEMPT_SIGNAL"): the variable
   submitit's job reads its checkpoint signal from (`JobEnvironment.USR_SIG`). nnslurm exports
   its warning signal there, so that submitit's own handler, where it still fires (just before
   or after the stop monitor), hands the signal to nnslurm's stop path through `checkpoint()`.
5. `submitit.local.local.LOCAL_REQUEUE_RETURN_CODE` (144): the exit status that makes the local
   executor's controller start the job again; nnslurm's stop path exits with it to requeue there.
6. `submitit.local.local.Controller.run(max_retry=6)`: the local controller starts a job at most
   6 times; nnslurm.scheduler.policy.LOCAL_MAX_REQUEUES (5) follows from it.
7. `submitit.core.submission.process_job` catches Exception only: a stopped job leaves with
   SystemExit (nnslurm.training.stoppable.exit_process), so submitit writes no result pickle and
   the job is not over for `job.result()` or the local controller.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import submitit
import submitit.slurm.slurm

# The submitit release every name here was checked against.
CHECKED_WITH = "1.5.4"

# 4. What submitit's job reads as its checkpoint (preemption) signal.
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"

# 5. The exit status that makes the local controller start the job again (LocalJobEnvironment._requeue
# exits with it; nnslurm exits with it itself, through nnslurm.training.stoppable.exit_process).
LOCAL_REQUEUE_EXIT = 144

# 3. The module submitit's script runs in the job.
SUBMIT_MODULE = "submitit.core._submit"


def submitit_command(folder: Path, python: str | None = None) -> str:
    """3. What submitit's SlurmExecutor runs in the job (its `_submitit_command_str`)."""
    python = python or shlex.quote(sys.executable)
    return " ".join([python, f"-u -m {SUBMIT_MODULE}", shlex.quote(str(folder))])


def submitit_sbatch_text(command: str, folder: Path, map_count: int | None, params: dict[str, Any]) -> str:
    """1. submitit's own sbatch script for these parameters (SlurmExecutor.update_parameters' names),
    as `SlurmExecutor` below submits it."""
    make = submitit.slurm.slurm._make_sbatch_string
    return without_submitit_signal(
        make(command=command, folder=folder, map_count=map_count, **params), params
    )


def without_submitit_signal(text: str, params: Mapping[str, Any]) -> str:
    """2. submitit always writes `--signal=USR2@<signal_delay_s>`, which nnslurm's own --signal
    replaces; with --no-signal there is none of nnslurm's, and submitit's line is dropped."""
    if "signal" in params.get("additional_parameters", {}):
        return text
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#SBATCH --signal="))


class SlurmExecutor(submitit.SlurmExecutor):
    """2. submitit's SlurmExecutor, whose script has no --signal line with --no-signal."""

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return without_submitit_signal(super()._make_submission_file_text(command, uid), self.parameters)
