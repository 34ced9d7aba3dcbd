"""Preemption that SLURM will not requeue (PreemptMode=CANCEL, Requeue=0) ends in a resubmission of
the run as a new job: the pure rule, after_stop with a fake cluster, the cap, the sbatch fallback of
the templates, and what status and `submit --wait` make of it (issue 12 item 2)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import FakeCluster, events_of, started, stop, write_log

from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.core.errors import RequeueLimitReached, SchedulerError
from nnslurm.jobs import submission as launch
from nnslurm.jobs import waiting
from nnslurm.runs.events import Event, EventLog
from nnslurm.runs.history import read_history
from nnslurm.runs.outcome import Stopped
from nnslurm.runs.state import RunState
from nnslurm.runs.status import run_status
from nnslurm.scheduler.after_stop import Clock, after_stop
from nnslurm.scheduler.policy import (
    StopEvidence,
    apply_resubmit_limit,
    decide,
    resubmissions,
    resubmit_rule,
)
from nnslurm.scheduler.resubmit import ResubmittedJob, sbatch_argv
from nnslurm.slurm import commands
from nnslurm.slurm.commands import SchedulerJob, parse_job_info, parse_preempt_mode
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.slurm.stop_kinds import StopKind

NOW = datetime(2026, 12, 1, 11, 0, 20)


def job_line(**changes: str | None) -> str:
    """`scontrol show job -o` of a job on partition `cancel` (Slurm 22.05 field names)."""
    fields: dict[str, str | None] = {
        "JobId": "15",
        "JobName": "nnslurm-501-3d_fullres-f0",
        "JobState": "RUNNING",
        "Reason": "None",
        "Requeue": "1",
        "Restarts": "0",
        "ExitCode": "0:0",
        "RunTime": "00:00:40",
        "TimeLimit": "00:10:00",
        "StartTime": "2026-12-01T10:59:40",
        "EndTime": "2026-12-01T11:09:40",
        "PreemptTime": "None",
        "Partition": "cancel",
        "Command": "/tmp/probe/train.sbatch",
        "WorkDir": "/tmp/probe",
    }
    fields.update(changes)
    return " ".join(f"{key}={value}" for key, value in fields.items() if value is not None) + "\n"


PREEMPTED = job_line(PreemptTime="2026-12-01T11:00:12", EndTime="2026-12-01T11:00:32")
SCANCELLED = job_line(JobState="COMPLETING", ExitCode="0:15")


def partition_line(mode: str) -> str:
    return (
        "PartitionName=cancel AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO "
        "QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=20 Hidden=NO "
        "MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm "
        f"PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE "
        f"PreemptMode={mode} State=UP TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE\n"
    )


def evidence(line: str, mode: str | None, sig: str = "TERM") -> StopEvidence:
    env = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "15"})
    return StopEvidence(sig, env, parse_job_info(line), now=NOW, preempt_mode=mode)


# --- the pure rule -------------------------------------------------------------------------------


def test_preemption_on_a_cancel_partition_is_resubmitted() -> None:
    seen = evidence(PREEMPTED, "CANCEL")
    decision = resubmit_rule(decide(seen), seen)
    assert decision.kind == StopKind.RESUBMIT and decision.resubmit
    assert not decision.requeue_self and not decision.wait_for_scheduler
    assert "PreemptMode=CANCEL" in decision.reason and "preempted at 2026-12-01T11:00:12" in decision.reason


def test_preemption_of_a_job_that_is_not_requeueable_is_resubmitted() -> None:
    seen = evidence(job_line(PreemptTime="2026-12-01T11:00:12", Requeue="0"), "REQUEUE")
    decision = resubmit_rule(decide(seen), seen)
    assert decision.kind == StopKind.RESUBMIT and "not requeueable" in decision.reason


def test_preemption_slurm_requeues_is_left_to_slurm() -> None:
    seen = evidence(PREEMPTED, "REQUEUE")
    decision = resubmit_rule(decide(seen), seen)
    assert decision.kind == StopKind.PREEMPTION and not decision.resubmit and decision.wait_for_scheduler


@pytest.mark.parametrize(
    "line", [SCANCELLED, job_line(), job_line(JobState="COMPLETING", Reason="TimeLimit")]
)
def test_nothing_but_a_preemption_is_ever_resubmitted(line: str) -> None:
    """scancel, a signal by hand, the time limit: on a CANCEL partition too, never a new job."""
    seen = evidence(line, "CANCEL")
    decision = resubmit_rule(decide(seen), seen)
    assert decision.kind != StopKind.RESUBMIT and not decision.resubmit


def test_resubmissions_count_since_the_newest_submit() -> None:
    records = [
        {"event": Event.SUBMITTED},
        {"event": Event.RESUBMITTED},
        {"event": Event.SUBMITTED},  # the user submitted again: a fresh count
        {"event": Event.RESUBMITTED},
        {"event": Event.RESUBMITTED},
    ]
    assert resubmissions(records) == 2
    seen = evidence(PREEMPTED, "CANCEL")
    decision = resubmit_rule(decide(seen), seen)
    assert apply_resubmit_limit(decision, 1, 2).kind == StopKind.RESUBMIT
    limited = apply_resubmit_limit(decision, 2, 2)
    assert limited.kind == StopKind.RESUBMIT_LIMIT and not limited.resubmit
    assert "resubmitted 2 time(s)" in limited.reason


def test_preempt_mode_is_read_from_scontrol_show_partition() -> None:
    assert parse_preempt_mode(partition_line("CANCEL")) == "CANCEL"
    assert parse_preempt_mode(partition_line("REQUEUE,GANG")) == "REQUEUE,GANG"
    assert parse_preempt_mode("PartitionName=x State=UP\n") is None


# --- after_stop with a fake cluster ----------------------------------------------------------------


def outcome(folder: Path) -> Stopped:
    return Stopped(folder=folder, signal="TERM", epoch=2, iteration=7)


def no_sleep() -> Clock:
    def sleep(seconds: float) -> None:
        raise AssertionError(f"a resubmitting job must not wait ({seconds} s)")

    return Clock(sleep=sleep)


def cancel_partition(mode: str = "CANCEL") -> FakeCluster:
    return FakeCluster(
        answers={"scontrol show job": [PREEMPTED], "scontrol show partition": [partition_line(mode)]}
    )


@pytest.mark.usefixtures("in_job")
def test_after_stop_resubmits_and_records_both_ids(tmp_path: Path) -> None:
    asked: list[str] = []

    def resubmit(old: str) -> ResubmittedJob:
        asked.append(old)
        return ResubmittedJob("16", "/logs/16")

    fake = cancel_partition()
    with commands.use_runner(fake):
        decision = after_stop(outcome(tmp_path), 3, clock=no_sleep(), resubmit=resubmit)
    assert decision.kind == StopKind.RESUBMIT and asked == ["15"]
    assert fake.ran("scontrol show partition") == [["scontrol", "show", "partition", "-o", "cancel"]]
    assert fake.ran("scontrol requeue") == []
    (record,) = events_of(tmp_path, "decision")
    assert record["kind"] == "resubmit" and record["preempt_time"]
    (resubmitted,) = events_of(tmp_path, "resubmitted")
    assert (resubmitted["job_id"], resubmitted["old_job_id"]) == ("16", "15")
    assert (resubmitted["log_folder"], resubmitted["resubmissions_left"]) == ("/logs/16", 2)


@pytest.mark.usefixtures("in_job")
def test_resubmission_cap_stops_the_run_with_its_checkpoint(tmp_path: Path) -> None:
    EventLog(tmp_path).append(Event.SUBMITTED, job_id="10")
    for new in ("11", "12"):
        EventLog(tmp_path).append(Event.RESUBMITTED, job_id=new, old_job_id="x")
    with commands.use_runner(cancel_partition()), pytest.raises(RequeueLimitReached) as caught:
        after_stop(outcome(tmp_path), 2, clock=no_sleep(), resubmit=pytest.fail)
    assert "resubmitted 2 time(s)" in str(caught.value) and "--max-requeues" in str(caught.value)
    assert events_of(tmp_path, "decision")[-1]["kind"] == "resubmit-limit"
    assert len(events_of(tmp_path, "resubmitted")) == 2


@pytest.mark.usefixtures("in_job")
def test_a_failed_resubmission_is_recorded_and_raised(tmp_path: Path) -> None:
    def refuse(old: str) -> ResubmittedJob:
        raise SchedulerError("sbatch: error: invalid partition")

    with commands.use_runner(cancel_partition()), pytest.raises(SchedulerError):
        after_stop(outcome(tmp_path), TrainingOptions.max_requeues, clock=no_sleep(), resubmit=refuse)
    last = events_of(tmp_path, "decision")[-1]
    assert last["kind"] == "resubmit-failed" and "invalid partition" in last["error"]
    assert run_status(tmp_path, scheduler={}).state == RunState.STOPPED


@pytest.mark.usefixtures("in_job")
def test_templates_resubmit_their_own_script(tmp_path: Path) -> None:
    script = tmp_path / "train.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --requeue\nexec nnslurm train ...\n")
    line = PREEMPTED.replace("/tmp/probe/train.sbatch", str(script)).replace("/tmp/probe", str(tmp_path))
    fake = FakeCluster(
        answers={
            "scontrol show job": [line],
            "scontrol show partition": [partition_line("CANCEL")],
            "sbatch": ["77\n"],
        }
    )
    with commands.use_runner(fake):
        after_stop(outcome(tmp_path), TrainingOptions.max_requeues, clock=no_sleep())
    (sbatch,) = fake.ran("sbatch")
    assert sbatch == [
        "sbatch",
        "--parsable",
        "--dependency=afterany:15",
        f"--chdir={tmp_path}",
        "--partition=cancel",
        "--time=00:10:00",
        str(script),
    ]
    assert events_of(tmp_path, "resubmitted")[0]["job_id"] == "77"


def test_a_script_from_stdin_cannot_be_resubmitted() -> None:
    with pytest.raises(SchedulerError, match="not a file"):
        sbatch_argv(parse_job_info(job_line(Command="(null)")))


def test_an_array_task_is_resubmitted_alone(tmp_path: Path) -> None:
    script = tmp_path / "array.sbatch"
    script.write_text("#!/bin/bash\n")
    argv = sbatch_argv(parse_job_info(job_line(Command=f"{script} 3", ArrayJobId="14", ArrayTaskId="1")))
    assert "--array=1" in argv and argv[-2:] == [str(script), "3"]


# --- the run after a resubmission: status, logs' job list, --wait ------------------------------------


def resubmitted_run(tmp_path: Path) -> Path:
    return write_log(
        tmp_path / "run",
        [
            {"event": "submitted", "time": -100, "job_id": "15", "log_folder": "/logs/15"},
            *started("15", -90),
            *stop("15", -20, 1, 30, "resubmit", signal="TERM"),
            {
                "event": "resubmitted",
                "time": -19,
                "job_id": "16",
                "old_job_id": "15",
                "log_folder": "/logs/16",
            },
        ],
    )


def test_status_follows_the_new_job(tmp_path: Path) -> None:
    folder = resubmitted_run(tmp_path)
    row = run_status(folder, scheduler={"16": SchedulerJob("16", "PENDING", "Dependency", "squeue")})
    assert (row.job_id, row.state) == ("16", RunState.PENDING)
    assert "resubmitted as job 16" in row.detail and "Dependency" in row.detail
    assert row.interruptions["preemption"] == 1 and row.job_ids == ("15", "16")
    assert [r["job_id"] for r in read_history(folder).submitted if r.get("log_folder")] == ["15", "16"]


def test_wait_follows_the_resubmitted_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = resubmitted_run(tmp_path)
    job = TrainJob(RunSpec("501", "3d_fullres", "0"), TrainingOptions())
    states = {
        "15": (waiting.FAILED, "COMPLETED, ended without a result"),
        "16": (waiting.FINISHED, "COMPLETED"),
    }
    monkeypatch.setattr(waiting, "run_folder", lambda train_job: folder)
    monkeypatch.setattr(waiting, "job_state", lambda submitted, since: states[str(submitted.job_id)])
    submission = launch.Submission((job,), cluster_settings(), "slurm", tmp_path / "logs", "x")
    shown: list[str] = []
    (report,) = waiting.wait([SimpleNamespace(job_id="15")], submission, poll_s=0, echo=shown.append)  # type: ignore[list-item]
    assert (report.job_id, report.state, report.earlier_jobs) == ("16", waiting.FINISHED, ("15",))
    assert "resubmitted after job 15" in waiting.describe_report(report)
    assert any("following its new job 16" in line for line in shown)


def cluster_settings() -> Any:
    from nnslurm.core.cluster import ClusterSettings

    return ClusterSettings()


def test_the_resubmission_waits_for_the_old_job_and_keeps_the_settings(tmp_path: Path) -> None:
    from nnslurm.core.cluster import ClusterSettings

    jobs = tuple(TrainJob(RunSpec("501", "3d_fullres", fold), TrainingOptions()) for fold in ("0", "1"))
    submission = launch.Submission(jobs, ClusterSettings(partition="cancel"), "slurm", tmp_path, "x")
    again = launch.single(submission, jobs[1])
    assert again.jobs == (jobs[1],) and again.cluster == submission.cluster and again.log_dir == tmp_path
    params = launch.slurm_parameters(again, {}, dependency="afterany:14_1")
    script = launch.submitit_sbatch_text("python -m x", again.folder, None, params)
    assert "#SBATCH --dependency=afterany:14_1" in script and "#SBATCH --partition=cancel" in script
    assert "#SBATCH --requeue" in script and "--array" not in script  # one job, not the array again
    assert "--dependency" not in launch.render_sbatch(submission, {})  # a first submission waits for nothing


def test_a_chain_stage_resubmits_itself_with_its_own_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage job (find best, predict, preprocess) preempted where SLURM will not requeue it: a
    new submitit job of the same callable (its pickle under the new id), not `sbatch` of its
    script, which would run `submitit.core._submit` for a job id with no pickle."""
    from nnslurm.core.cluster import ClusterSettings
    from nnslurm.core.config import StageSettings
    from nnslurm.workflow.find_best import FindBestJob, FindBestSpec, TrainedModel

    queued: list[Any] = []
    fake = SimpleNamespace(submit=lambda job: queued.append(job) or SimpleNamespace(job_id="21"))
    monkeypatch.setattr(launch, "make_executor", lambda submission, dependency=None: fake)
    jobs = (TrainJob(RunSpec("501", "3d_fullres", "0"), TrainingOptions()),)
    submission = launch.Submission(jobs, ClusterSettings(partition="cancel"), "slurm", tmp_path, "x")
    stage = FindBestJob(
        FindBestSpec("501", (TrainedModel("3d_fullres", "nnUNetTrainer", "nnUNetPlans"),), (0,)),
        StageSettings(),
    )
    launch.submit_stage(stage, submission, "x-find-best", "afterok:20")
    assert queued == [stage] and stage.again is not None
    again = stage.again
    assert isinstance(again, launch.Submission)
    assert (again.job_name, again.cluster, again.log_dir) == ("x-find-best", submission.cluster, tmp_path)
    resubmitted: list[tuple[Any, str]] = []
    monkeypatch.setattr(
        launch.Submission,
        "submit_again",
        lambda self, job, old: resubmitted.append((job, old)) or ResubmittedJob("22", "/logs/22"),
    )
    assert stage._resubmit("21") == ResubmittedJob("22", "/logs/22") and resubmitted == [(stage, "21")]
