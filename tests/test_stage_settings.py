"""--max-requeues, --stop-deadline and --stop-signals reach every stage of a chain, not only its
trainings: in the dry run, in each stage's pickled job, and in a real preprocess stage that stops."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import NnunetEnv, Output, read_events, wait_for

from nnslurm import cli
from nnslurm.commands.options import training_jobs_from_args
from nnslurm.commands.submit import workflow_from_args
from nnslurm.core.config import StageSettings
from nnslurm.workflow.chain import LocalChain, stage_job
from nnslurm.workflow.plan import StageKind, WorkflowSpec, plan_stages

FLAGS = ["--max-requeues", "3", "--stop-deadline", "7", "--stop-signals", "USR2,INT", "--signal", "USR2"]
ASKED = StageSettings(stop_signals=("USR2", "INT"), stop_deadline_s=7.0, max_requeues=3)


def chain_args(tmp_path: Path, *flags: str) -> list[str]:
    (tmp_path / "in").mkdir(exist_ok=True)
    args = ["submit", "-d", "501", "-f", "0", "-f", "1", "-c", "2d", "--npz", "--preprocess"]
    return [*args, "--predict", str(tmp_path / "in"), str(tmp_path / "out"), *flags]


def workflow(argv: list[str]) -> WorkflowSpec:
    args = cli.build_parser().parse_args(argv)
    return workflow_from_args(args, training_jobs_from_args(args))


def dry_run(argv: list[str], tmp_path: Path) -> dict[str, str]:
    """Each stage's "stops on ..." line of `submit --dry-run`, by stage."""
    env = dict(os.environ, nnUNet_results=str(tmp_path / "results"), nnUNet_raw=str(tmp_path / "raw"))
    env["nnUNet_preprocessed"] = str(tmp_path / "preprocessed")
    result = subprocess.run(
        [sys.executable, "-m", "nnslurm", *argv, "--executor", "slurm", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stages = ("preprocess", "train 2d", "find best", "predict")
    starts = {
        stage: next(i for i, line in enumerate(lines) if line.startswith(f"# {stage} ")) for stage in stages
    }
    return {stage: lines[start + 2].lstrip("# ") for stage, start in starts.items()}


def test_the_dry_run_shows_the_stop_flags_at_every_stage(tmp_path: Path) -> None:
    shown = dry_run(chain_args(tmp_path, *FLAGS), tmp_path)
    assert shown == {
        "preprocess": "stops on USR2,INT at the next unit (deadline 7 s), requeues itself at most 3 times",
        "train 2d": "stops on USR2,INT at the next iteration (deadline 7 s), requeues itself at most 3 times",
        "find best": "stops on USR2,INT at the next unit (deadline 7 s), requeues itself at most 3 times",
        "predict": "stops on USR2,INT at the next unit (deadline 7 s), requeues itself at most 3 times",
    }
    # Without the flags: each its default (a stage's unit may take longer than an iteration).
    default = dry_run(chain_args(tmp_path), tmp_path)
    assert default["train 2d"].endswith("(deadline 20 s), requeues itself at most 20 times")
    for stage in ("preprocess", "find best", "predict"):
        assert default[stage] == (
            "stops on USR1,USR2,TERM at the next unit (deadline 60 s), requeues itself at most 20 times"
        )


def test_every_stage_job_is_pickled_with_the_stop_flags(tmp_path: Path) -> None:
    spec = workflow(chain_args(tmp_path, *FLAGS))
    assert spec.stage_settings == ASKED
    stages = plan_stages(spec)
    assert [stage.kind for stage in stages] == [
        StageKind.PREPROCESS,
        StageKind.TRAIN,
        StageKind.FIND_BEST,
        StageKind.PREDICT,
    ]
    for stage in stages:
        if stage.kind == StageKind.TRAIN:  # each training task: its TrainingOptions
            for job in stage.jobs:
                options = job.options
                assert (options.stop_signals, options.stop_deadline_s, options.max_requeues) == (
                    ("USR2", "INT"),
                    7.0,
                    3,
                )
        else:  # what submitit pickles and the job unpickles
            assert pickle.loads(pickle.dumps(stage_job(stage, spec))).settings == ASKED, stage.name
    # The local executor runs the chain as one job: it carries the same settings to its stages.
    local = pickle.loads(pickle.dumps(LocalChain(stages, spec)))
    assert [stage_job(stage, local.spec).settings for stage in stages if stage.kind != StageKind.TRAIN] == [
        ASKED
    ] * 3
    # --stop-deadline not given: training's 20 s for the trainings, a unit's 60 s for the stages
    plain = workflow(chain_args(tmp_path, "--max-requeues", "3"))
    assert plain.stage_settings == StageSettings(max_requeues=3)
    assert plain.jobs[0].options.stop_deadline_s == 20.0


def test_bad_stop_flags_are_refused_for_the_stages_too(tmp_path: Path) -> None:
    from nnslurm.commands.options import stage_settings_from_args
    from nnslurm.core.errors import UsageError

    for flags, message in (
        (["--max-requeues", "-1"], "--max-requeues"),
        (["--stop-deadline", "0"], "--stop-deadline"),
    ):
        args = cli.build_parser().parse_args(chain_args(tmp_path, *flags))
        with pytest.raises(UsageError, match=message):
            stage_settings_from_args(args)


@pytest.mark.nnunet
def test_a_preprocess_stage_stops_on_the_signals_and_caps_as_the_command_line_said(
    nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """The chain's preprocess job, as submitit's local executor would start it: SIGINT (not a stop
    signal by default: it would be a KeyboardInterrupt) stops it between units, and --max-requeues 0
    (by default it would requeue itself: exit 144) leaves it without a requeue."""
    argv = chain_args(tmp_path, "-c", "3d_fullres", "--max-requeues", "0", "--stop-signals", "INT,TERM")
    spec = workflow(argv)
    preprocess = next(stage for stage in plan_stages(spec) if stage.kind == StageKind.PREPROCESS)
    pickled = tmp_path / "preprocess.pkl"
    pickled.write_bytes(pickle.dumps(stage_job(preprocess, spec)))
    preprocessed = tmp_path / "preprocessed"
    env = nnunet_env.env(nnUNet_preprocessed=str(preprocessed))
    # what submitit's local executor sets in its job (submitit/local/local.py)
    env.update(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="4242", SUBMITIT_FOLDER=str(tmp_path / "%j"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())()",
            str(pickled),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    log = Output(process.stderr)
    wait_for(
        lambda: "unit fingerprint" in log.text or process.poll() is not None, 300, "the fingerprint unit"
    )
    process.send_signal(signal.SIGINT)
    status = process.wait(timeout=300)
    text = log.rest()
    assert (preprocessed / "Dataset501_Synthetic" / ".nnslurm").is_dir(), text[-3000:]
    events = read_events(preprocessed / "Dataset501_Synthetic" / ".nnslurm" / "preprocess")
    kinds = [event["event"] for event in events]
    stopped = next(event for event in events if event["event"] == "stopped")
    assert (stopped["signal"], stopped["done"]) == ("INT", 1), text[-3000:]
    decision = next(event for event in events if event["event"] == "decision")
    assert (decision["job_id"], decision["requeues_left"]) == ("local-4242", 0), decision
    assert decision["kind"] == "requeue-limit", decision
    assert "requeued" not in kinds and "failed" not in kinds, kinds
    assert status not in (0, 144), text[-3000:]
