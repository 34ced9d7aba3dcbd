"""`nnslurm submit` of the whole workflow: the chain's dry run, its submission, and --wait."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from nnslurm.commands.held import RunAlreadyQueued, held_runs
from nnslurm.core.errors import NnslurmError
from nnslurm.core.executor import Executor
from nnslurm.workflow.chain import ChainRecord, check_chain_input, stage_submission, submit_chain
from nnslurm.workflow.chain_status import StageState, StageStatus, chain_status, is_over
from nnslurm.workflow.plan import Stage, StageKind, WorkflowSpec, dependency_expression, plan_stages

if TYPE_CHECKING:
    from nnslurm.jobs.submission import Submission

logger = logging.getLogger(__name__)


def describe_stage(stage: Stage, spec: WorkflowSpec) -> str:
    """What a stage does, in nnU-Net's words."""
    first = spec.jobs[0].run
    if stage.kind == StageKind.PREPROCESS:
        from nnslurm.workflow.chain import preprocessed_configurations

        configurations = " ".join(preprocessed_configurations(spec))
        return f"nnUNetv2_plan_and_preprocess -d {first.dataset} -c {configurations} -np <its CPUs>"
    if stage.kind == StageKind.TRAIN:
        folds = ",".join(job.run.fold for job in stage.jobs)
        npz = " --npz" if stage.jobs[0].options.npz else ""
        ranks = stage.jobs[0].options.num_gpus
        gpus = f" -num_gpus {ranks}" if ranks > 1 else ""
        shape = f"array of {len(stage.jobs)}, " if len(stage.jobs) > 1 else ""
        where = f", {ranks} ranks per node" if ranks > 1 else ""
        command = f"nnslurm train {first.dataset} {stage.configuration} FOLD{npz}{gpus}"
        return f"{shape}{command} (folds {folds}{where})"
    if stage.kind == StageKind.FIND_BEST:
        configurations = " ".join(spec.configurations)
        return (
            f"nnUNetv2_find_best_configuration {first.dataset} -c {configurations} -tr {first.trainer} "
            f"-p {first.plans} -f {' '.join(spec.folds)}"
        )
    return f"predict {spec.predict_input} -> {spec.predict_output} (find best's choice, with post-processing)"


def describe_stopping(stage: Stage, spec: WorkflowSpec) -> str:
    """How a stage stops, as the command line said (--stop-signals, --stop-deadline, --max-requeues):
    a training from its TrainingOptions, every other stage from the spec's StageSettings."""
    if stage.kind == StageKind.TRAIN:
        options = stage.jobs[0].options
        signals, deadline, cap = options.stop_signals, options.stop_deadline_s, options.max_requeues
        boundary = "iteration"
    else:
        settings = spec.stage_settings
        signals, deadline, cap = settings.stop_signals, settings.stop_deadline_s, settings.max_requeues
        boundary = "unit"
    return (
        f"stops on {','.join(signals)} at the next {boundary} (deadline {deadline:g} s), "
        f"requeues itself at most {cap} times"
    )


def dry_run(spec: WorkflowSpec, submission: Submission, cpu_partition: str | None) -> int:
    """Every job of the chain with its dependencies, and each job's sbatch script."""
    from nnslurm.jobs import submission as launch

    stages = plan_stages(spec)
    print(f"# nnslurm submit --dry-run: a chain of {len(stages)} job(s); nothing is submitted")
    if submission.executor is Executor.LOCAL:
        print("# executor: local (no sbatch here): ONE local job runs these stages in this order")
    else:
        print("# executor: slurm; every job that waits carries --kill-on-invalid-dep=yes")
    placeholders = {stage.name: f"<{stage.name.replace(' ', '-')}>" for stage in stages}
    tasks = {stage.name: max(1, len(stage.jobs)) for stage in stages}
    width = max(len(stage.name) for stage in stages)
    for stage in stages:
        waits_for = dependency_expression(stage, placeholders, tasks) or "-"
        print(f"# {stage.name:<{width}}  waits for: {waits_for}")
        print(f"# {'':<{width}}  {describe_stage(stage, spec)}")
        print(f"# {'':<{width}}  {describe_stopping(stage, spec)}")
    problems = _problems(spec)
    for problem in problems:
        print(f"# WARNING: this submission would fail: {problem}".replace("\n", "\n# "))
    if submission.executor is Executor.LOCAL:
        return 0
    for stage in stages:
        name = f"{submission.job_name}-{stage.name.replace(' ', '-')}"
        where = stage_submission(stage, submission, cpu_partition)
        dependency = dependency_expression(stage, placeholders, tasks)
        params = launch.sbatch_parameters(
            where.cluster, name, where.folder, tasks[stage.name], dependency=dependency
        )
        count = tasks[stage.name] if tasks[stage.name] > 1 else None
        print(f"\n# --- {stage.name} ---")
        print(
            launch.submitit_sbatch_text(launch.submitit_command(where.folder), where.folder, count, params),
            end="",
        )
    return 0


def _problems(spec: WorkflowSpec) -> list[str]:
    from nnslurm.jobs import submission as launch

    problems = []
    try:
        check_chain_input(spec)
        if not spec.preprocess:  # with --preprocess the plans do not exist yet
            launch.check_runs(spec.jobs)
    except NnslurmError as error:
        problems.append(str(error))
    held = held_runs(spec.jobs)
    if held:
        problems.append(str(RunAlreadyQueued(held)))
    return problems


def send(spec: WorkflowSpec, submission: Submission, cpu_partition: str | None, wait: bool) -> int:
    from nnslurm.jobs import submission as launch

    check_chain_input(spec)
    if not spec.preprocess:
        launch.check_runs(spec.jobs)
    held = held_runs(spec.jobs)
    if held:
        raise RunAlreadyQueued(held)
    record = submit_chain(spec, submission, cpu_partition)
    where = (
        "SLURM"
        if submission.executor is Executor.SLURM
        else "this machine (one local job runs every stage in order)"
    )
    print(f"submitted a chain of {len(record.jobs)} stage(s) to {where}: chain {record.chain_id}")
    for job in record.jobs:
        after = f"  after {job.dependency}" if job.dependency else ""
        tasks = f" ({len(job.task_ids)} tasks)" if len(job.task_ids) > 1 else ""
        print(f"  {job.stage}: job {job.job_id}{tasks}{after}")
    print(f"follow it: nnslurm status (chains); cancel it: nnslurm cancel --chain {record.chain_id}")
    if not wait:
        return 0
    rows = wait_for_chain(record)
    return 0 if all(row.state == StageState.FINISHED for row in rows) else 1


def wait_for_chain(
    record: ChainRecord, poll_s: float = 5.0, echo: Callable[[str], None] = print
) -> list[StageStatus]:
    """Block until every stage ended; a line whenever a stage's state changes."""
    shown: dict[str, str] = {}
    started = time.time()
    while True:
        alive = _local_controller_alive(record)  # before the rows: a controller gone has written all
        rows = chain_status(record)
        for row in rows:
            line = f"{row.stage}: {row.state} [{row.detail}]"
            if shown.get(row.stage) != line:
                shown[row.stage] = line
                echo(f"[{time.time() - started:6.0f} s] {line}")
        if is_over(rows) or not alive:
            return rows
        time.sleep(poll_s)


def _local_controller_alive(record: ChainRecord) -> bool:
    """A local chain is one job: once its controller is gone, nothing more will happen."""
    from nnslurm.core.processes import process_alive
    from nnslurm.slurm.job_ids import local_pid

    controller = local_pid(record.jobs[0].job_id)
    if record.executor == Executor.SLURM or controller is None:
        return True
    return process_alive(controller)
