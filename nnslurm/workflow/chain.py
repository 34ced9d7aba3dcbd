"""Submitting the workflow's stages (nnslurm.workflow.plan) as one chain, and its record.

On SLURM each stage is its own submitit job (a training stage: one array, one task per fold), in
plan order, each with `--dependency` on the job ids of the stages it waits for and
`--kill-on-invalid-dep=yes`: a stage that fails for good cancels its dependants. On submitit's
local executor there is nothing to wait on, so the chain is one local job (`LocalChain`) that
runs the stages in order in one process; a stop exits it resumable and the controller's restart
runs it again from the first stage not yet done (a finished training returns at once, done cases
and units are skipped).

The record (nnslurm.runs.chains: `$nnUNet_results/.nnslurm/chains/<id>.json`) names every job of
the chain, so `nnslurm status` can say which stage failed and why, and `nnslurm cancel CHAIN`
cancels it all; it is written here, once the last stage is queued.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnslurm.core.errors import NnslurmError, UsageError
from nnslurm.core.executor import Executor
from nnslurm.core.locations import chains_folder, output_state_folder
from nnslurm.runs.chains import ChainJob, ChainRecord, write_record
from nnslurm.slurm.job_ids import array_job, submitted_event_id
from nnslurm.workflow.plan import Stage, StageKind, WorkflowSpec, dependency_expression, plan_stages

if TYPE_CHECKING:
    from nnslurm.jobs.submission import Submission

logger = logging.getLogger(__name__)


# --- the jobs of the stages -----------------------------------------------------------------------


def stage_job(stage: Stage, spec: WorkflowSpec) -> Any:
    """The submitit callable of a stage that is not a training, stopping as the command line said
    (`spec.stage_settings`: --stop-signals, --stop-deadline, --max-requeues)."""
    first = spec.jobs[0].run
    if stage.kind == StageKind.PREPROCESS:
        from nnslurm.workflow.preprocess import PreprocessJob, PreprocessSpec

        return PreprocessJob(
            PreprocessSpec(
                dataset_id=dataset_id(first.dataset), configurations=preprocessed_configurations(spec)
            ),
            spec.stage_settings,
        )
    if stage.kind == StageKind.FIND_BEST:
        from nnslurm.workflow.find_best import FindBestJob, FindBestSpec, TrainedModel

        models = tuple(
            dict.fromkeys(
                TrainedModel(job.run.configuration, job.run.trainer, job.run.plans) for job in spec.jobs
            )
        )
        folds = tuple(int(fold) for fold in spec.folds)  # plan_stages refused fold "all"
        return FindBestJob(
            FindBestSpec(dataset=first.dataset, models=models, folds=folds), spec.stage_settings
        )
    if stage.kind == StageKind.PREDICT:
        from nnslurm.workflow.predict import PredictJob
        from nnslurm.workflow.predict_models import PredictSpec

        assert spec.predict_input is not None and spec.predict_output is not None
        return PredictJob(
            PredictSpec(
                input_dir=spec.predict_input,
                output_dir=spec.predict_output,
                dataset=first.dataset,
                model=None,  # what find best chose, read when the job runs
                device=spec.jobs[0].options.device,
                trainers=tuple(dict.fromkeys(job.run.trainer for job in spec.jobs if ":" in job.run.trainer)),
            ),
            spec.stage_settings,
        )
    raise ValueError(f"stage {stage.name} is a training: nnslurm.jobs.training_job.TrainingJob runs it")


def stage_folder(stage: Stage, spec: WorkflowSpec) -> Path | None:
    """Where a stage that is not a training keeps its event log (read by status when the scheduler
    cannot say: the local executor, a job SLURM forgot)."""
    dataset = spec.jobs[0].run.dataset
    try:
        if stage.kind == StageKind.PREPROCESS:
            from nnslurm.workflow import preprocess

            return preprocess.stage_folder(dataset)
        if stage.kind == StageKind.FIND_BEST:
            from nnslurm.workflow import find_best

            return find_best.stage_folder(dataset)
    except NnslurmError as error:  # the dataset cannot be named yet: status asks the scheduler only
        logger.debug("no stage folder for %s: %s", stage.name, error)
        return None
    if stage.kind == StageKind.PREDICT and spec.predict_output is not None:
        return output_state_folder(spec.predict_output)
    return None


def stage_folders(stage: Stage, spec: WorkflowSpec) -> tuple[str, ...]:
    """The record's folders of a stage: each training task's run folder, or the stage's folder."""
    from nnslurm.jobs import submission as launch

    if stage.kind == StageKind.TRAIN:
        return tuple(str(launch.run_folder(job) or "") for job in stage.jobs)
    folder = stage_folder(stage, spec)
    return (str(folder),) if folder is not None else ()


def dataset_id(dataset: str) -> int:
    """501 from "501" or "Dataset501_Name" (preprocessing names datasets by id, as nnU-Net's -d)."""
    text = dataset.removeprefix("Dataset").split("_")[0]
    if not text.isdigit():
        raise UsageError(f"dataset {dataset!r}: give its id (501) or DatasetXXX_Name for --preprocess.")
    return int(text)


def preprocessed_configurations(spec: WorkflowSpec) -> tuple[str, ...]:
    """What nnU-Net preprocesses for the configurations trained: the cascade trains on 3d_fullres data."""
    names = ("3d_fullres" if name == "3d_cascade_fullres" else name for name in spec.configurations)
    return tuple(dict.fromkeys(names))


# --- submitting -----------------------------------------------------------------------------------


# sbatch options that ask for GPUs (sbatch(1)); a CPU stage drops them, and --gres's gpu entries.
GPU_SBATCH_KEYS = frozenset(
    {"G", "gpus", "gpus-per-node", "gpus-per-task", "gpus-per-socket", "gpu-bind", "gpu-freq"}
    | {"cpus-per-gpu", "mem-per-gpu", "ntasks-per-gpu"}
)


def stage_submission(stage: Stage, submission: Submission, cpu_partition: str | None) -> Submission:
    """A stage's settings: a training's as given; another GPU stage (predict) gets one GPU, a CPU
    stage (preprocess, find best) none; everything else as the training's."""
    if stage.kind == StageKind.TRAIN:
        return submission
    return one_gpu_submission(submission) if stage.gpu else cpu_submission(submission, cpu_partition)


def cpu_submission(submission: Submission, partition: str | None) -> Submission:
    """A CPU stage's settings: no GPU (--gpus, the GPU options among --sbatch-arg, gres=gpu...),
    the CPU partition when one was given; every other setting as the training's."""
    cluster = dataclasses.replace(
        submission.cluster,
        gpus=None,
        nodes=1,
        partition=partition or submission.cluster.partition,
        sbatch_args=_without_gpus(submission.cluster.sbatch_args),
    )
    return dataclasses.replace(submission, cluster=cluster)


def one_gpu_submission(submission: Submission) -> Submission:
    """A GPU stage that is not a training (predict: one device): one node, one GPU where the
    training's ranks (-num_gpus N) asked for N per node; every other setting as the training's."""
    ranks = max(job.options.num_gpus for job in submission.jobs)
    gpus = 1 if ranks > 1 and submission.cluster.gpus is not None else submission.cluster.gpus
    return dataclasses.replace(
        submission, cluster=dataclasses.replace(submission.cluster, gpus=gpus, nodes=1)
    )


def _without_gpus(sbatch_args: tuple[tuple[str, str | None], ...]) -> tuple[tuple[str, str | None], ...]:
    kept: list[tuple[str, str | None]] = []
    for key, value in sbatch_args:
        if key in GPU_SBATCH_KEYS:
            continue
        if key == "gres" and value is not None:  # gres=gpu:a100:1,tmpdisk:100 -> tmpdisk:100
            value = ",".join(item for item in value.split(",") if not item.startswith("gpu"))
            if not value:
                continue
        kept.append((key, value))
    return tuple(kept)


def submit_chain(spec: WorkflowSpec, submission: Submission, cpu_partition: str | None = None) -> ChainRecord:
    """Submit every stage in plan order with its dependencies; write and return the chain's record."""
    from nnslurm.jobs import submission as launch

    if submission.executor is Executor.LOCAL:
        return submit_local_chain(spec, submission)
    stages = plan_stages(spec)
    job_ids: dict[str, str] = {}
    tasks: dict[str, int] = {}
    chain_jobs: list[ChainJob] = []
    try:
        for stage in stages:
            dependency = dependency_expression(stage, job_ids, tasks)
            name = f"{submission.job_name}-{stage.name.replace(' ', '-')}"
            if stage.kind == StageKind.TRAIN:
                training = dataclasses.replace(submission, jobs=stage.jobs, job_name=name)
                jobs = launch.submit(training, dependency=dependency)
                job_id = array_job(str(jobs[0].job_id))  # the array of the stage's tasks
                task_ids = tuple(str(job.job_id) for job in jobs)
            else:
                where = stage_submission(stage, submission, cpu_partition)
                job = launch.submit_stage(stage_job(stage, spec), where, name, dependency)
                job_id, task_ids = str(job.job_id), (str(job.job_id),)
            folders = stage_folders(stage, spec)
            job_ids[stage.name], tasks[stage.name] = job_id, len(task_ids)
            chain_jobs.append(ChainJob(stage.name, stage.kind.value, job_id, task_ids, dependency, folders))
            logger.info("%s: job %s%s", stage.name, job_id, f" after {dependency}" if dependency else "")
    except NnslurmError:
        _cancel_submitted(chain_jobs)
        raise
    return save_record(spec, submission.executor, chain_jobs)


def _cancel_submitted(jobs: Sequence[ChainJob]) -> None:
    """A later stage was refused: the stages already queued would wait for a chain that is not there."""
    from nnslurm.slurm.commands import cancel

    for job in reversed(jobs):
        logger.warning(
            "cancelling job %s (%s): a later stage of the chain was refused", job.job_id, job.stage
        )
        try:
            cancel(job.job_id)
        except NnslurmError as error:
            logger.warning("could not cancel job %s: %s", job.job_id, error)


def submit_local_chain(spec: WorkflowSpec, submission: Submission) -> ChainRecord:
    """Without SLURM: one local job that runs the stages in order (`LocalChain`); every stage of
    the record names that job."""
    import submitit

    from nnslurm.jobs import submission as launch

    stages = plan_stages(spec)
    executor = launch.make_executor(submission)
    with launch.controller_output(submission.log_dir):
        job = executor.submit(LocalChain(stages, spec))
    assert isinstance(job, submitit.Job)
    event_id = submitted_event_id(job.job_id, "local")
    chain_jobs = [
        ChainJob(
            stage.name,
            stage.kind.value,
            event_id,
            tuple(event_id for _ in stage.jobs) or (event_id,),
            None,
            stage_folders(stage, spec),
        )
        for stage in stages
    ]
    for stage in stages:
        launch.record_submitted(job, stage.jobs, submission)
    return save_record(spec, "local", chain_jobs)


class LocalChain:
    """The whole chain as one job of submitit's local executor: every stage, in order, in this process.

    Each stage is resumable by itself, so a restart after a stop (exit 144: the controller starts
    the job again) goes through the finished stages quickly and continues where it stopped."""

    def __init__(self, stages: tuple[Stage, ...], spec: WorkflowSpec) -> None:
        self.stages = stages
        self.spec = spec

    def __call__(self) -> str:
        from nnslurm.jobs.training_job import TrainingJob

        for stage in self.stages:
            logger.info("chain: %s", stage.name)
            if stage.kind == StageKind.TRAIN:
                for train_job in stage.jobs:
                    TrainingJob(train_job)()
            else:
                stage_job(stage, self.spec)()
        return "chain finished"

    def __repr__(self) -> str:
        return f"LocalChain({', '.join(stage.name for stage in self.stages)})"


# --- the record (nnslurm.runs.chains) -----------------------------------------------------------


def save_record(spec: WorkflowSpec, executor: str, jobs: Sequence[ChainJob]) -> ChainRecord:
    record = ChainRecord(
        chain_id=jobs[0].job_id,
        dataset=spec.jobs[0].run.dataset,
        executor=executor,
        created=time.time(),
        jobs=tuple(jobs),
    )
    return write_record(record, chains_folder() / f"{record.chain_id}.json")


def check_chain_input(spec: WorkflowSpec) -> None:
    """What can be checked before anything is queued."""
    if spec.predict_input is not None:
        if not spec.predict_input.is_dir():
            raise UsageError(
                f"--predict input folder {spec.predict_input} does not exist.",
                hint="give the folder of images to predict (nnU-Net's naming: CASE_0000.nii.gz, ...).",
            )
        if spec.predict_output is not None and spec.predict_output.resolve() == spec.predict_input.resolve():
            raise UsageError(
                "--predict OUTPUT_DIR must not be INPUT_DIR: the images would be mixed with predictions."
            )
