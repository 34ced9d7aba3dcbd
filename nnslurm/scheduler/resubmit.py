"""Submitting a preempted run again as a new job, from inside the job SLURM will not requeue.

Two ways, one contract (`Resubmit`: the old job's id in, the new job out):
- submitit jobs (`nnslurm submit`): nnslurm.jobs.submission.Submission.submit_again, a new SlurmExecutor
  submission of the same TrainingJob with the same parameters, so the new job has its own pickle, script and
  result files where submitit (and `submit --wait`) look for them;
- sbatch templates (`nnslurm train` inside the script): `sbatch_again` here, the job's own script
  (scontrol's Command= and WorkDir=) with the partition and time limit it ran with.

Either waits for the old job (`--dependency=afterany:OLD`): the new one never starts while the
preempted one still holds the run folder's lock, and never before the old one's files are closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nnslurm.core.errors import SchedulerError
from nnslurm.slurm.commands import JobInfo, job_info, run_command

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResubmittedJob:
    job_id: str  # the new job's id
    log_folder: str | None = None  # where its output goes (submitit's folder of the job)


# Submit the run of the job OLD_ID again; the new job starts only once OLD_ID has ended.
Resubmit = Callable[[str], ResubmittedJob]


def after_job(job_id: str) -> str:
    """The --dependency of a resubmission: start once the old job has ended, however it ended."""
    return f"afterany:{job_id}"


@contextlib.contextmanager
def outside_the_job() -> Iterator[None]:
    """Hide this job's SLURM_*/SBATCH_* variables while submitting: sbatch would read them as the
    new job's options (CPUs, memory, partition) and the new job would inherit them."""
    hidden = {
        name: os.environ.pop(name) for name in list(os.environ) if name.startswith(("SLURM_", "SBATCH_"))
    }
    try:
        yield
    finally:
        os.environ.update(hidden)


def sbatch_again(job_id: str) -> ResubmittedJob:
    """`sbatch` the job's own script again, from its working folder, with its partition and time."""
    info = job_info(job_id)
    argv = sbatch_argv(info)
    with outside_the_job():
        result = run_command(argv)
    new_id = result.stdout.strip().split(";")[0]
    if not new_id:
        raise SchedulerError(f"`{shlex.join(argv)}` printed no job id: {result.stdout!r}")
    return ResubmittedJob(new_id, None)


def sbatch_argv(info: JobInfo) -> list[str]:
    """The sbatch command that submits the job of `info` again (its script, folder, partition, time)."""
    command = info.fields.get("Command", "")
    script, *arguments = shlex.split(command) if command and not Path(command).is_file() else [command]
    if not script or not Path(script).is_file():
        raise SchedulerError(
            f"cannot resubmit job {info.job_id}: its batch script is not a file here (Command={command!r}).",
            hint="the job was submitted from stdin or with --wrap; submit the same script again by hand "
            "to continue from the checkpoint.",
        )
    argv = ["sbatch", "--parsable", f"--dependency={after_job(info.job_id)}"]
    if info.fields.get("WorkDir"):
        argv.append(f"--chdir={info.fields['WorkDir']}")
    if info.fields.get("Partition"):
        argv.append(f"--partition={info.fields['Partition']}")
    if info.fields.get("TimeLimit") and info.fields["TimeLimit"] != "UNLIMITED":
        argv.append(f"--time={info.fields['TimeLimit']}")
    if info.fields.get("ArrayTaskId"):  # one task of an array: that task only, not the array again
        argv.append(f"--array={info.fields['ArrayTaskId']}")
    return [*argv, script, *arguments]
