"""The workflow chain without a cluster: which stages, in which order, waiting for what
(nnslurm.workflow.plan), what `--dry-run` prints, and how `status` and `cancel --chain` read a
chain's record against the scheduler's answers (faked at the subprocess seam)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import FakeCluster

from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.core.errors import UsageError
from nnslurm.runs.chains import After, ChainJob, ChainRecord, find_chain, read_chains
from nnslurm.slurm.commands import SchedulerJob, use_runner
from nnslurm.workflow.chain_status import StageState, chain_status
from nnslurm.workflow.plan import (
    Dependency,
    StageKind,
    WorkflowSpec,
    dependency_expression,
    plan_stages,
    with_cascade_first_stage,
)


def jobs(
    configurations: tuple[str, ...], folds: tuple[str, ...] = ("0", "1", "2", "3", "4")
) -> tuple[TrainJob, ...]:
    options = TrainingOptions(npz=True)
    return tuple(
        TrainJob(RunSpec("501", configuration, fold), options)
        for configuration in configurations
        for fold in folds
    )


def test_the_documented_workflow_in_order_with_its_dependencies() -> None:
    spec = WorkflowSpec(
        jobs=jobs(("2d", "3d_fullres")),
        preprocess=True,
        find_best=True,
        predict_input=Path("/in"),
        predict_output=Path("/out"),
    )
    stages = plan_stages(spec)
    assert [(stage.name, stage.kind) for stage in stages] == [
        ("preprocess", StageKind.PREPROCESS),
        ("train 2d", StageKind.TRAIN),
        ("train 3d_fullres", StageKind.TRAIN),
        ("find best", StageKind.FIND_BEST),
        ("predict", StageKind.PREDICT),
    ]
    assert [stage.gpu for stage in stages] == [False, True, True, False, True]
    assert [job.run.fold for job in stages[1].jobs] == ["0", "1", "2", "3", "4"]
    ids = {"preprocess": "10", "train 2d": "11", "train 3d_fullres": "12", "find best": "13"}
    tasks = {"preprocess": 1, "train 2d": 5, "train 3d_fullres": 5, "find best": 1}
    expressions = [dependency_expression(stage, ids, tasks) for stage in stages]
    assert expressions == [None, "afterok:10", "afterok:10", "afterok:11:12", "afterok:13"]


def test_the_cascade_waits_fold_by_fold_for_3d_lowres_which_is_added_when_missing() -> None:
    asked = jobs(("3d_cascade_fullres",), ("0", "1"))
    completed, added = with_cascade_first_stage(asked)
    assert added
    assert [(job.run.configuration, job.run.fold) for job in completed] == [
        ("3d_lowres", "0"),
        ("3d_lowres", "1"),
        ("3d_cascade_fullres", "0"),
        ("3d_cascade_fullres", "1"),
    ]
    assert completed[0].options == asked[0].options  # --npz and the rest carried over
    stages = plan_stages(WorkflowSpec(jobs=completed, find_best=True))
    cascade = stages[1]
    assert cascade.name == "train 3d_cascade_fullres"
    assert cascade.after == (Dependency("train 3d_lowres", After.CORRESPONDING),)
    ids, tasks = {"train 3d_lowres": "20"}, {"train 3d_lowres": 2}
    assert dependency_expression(cascade, ids, tasks) == "aftercorr:20"
    # one fold: two single jobs, no arrays to correspond: afterok
    single = plan_stages(
        WorkflowSpec(jobs=with_cascade_first_stage(jobs(("3d_cascade_fullres",), ("0",)))[0])
    )
    assert dependency_expression(single[1], {"train 3d_lowres": "30"}, {"train 3d_lowres": 1}) == "afterok:30"


def test_cascade_and_lowres_folds_must_match() -> None:
    mixed = jobs(("3d_lowres",), ("0",)) + jobs(("3d_cascade_fullres",), ("0", "1"))
    with pytest.raises(UsageError, match="folds"):
        plan_stages(WorkflowSpec(jobs=mixed, find_best=True))


def test_find_best_needs_cross_validation_folds() -> None:
    with pytest.raises(UsageError, match="fold 'all'"):
        plan_stages(WorkflowSpec(jobs=jobs(("2d",), ("all",)), find_best=True))


def test_predict_implies_find_best() -> None:
    spec = WorkflowSpec(jobs=jobs(("2d",)), predict_input=Path("/in"), predict_output=Path("/out"))
    assert [stage.name for stage in plan_stages(spec)] == ["train 2d", "find best", "predict"]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nnslurm", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_dry_run_prints_every_job_with_its_dependencies(tmp_path: Path, clean_env: None) -> None:
    import os

    env = dict(os.environ, nnUNet_results=str(tmp_path / "results"), nnUNet_raw=str(tmp_path / "raw"))
    env["nnUNet_preprocessed"] = str(tmp_path / "preprocessed")
    (tmp_path / "in").mkdir()
    args = ["submit", "-d", "501", "--cross-validation", "-c", "3d_cascade_fullres", "--npz", "--preprocess"]
    args += ["--predict", str(tmp_path / "in"), str(tmp_path / "out"), "--executor", "slurm", "--dry-run"]
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "a chain of 5 job(s); nothing is submitted" in out
    for stage, waits in [
        ("preprocess", "-"),
        ("train 3d_lowres", "afterok:<preprocess>"),
        ("train 3d_cascade_fullres", "afterok:<preprocess>,aftercorr:<train-3d_lowres>"),
        ("find best", "afterok:<train-3d_lowres>:<train-3d_cascade_fullres>"),
        ("predict", "afterok:<find-best>"),
    ]:
        assert any(
            line.startswith(f"# {stage} ") and line.endswith(f"waits for: {waits}")
            for line in out.splitlines()
        )
    scripts = out.split("\n# --- ")[1:]
    assert [script.split(" ---")[0] for script in scripts] == [
        "preprocess",
        "train 3d_lowres",
        "train 3d_cascade_fullres",
        "find best",
        "predict",
    ]
    for script in scripts[1:]:  # every job that waits is cancelled when its dependency fails
        assert "#SBATCH --kill-on-invalid-dep=yes" in script and "#SBATCH --dependency=" in script
    assert "--kill-on-invalid-dep" not in scripts[0] and "--dependency" not in scripts[0]
    assert "#SBATCH --array=0-4" in scripts[1] and "--array" not in scripts[3]
    assert "3d_lowres's predictions" in result.stderr  # the added stage is said
    assert not (tmp_path / "results").exists()  # nothing written


def test_cpu_stages_ask_for_cpus_only_and_keep_every_other_setting(tmp_path: Path, clean_env: None) -> None:
    import os

    env = dict(os.environ, nnUNet_results=str(tmp_path / "results"), nnUNet_raw=str(tmp_path / "raw"))
    env["nnUNet_preprocessed"] = str(tmp_path / "preprocessed")
    args = ["submit", "-d", "501", "--cross-validation", "-c", "2d", "--npz", "--preprocess", "--find-best"]
    args += ["--gpus", "1", "--sbatch-arg", "gres=gpu:a100:1,tmpdisk:100", "--sbatch-arg", "mem-per-gpu=8G"]
    args += [
        "--sbatch-arg",
        "mail-type=END",
        "--account",
        "lab",
        "--cpu-partition",
        "cpu",
        "--partition",
        "a100",
    ]
    result = run_cli([*args, "--executor", "slurm", "--dry-run"], env)
    assert result.returncode == 0, result.stderr
    preprocess, train, find_best = result.stdout.split("\n# --- ")[1:]
    assert "#SBATCH --gpus-per-node=1" in train or "#SBATCH --gpus=1" in train
    assert "#SBATCH --gres=gpu:a100:1,tmpdisk:100" in train and "#SBATCH --mem-per-gpu=8G" in train
    for script in (preprocess, find_best):
        sbatch_lines = [line for line in script.splitlines() if line.startswith("#SBATCH")]
        assert not [line for line in sbatch_lines if "gpu" in line], sbatch_lines
        assert {"#SBATCH --gres=tmpdisk:100", "#SBATCH --mail-type=END", "#SBATCH --partition=cpu"} <= set(
            sbatch_lines
        )
        assert "#SBATCH --account=lab" in sbatch_lines


def test_bad_chain_input_is_refused_before_anything_is_queued(tmp_path: Path, clean_env: None) -> None:
    import os

    env = dict(os.environ, nnUNet_results=str(tmp_path / "results"), nnUNet_raw=str(tmp_path / "raw"))
    missing = run_cli(
        ["submit", "-d", "501", "-f", "0", "--predict", str(tmp_path / "nope"), str(tmp_path / "o")], env
    )
    assert (
        missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    )
    stray = run_cli(["submit", "-d", "501", "-f", "0", "--cpu-partition", "cpu", "--dry-run"], env)
    assert stray.returncode == 2 and "--cpu-partition is for the CPU jobs" in stray.stderr


# --- a chain's record against the scheduler's answers -------------------------------------------------


def record(tmp_path: Path) -> ChainRecord:
    return ChainRecord(
        chain_id="40",
        dataset="501",
        executor="slurm",
        created=1.0,
        jobs=(
            ChainJob(
                "train 2d",
                "train",
                "40",
                ("40_0", "40_1"),
                None,
                (str(tmp_path / "f0"), str(tmp_path / "f1")),
            ),
            ChainJob("find best", "find best", "41", ("41",), "afterok:40"),
            ChainJob("predict", "predict", "42", ("42",), "afterok:41"),
        ),
    )


def answers(states: dict[str, tuple[str, str]]) -> object:
    def scheduler(ids: object) -> dict[str, SchedulerJob]:
        return {job: SchedulerJob(job, state, reason, "squeue") for job, (state, reason) in states.items()}

    return scheduler


def test_status_says_which_stage_failed_and_that_its_dependants_were_cancelled(tmp_path: Path) -> None:
    scheduler = answers(
        {
            "40_0": ("COMPLETED", ""),
            "40_1": ("FAILED", ""),
            "41": ("CANCELLED", ""),
            "42": ("CANCELLED", ""),
        }
    )
    rows = chain_status(record(tmp_path), scheduler)  # type: ignore[arg-type]
    assert [row.state for row in rows] == [StageState.FAILED, StageState.CANCELLED, StageState.CANCELLED]
    assert rows[0].detail == "40_1: FAILED"
    assert rows[1].detail.startswith("cancelled by SLURM: train 2d failed")
    assert rows[2].detail.startswith("cancelled by SLURM: find best failed")


def test_status_of_a_chain_in_flight(tmp_path: Path) -> None:
    scheduler = answers(
        {
            "40_0": ("COMPLETED", ""),
            "40_1": ("RUNNING", "None"),
            "41": ("PENDING", "Dependency"),
            "42": ("PENDING", "Dependency"),
        }
    )
    rows = chain_status(record(tmp_path), scheduler)  # type: ignore[arg-type]
    assert [row.state for row in rows] == [StageState.RUNNING, StageState.WAITING, StageState.WAITING]
    assert rows[0].detail == "1/2 task(s) finished" and rows[1].detail == "waiting for train 2d (to succeed)"


def test_a_resubmitted_training_task_is_followed_to_its_new_job(tmp_path: Path) -> None:
    folder = tmp_path / "f1"
    folder.mkdir()
    line = {"event": "resubmitted", "time": 2.0, "old_job_id": "40_1", "job_id": "57"}
    (folder / "nnslurm_events.jsonl").write_text(json.dumps(line) + "\n")
    scheduler = answers({"40_0": ("COMPLETED", ""), "40_1": ("PREEMPTED", ""), "57": ("RUNNING", "None")})
    rows = chain_status(record(tmp_path), scheduler)  # type: ignore[arg-type]
    assert rows[0].state == StageState.RUNNING and rows[0].tasks["40_1"] == "RUNNING"


def test_a_resubmitted_task_waiting_for_its_old_job_says_so(tmp_path: Path) -> None:
    """The new job waits (afterany) for the old one to end; a training stage has no dependency of
    its own, so the words must come from the resubmission (seen on real SLURM: an empty name)."""
    folder = tmp_path / "f1"
    folder.mkdir()
    line = {"event": "resubmitted", "time": 2.0, "old_job_id": "40_1", "job_id": "57"}
    (folder / "nnslurm_events.jsonl").write_text(json.dumps(line) + "\n")
    scheduler = answers({"40_0": ("COMPLETED", ""), "57": ("PENDING", "Dependency")})
    rows = chain_status(record(tmp_path), scheduler)  # type: ignore[arg-type]
    assert rows[0].state == StageState.WAITING
    assert rows[0].detail == "waiting for job 40_1 to end (resubmitted as 57)"


def test_cancel_chain_cancels_every_job_not_ended_last_stage_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnslurm.cli import main
    from nnslurm.runs.chains import CHAINS_FOLDER

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    chains = tmp_path / CHAINS_FOLDER
    chains.mkdir(parents=True)
    (chains / "40.json").write_text(json.dumps(record(tmp_path).to_json()))
    assert find_chain("41") is not None and read_chains()[0].chain_id == "40"
    squeue = "40_0|RUNNING|None\n40_1|RUNNING|None\n41|PENDING|Dependency\n42|PENDING|Dependency\n"
    cluster = FakeCluster.queue(squeue=squeue)
    with use_runner(cluster):
        assert main(["cancel", "--chain", "40_1"]) == 0
    assert [call[1] for call in cluster.ran("scancel")] == ["42", "41", "40"]
    cancels = [
        json.loads(line) for line in (tmp_path / "f0" / "nnslurm_events.jsonl").read_text().splitlines()
    ]
    assert cancels[-1]["event"] == "cancel_requested" and cancels[-1]["job_id"] == "40"
    with use_runner(FakeCluster.queue(sacct="40_0|COMPLETED\n40_1|COMPLETED\n41|COMPLETED\n42|COMPLETED\n")):
        assert main(["cancel", "--chain", "40"]) == 1  # nothing left to cancel
    assert main(["cancel", "--chain", "99"]) == 1
    assert main(["cancel"]) == 2


# --- a resubmitted training task does not strand its dependants --------------------------------------


def cascade_chain(tmp_path: Path) -> ChainRecord:
    return ChainRecord(
        chain_id="60",
        dataset="501",
        executor="slurm",
        created=1.0,
        jobs=(
            ChainJob("train 3d_lowres", "train", "60", ("60_0", "60_1", "60_2"), None),
            ChainJob("train 3d_cascade_fullres", "train", "61", ("61_0", "61_1", "61_2"), "aftercorr:60"),
            ChainJob("find best", "find best", "62", ("62",), "afterok:60:61"),
        ),
    )


def test_dependants_of_a_resubmitted_task_wait_for_its_new_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnslurm.runs.chains import CHAINS_FOLDER
    from nnslurm.scheduler.redirect import redirect_dependants

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    chains = tmp_path / CHAINS_FOLDER
    chains.mkdir(parents=True)
    (chains / "60.json").write_text(json.dumps(cascade_chain(tmp_path).to_json()))
    cluster = FakeCluster()
    with use_runner(cluster):
        done = redirect_dependants("60_1", "70")
    assert sorted(done) == [("61_1", "afterok:70"), ("62", "afterok:61:60_0:60_2:70")]
    updates = [call[2:] for call in cluster.ran("scontrol update")]
    assert sorted(updates) == [
        ["JobId=61_1", "Dependency=afterok:70"],
        ["JobId=62", "Dependency=afterok:61:60_0:60_2:70"],
    ]
    # resubmitted again (preempted again): the newer job replaces the one before it, from the record
    with use_runner(FakeCluster()):
        again = redirect_dependants("70", "71")
    assert sorted(again) == [("61_1", "afterok:71"), ("62", "afterok:61:60_0:60_2:71")]
    (chain,) = read_chains()
    assert chain.jobs[0].resubmitted == {"60_1": ("70", "71")}
    assert find_chain("71") is not None
    # a job of no chain: nothing to do
    with use_runner(FakeCluster()) as _:
        assert redirect_dependants("999", "1000") == []
