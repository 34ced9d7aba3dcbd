"""One `nnslurm submit` of nnU-Net's workflow -> its stages and their dependencies (pure).

    preprocess            (CPU; only with --preprocess)
      | afterok
    train CONFIGURATION   (one job array per configuration, one task per fold)
      | aftercorr         3d_cascade_fullres task k waits for 3d_lowres task k (its fold's predictions)
    find best             (CPU; afterok: every training task succeeded)
      | afterok
    predict               (the chosen configuration or ensemble, with post-processing)

A stage that fails for good cancels what depends on it (every dependent job carries
`--kill-on-invalid-dep=yes`, nnslurm.workflow.chain), so nothing is left pending forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from nnslurm.core.config import StageSettings, TrainJob
from nnslurm.core.errors import UsageError
from nnslurm.runs.chains import After

CASCADE = "3d_cascade_fullres"
LOWRES = "3d_lowres"  # the cascade's first stage: its fold's validation predictions feed the cascade


class StageKind(StrEnum):
    PREPROCESS = "preprocess"
    TRAIN = "train"
    FIND_BEST = "find best"
    PREDICT = "predict"


@dataclass(frozen=True)
class Dependency:
    stage: str  # the name of the stage waited for
    kind: After


@dataclass(frozen=True)
class Stage:
    name: str  # "preprocess", "train 3d_fullres", "find best", "predict"
    kind: StageKind
    jobs: tuple[TrainJob, ...] = ()  # training: one array task per fold, in fold order
    after: tuple[Dependency, ...] = ()
    gpu: bool = True  # preprocess and find best need no GPU

    @property
    def configuration(self) -> str | None:
        return self.jobs[0].run.configuration if self.jobs else None


@dataclass(frozen=True)
class WorkflowSpec:
    """What one `nnslurm submit` of the workflow asks for."""

    jobs: tuple[TrainJob, ...]  # every configuration x fold to train
    preprocess: bool = False  # --preprocess: plan and preprocess first
    find_best: bool = False  # --find-best (implied by --predict)
    predict_input: Path | None = None  # --predict INPUT_DIR OUTPUT_DIR
    predict_output: Path | None = None
    # How the stages that are not a training stop (--stop-signals, --stop-deadline, --max-requeues);
    # each training job carries the same flags in its TrainingOptions.
    stage_settings: StageSettings = field(default_factory=StageSettings)

    @property
    def is_chain(self) -> bool:
        """More than training: the stages run as a chain of dependent jobs."""
        return self.preprocess or self.find_best or self.predict_input is not None

    @property
    def configurations(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(job.run.configuration for job in self.jobs))

    @property
    def folds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(job.run.fold for job in self.jobs))


def with_cascade_first_stage(jobs: tuple[TrainJob, ...]) -> tuple[tuple[TrainJob, ...], bool]:
    """The cascade trains on 3d_lowres's predictions of the same fold: add the 3d_lowres runs when
    they were not asked for (returns the jobs and whether it did)."""
    configurations = {job.run.configuration for job in jobs}
    if CASCADE not in configurations or LOWRES in configurations:
        return jobs, False
    import dataclasses

    lowres = tuple(
        dataclasses.replace(job, run=dataclasses.replace(job.run, configuration=LOWRES))
        for job in jobs
        if job.run.configuration == CASCADE
    )
    return lowres + jobs, True


def plan_stages(spec: WorkflowSpec) -> tuple[Stage, ...]:
    """The stages in submission order, each naming the stages it waits for."""
    if spec.predict_input is not None and spec.predict_output is None:
        raise UsageError("--predict needs INPUT_DIR and OUTPUT_DIR.")
    if spec.find_best or spec.predict_input is not None:
        fold_all = [job.run for job in spec.jobs if job.run.fold == "all"]
        if fold_all:
            raise UsageError(
                "find best needs cross-validation folds, and fold 'all' has no validation cases.",
                hint="train --cross-validation (folds 0-4) for --find-best/--predict; fold all on its own.",
            )
    stages: list[Stage] = []
    if spec.preprocess:
        stages.append(Stage("preprocess", StageKind.PREPROCESS, gpu=False))
    before_training = (Dependency("preprocess", After.OK),) if spec.preprocess else ()
    by_configuration: dict[str, list[TrainJob]] = {}
    for job in spec.jobs:
        by_configuration.setdefault(job.run.configuration, []).append(job)
    if CASCADE in by_configuration and LOWRES in by_configuration:
        cascade_folds = [job.run.fold for job in by_configuration[CASCADE]]
        lowres_folds = [job.run.fold for job in by_configuration[LOWRES]]
        if cascade_folds != lowres_folds:
            raise UsageError(
                f"{CASCADE} folds {cascade_folds} and {LOWRES} folds {lowres_folds} differ: each cascade "
                "fold trains on its own fold's 3d_lowres predictions.",
                hint="give the same --fold values to both (one --fold list applies to every -c).",
            )
        ordered = [LOWRES] + [name for name in by_configuration if name != LOWRES]
    else:
        ordered = list(by_configuration)
    training: list[str] = []
    for configuration in ordered:
        after = before_training
        if configuration == CASCADE and LOWRES in by_configuration:
            after = (*after, Dependency(f"train {LOWRES}", After.CORRESPONDING))
        name = f"train {configuration}"
        stages.append(Stage(name, StageKind.TRAIN, jobs=tuple(by_configuration[configuration]), after=after))
        training.append(name)
    if spec.find_best or spec.predict_input is not None:
        stages.append(
            Stage(
                "find best",
                StageKind.FIND_BEST,
                after=tuple(Dependency(name, After.OK) for name in training),
                gpu=False,
            )
        )
    if spec.predict_input is not None:
        stages.append(Stage("predict", StageKind.PREDICT, after=(Dependency("find best", After.OK),)))
    return tuple(stages)


def dependency_expression(stage: Stage, job_ids: dict[str, str], tasks: dict[str, int]) -> str | None:
    """`--dependency` of a stage from the job ids of the stages before it ("afterok:12:13,aftercorr:14").

    aftercorr is for arrays: between two single jobs (one fold) it is afterok."""
    parts: dict[str, list[str]] = {}
    for dependency in stage.after:
        kind = dependency.kind
        if kind == After.CORRESPONDING and (tasks.get(dependency.stage, 1) == 1 or len(stage.jobs) == 1):
            kind = After.OK
        parts.setdefault(kind.value, []).append(job_ids[dependency.stage])
    if not parts:
        return None
    return ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in parts.items())
