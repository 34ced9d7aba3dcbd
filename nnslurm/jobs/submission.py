"""Submitting TrainingJobs through submitit: executor choice, the sbatch script, arrays (following
them to their end: nnslurm.jobs.waiting).

Nothing here changes submitit's class attributes: the warning signal and `--requeue` go into the
sbatch script through `additional_parameters`, and the job learns the signal from two variables
exported by the script's setup lines (SLURM) or set in the environment for the duration of the
submission only (the local controller inherits it then). What submitit keeps private (its script
renderer, the signal variable) is reached through nnslurm.jobs.submitit_insides only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from nnslurm.core.cluster import ClusterSettings
from nnslurm.core.config import TrainJob
from nnslurm.core.directives import check_log_folder, check_value, escape_backslashes
from nnslurm.core.errors import NnslurmError, UsageError
from nnslurm.core.executor import Executor
from nnslurm.core.timeparse import slurm_minutes
from nnslurm.jobs.base import StoppableJob
from nnslurm.jobs.submitit_insides import (
    PREEMPT_SIGNAL_ENV,
    SlurmExecutor,
    submitit_command,
    submitit_sbatch_text,
)
from nnslurm.jobs.training_job import TrainingJob
from nnslurm.runs.events import Event, EventLog
from nnslurm.scheduler.policy import requeue_cap
from nnslurm.scheduler.resubmit import ResubmittedJob, after_job
from nnslurm.slurm.environment import SIGNAL_DELAY_ENV, TIME_ASKED_ENV, TIME_MIN_ENV, WARNING_SIGNAL_ENV
from nnslurm.slurm.job_ids import submitted_event_id

logger = logging.getLogger(__name__)

# --executor's choices (strings at the argparse boundary; "auto" is decided by choose_executor).
EXECUTORS = ("auto", *Executor)


def choose_executor(requested: str) -> Executor:
    """--executor, decided once: auto -> slurm when `sbatch` is on the PATH, else local."""
    if requested not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {requested!r}.")
    if requested == "auto":
        return Executor.SLURM if shutil.which("sbatch") else Executor.LOCAL
    return Executor(requested)


@dataclass(frozen=True)
class Submission:
    """What `nnslurm submit` sends: one job, or one array task per run."""

    jobs: tuple[TrainJob, ...]  # one per run (fold x configuration); more than one: a job array
    cluster: ClusterSettings  # partition, time, signal, ...
    executor: Executor  # where the jobs run (a string "slurm"/"local" is taken as its Executor)
    log_dir: Path  # submitit's folder; each job's files go to log_dir/<job id>/
    job_name: str  # --job-name

    def __post_init__(self) -> None:
        if not self.jobs:
            raise UsageError("nothing to submit: give at least one --fold.")
        object.__setattr__(self, "executor", Executor(self.executor))  # ValueError: not an executor
        check_value("--job-name", self.job_name)
        check_log_folder("--log-dir", str(self.log_dir))

    @property
    def folder(self) -> Path:
        """submitit's folder pattern: one sub-folder per job id (%j)."""
        return self.log_dir / "%j"

    @property
    def max_requeues(self) -> int:
        return max(job.options.max_requeues for job in self.jobs)

    def submit_again(self, job: Callable[[], Any], old_job_id: str) -> ResubmittedJob:
        """From inside a preempted job SLURM will not requeue: `job` (this submission's callable,
        nnslurm.jobs.base.StoppableJob) as a new submitit job with the same settings, which starts
        once the old one ended (`--dependency=afterany:OLD`).

        A new SlurmExecutor submission rather than `sbatch` of the old job's script: the script runs
        `submitit.core._submit <folder>/%j`, which needs a pickle under the *new* job's id; submitit
        writes that pickle, the script and the result paths itself, so `job.result()`, `submit --wait`
        and `nnslurm logs` find the new job's files where submitit puts every job's."""
        executor = make_executor(self, dependency=after_job(old_job_id))
        with submitit.helpers.clean_env():  # this job's SLURM_* must not become the new job's options
            try:
                new = executor.submit(job)
            except submitit.core.utils.FailedJobError as error:
                raise SubmissionRefused(str(error).strip()) from error
        return ResubmittedJob(str(new.job_id), str(new.paths.folder))


def default_job_name(jobs: Sequence[TrainJob]) -> str:
    first = jobs[0].run
    configurations = sorted({job.run.configuration for job in jobs})
    name = f"nnslurm-{first.dataset}-{'+'.join(configurations)}"
    if len(jobs) == 1:
        name += f"-f{first.fold}"
    return name


# --- the sbatch script --------------------------------------------------------------------------


def job_environment_lines(cluster: ClusterSettings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Exports at the top of the job: the warning signal for submitit and nnslurm, nnU-Net's folders."""
    env = os.environ if environ is None else environ
    lines = [
        f"export {PREEMPT_SIGNAL_ENV}={cluster.signal_name}",
        f"export {WARNING_SIGNAL_ENV}={cluster.signal_name}",
    ]
    if cluster.send_signal:  # its lead: a warning with more time left than a stop needs is a hint
        lines.append(f"export {SIGNAL_DELAY_ENV}={cluster.signal_delay_s}")
    if cluster.time_min_s is not None:  # the job compares its granted limit with these, and restores --time
        lines += [f"export {TIME_ASKED_ENV}={cluster.time_s}", f"export {TIME_MIN_ENV}={cluster.time_min_s}"]
    for name in sorted(key for key in env if key.startswith("nnUNet_")):
        lines.append(f"export {name}={shlex.quote(env[name])}")
    return lines


def slurm_parameters(
    submission: Submission, environ: Mapping[str, str] | None = None, dependency: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of SlurmExecutor.update_parameters for this submission (submitit's names)."""
    return sbatch_parameters(
        submission.cluster, submission.job_name, submission.folder, len(submission.jobs), environ, dependency
    )


def sbatch_parameters(
    cluster: ClusterSettings,
    job_name: str,
    folder: Path,
    tasks: int = 1,
    environ: Mapping[str, str] | None = None,
    dependency: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments of SlurmExecutor.update_parameters (submitit's names) of one job or array.

    submitit writes `#SBATCH --key=<shlex.quote(value)>`, which sbatch reads back except for
    backslashes (nnslurm.core.directives): those are doubled here, in --output/--error (given again for
    that) too. Values no #SBATCH line can carry were refused when the settings were made.
    `dependency` (a chain's stage, a resubmission) comes with --kill-on-invalid-dep=yes: a job
    whose dependency can never be satisfied is cancelled instead of pending forever.
    """
    params: dict[str, Any] = {
        "job_name": escape_backslashes(job_name),
        "time": slurm_minutes(cluster.time_s),  # submitit times its own timeouts in minutes
        "signal_delay_s": cluster.signal_delay_s,
        "setup": job_environment_lines(cluster, environ) + list(cluster.setup),
    }
    if cluster.nodes > 1:  # one srun task per node: a launcher of its ranks (training.ranks.Placement)
        params.update(nodes=cluster.nodes, ntasks_per_node=1)
    optional = {
        "partition": cluster.partition,
        "account": cluster.account,
        "qos": cluster.qos,
        "gpus_per_node": cluster.gpus or None,
        "cpus_per_task": cluster.cpus_per_task,
        "mem": cluster.mem,
        "constraint": cluster.constraint,
    }
    for key, value in optional.items():
        if value is not None:
            params[key] = escape_backslashes(value) if isinstance(value, str) else value
    additional: dict[str, Any] = {
        **({"signal": f"{cluster.signal_name}@{cluster.signal_delay_s}"} if cluster.send_signal else {}),
        "requeue": True,  # clusters may default to JobRequeue=0
        **({"time-min": slurm_minutes(cluster.time_min_s)} if cluster.time_min_s is not None else {}),
    }  # signal: to the srun step, no B:; none with --no-signal (without_submitit_signal)
    if dependency is not None:  # a chain's stage, a resubmission (after the preempted job)
        additional["dependency"] = dependency
        additional["kill-on-invalid-dep"] = "yes"
    for key, value in cluster.sbatch_args:
        additional[key] = True if value is None else escape_backslashes(value)
    paths = submitit.core.utils.JobPaths(folder=folder)
    pattern = "%A_%a" if tasks > 1 else "%j"
    for key, path in (("output", paths.stdout), ("error", paths.stderr)):
        additional[key] = escape_backslashes(str(path).replace("%j", pattern).replace("%t", "0"))
    params["additional_parameters"] = additional
    return params


def render_sbatch(
    submission: Submission, environ: Mapping[str, str] | None = None, python: str | None = None
) -> str:
    """The sbatch script submitit will write for this submission (also without SLURM installed)."""
    params = slurm_parameters(submission, environ)
    map_count = len(submission.jobs) if len(submission.jobs) > 1 else None
    command = submitit_command(submission.folder, python)
    return submitit_sbatch_text(command, submission.folder, map_count, params)


# --- submitting ---------------------------------------------------------------------------------


@contextlib.contextmanager
def controller_output(log_dir: Path) -> Iterator[None]:
    """Point this process's stdout/stderr at <log dir>/local-controller.log while submitit starts
    the local controller, which inherits them and outlives `nnslurm submit`: otherwise a caller's
    pipe (`nnslurm submit ... | tee`) or ssh session would stay open until the job ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_dir / "local-controller.log", "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def make_executor(submission: Submission, dependency: str | None = None) -> submitit.Executor:
    # submitit's countdown never decides (nnslurm.jobs.base: one requeue authority); the same cap.
    cap = requeue_cap(submission.max_requeues, submission.executor)
    if submission.executor is Executor.SLURM:
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise UsageError(
                "--executor slurm, but sbatch/srun are not on the PATH.",
                hint="run on a SLURM login node, use --executor local, or --dry-run to see the script.",
            )
        slurm_executor = SlurmExecutor(folder=submission.folder, max_num_timeout=cap)
        slurm_executor.update_parameters(**slurm_parameters(submission, dependency=dependency))
        return slurm_executor
    local_executor = submitit.LocalExecutor(folder=submission.folder, max_num_timeout=cap)
    cluster = submission.cluster
    if cluster.setup:
        logger.info("local executor: the setup lines are for SLURM jobs and are not run here")
    local_executor.update_parameters(
        timeout_min=cluster.time_s / 60,
        signal_delay_s=cluster.signal_delay_s,
        gpus_per_node=cluster.gpus or 0,
    )
    return local_executor


def submit(submission: Submission, dependency: str | None = None) -> list[submitit.Job[Any]]:
    """Submit every run (an array when more than one) and record "submitted" in each run's log;
    `dependency`: a chain's `--dependency` (nnslurm.workflow.chain)."""
    executor = make_executor(submission, dependency=dependency)
    callables = [TrainingJob(job, single(submission, job)) for job in submission.jobs]
    signal_name = submission.cluster.signal_name
    detach = controller_output(submission.log_dir) if submission.executor is Executor.LOCAL else nullcontext()
    exported = {PREEMPT_SIGNAL_ENV: signal_name, WARNING_SIGNAL_ENV: signal_name}
    with submitit.helpers.environment_variables(**exported), detach:
        try:
            if len(callables) == 1:
                jobs = [executor.submit(callables[0])]
            else:
                jobs = executor.submit_array(callables)
        except submitit.core.utils.FailedJobError as error:  # sbatch refused: its own words
            raise SubmissionRefused(str(error).strip()) from error
    # --nodes M: submitit's job of M tasks (one launcher per node); rank 0's task is the one whose
    # result, error and logs tell the run's end (the others leave with 0 or the same result)
    jobs = [job.task(0) if job.num_tasks > 1 else job for job in jobs]
    for index, (job, train_job) in enumerate(zip(jobs, submission.jobs, strict=True)):
        record_submitted(job, (train_job,), submission, array_index=index if len(jobs) > 1 else None)
    return jobs


def record_submitted(
    job: submitit.Job[Any],
    train_jobs: Sequence[TrainJob],
    submission: Submission,
    array_index: int | None = None,
) -> None:
    """A "submitted" record in the run folder of each run this job trains."""
    cluster = submission.cluster
    for train_job in train_jobs:
        folder = run_folder(train_job)
        if folder is None:
            continue
        EventLog(folder).append(
            Event.SUBMITTED,
            job_id=submitted_event_id(job.job_id, submission.executor),
            executor=submission.executor,
            array_index=array_index,
            log_folder=str(job.paths.folder),
            time_limit_s=cluster.time_s,
            signal=f"{cluster.signal_name}@{cluster.signal_delay_s}" if cluster.send_signal else None,
            max_requeues=train_job.options.max_requeues,
        )


def submit_stage(
    stage_job: Callable[[], Any], submission: Submission, job_name: str, dependency: str | None = None
) -> submitit.Job[Any]:
    """One job of a chain that is not a training (preprocess, find best, predict): the callable
    under the submission's cluster settings and log folder, its own job name."""
    one = dataclasses.replace(submission, jobs=submission.jobs[:1], job_name=job_name)
    if isinstance(stage_job, StoppableJob):  # preempted where SLURM will not requeue: resubmitted so
        stage_job.again = one
    executor = make_executor(one, dependency=dependency)
    try:
        return executor.submit(stage_job)
    except submitit.core.utils.FailedJobError as error:
        raise SubmissionRefused(str(error).strip()) from error


def single(submission: Submission, job: TrainJob) -> Submission:
    """The submission of one of its runs alone (what a resubmission of that run sends: one job)."""
    return dataclasses.replace(submission, jobs=(job,))


class SubmissionRefused(NnslurmError):
    """sbatch rejected the job; nothing was queued."""

    def __init__(self, sbatch_said: str) -> None:
        super().__init__(
            f"SLURM refused the job, nothing was submitted:\n{sbatch_said}",
            hint="fix what sbatch names (partition, account, qos, time, resources) and submit again; "
            "--dry-run shows the script.",
        )


def run_folder(job: TrainJob) -> Path | None:
    from nnslurm.core.nnunet import output_folder

    try:
        return output_folder(job.run)
    except NnslurmError as error:
        logger.debug("no run folder for %s: %s", job.run, error)
        return None


def check_runs(jobs: Sequence[TrainJob]) -> None:
    """Fail before submitting what would fail in the job: dataset, plans, configuration, fold."""
    from nnslurm.core.nnunet import load_plans

    for job in jobs:
        load_plans(job.run)
