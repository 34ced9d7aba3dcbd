"""The end-time rule on a real SLURM: jobs with no warning signal at all (the template with its
`#SBATCH --signal` line removed, as a site's submit plugin or a user's own script would leave it)
stop before their time limit, checkpoint and requeue, with a KillWait too short for a save after
the limit (so the stop must come before it); and a TimeLimit shortened while the job runs is
honoured. Both jobs (one CPU each) run side by side in one test. Prints `[nnslurm scenario]` lines
with the margin (docs/benchmarks.md)."""

from __future__ import annotations

import math
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support import NnunetEnv, nnslurm

from nnslurm.slurm import commands as slurm

from .tools import (
    TRAINER,
    Cluster,
    check_story,
    config_value,
    job_env,
    kinds,
    paced_training,
    report,
    template_setup,
    wait_for_event,
)

SAFETY_S = "15"
# A 1-minute start stops ~16 s before its end (safety + an iteration + a checkpoint) and spends
# ~15 s starting up: under 30 s of training, 120 paced iterations; 200 need at least two starts.
EPOCHS, ITERATIONS = 4, 50


def no_signal_script(tmp_path: Path, env: dict[str, str], minutes: int, *train: str) -> Path:
    """`nnslurm template train` without its warning: no --signal line, no NNSLURM_WARNING_SIGNAL."""
    script = tmp_path / f"train-fold{train[train.index('-f') + 1]}.sbatch"
    rendered = nnslurm(
        [
            "template",
            "train",
            *train,
            "--end-time-safety",
            SAFETY_S,
            "--time",
            str(minutes),
            "--signal-delay",
            "20",
            "--log-dir",
            str(tmp_path),
            *template_setup(env),
            "-o",
            str(script),
        ],
        env,
    )
    assert rendered.returncode == 0, rendered.stderr
    lines = script.read_text().splitlines()
    kept = [
        line for line in lines if not line.startswith(("#SBATCH --signal", "export NNSLURM_WARNING_SIGNAL"))
    ]
    assert len(kept) == len(lines) - 2, "the template's signal lines changed"
    script.write_text("\n".join(kept) + "\n")
    return script


def margins(run_folder: Path) -> dict[str, Any]:
    """How long before the job's end each stop came, and the stop checkpoint's share of it."""
    signals = kinds(run_folder, "signal")
    stopped = kinds(run_folder, "stopped")
    lead = [s["time_left_s"] for s in signals]
    checkpoint = [s["checkpoint_seconds"] for s in stopped]
    return {
        "lead_s": lead,
        "checkpoint_s": checkpoint,
        "checkpoint_share": [
            round(c / max(lead_s, 1e-9), 4) for c, lead_s in zip(checkpoint, lead, strict=False)
        ],
        "left_at_decision_s": [d["time_left_s"] for d in kinds(run_folder, "decision")],
    }


def check_end_time_stops(cluster: Cluster, job_id: str, run_folder: Path) -> dict[str, Any]:
    """Every stop came from the end-time rule, before the limit, and was a walltime self-requeue."""
    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert story["stops"] >= 1
    assert [s["signal"] for s in kinds(run_folder, "stopped")] == ["ENDTIME"] * story["stops"]
    for signal in kinds(run_folder, "signal"):
        assert signal["signal"] == "ENDTIME" and signal["time_left_s"] > 0, signal
    decisions = kinds(run_folder, "decision")
    assert [(d["kind"], d["job_state"]) for d in decisions] == [("walltime", "RUNNING")] * story["stops"]
    for decision in decisions:
        assert decision["reason"].startswith("end-time rule (EndTime "), decision
        assert decision["time_left_s"] > 0, decision  # the decision too came before the limit
    assert [(r["by"], r["reason"]) for r in kinds(run_folder, "requeued")] == [
        ("nnslurm", "walltime")
    ] * story["stops"]
    states = cluster.ended_states(job_id)
    assert states.count("REQUEUED") == story["stops"] and "TIMEOUT" not in states, states
    return story


@pytest.mark.usefixtures("short_kill_wait")
def test_no_signal_jobs_stop_before_their_time_limit(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """Fold 0: a 1-minute job stops before each limit by the end-time rule alone and requeues
    until it finished; its stop's checkpoint is durable before the limit, not in KillWait (2 s).
    Fold 1: 10 minutes at submission, shortened to about a minute from now while training: it stops
    before the new EndTime (re-read every 5 s) and requeues. Then it is cancelled: that is all."""
    started = time.time()
    assert config_value("KillWait") == "2 sec"
    env = job_env(nnunet_env)
    script = no_signal_script(tmp_path, env, 1, *paced_training(EPOCHS, ITERATIONS, "0"))
    job_id = idle_cluster.sbatch(script, cwd=tmp_path)
    run_folder = nnunet_env.run_folder(TRAINER, fold="0")
    shortened = shorten_while_running(idle_cluster, nnunet_env, env, tmp_path)

    assert idle_cluster.wait_done(job_id, 400) == "COMPLETED"
    story = check_end_time_stops(idle_cluster, job_id, run_folder)
    # Before the limit, not in KillWait: the stop's checkpoint was durable with time to spare.
    for stop, signal in zip(kinds(run_folder, "stopped"), kinds(run_folder, "signal"), strict=True):
        assert signal["time_left_s"] - stop["checkpoint_seconds"] > 0
    report(
        "end-time/no signal, KillWait 2",
        started,
        stops=story["stops"],
        redone=story["redone"],
        **margins(run_folder),
    )
    report("end-time/TimeLimit shortened", started, **shortened)


def shorten_while_running(
    cluster: Cluster, nnunet_env: NnunetEnv, env: dict[str, str], tmp_path: Path
) -> dict[str, Any]:
    """Fold 1's job, its TimeLimit shortened once it trains; returns what to report."""
    script = no_signal_script(tmp_path, env, 10, *paced_training(10, 100, "1"), "--end-time-refresh", "5")
    job_id = cluster.sbatch(script, cwd=tmp_path)
    run_folder = nnunet_env.run_folder(TRAINER, fold="1")
    wait_for_event(run_folder, "started", 180)
    info = slurm.job_info(job_id)
    assert info.state == "RUNNING" and info.run_time_s is not None and info.start_time is not None
    minutes = math.ceil((info.run_time_s + 60) / 60)  # >= 60 s from now: room for the rule to act
    slurm.run_command(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"])
    updated_at = time.time()
    new_end = info.start_time.timestamp() + minutes * 60
    assert slurm.job_info(job_id).end_time == datetime.fromtimestamp(new_end)
    requeued = wait_for_event(run_folder, "requeued", minutes * 60 + 30)
    (signal,) = kinds(run_folder, "signal")
    assert signal["signal"] == "ENDTIME" and signal["end_time"] == pytest.approx(new_end)
    assert updated_at < signal["time"] < new_end and signal["time_left_s"] > 0
    (decision,) = kinds(run_folder, "decision")
    assert (decision["kind"], requeued["by"], requeued["reason"]) == ("walltime", "nnslurm", "walltime")
    wait_for_event(run_folder, "resumed", 120)  # the requeued job started again
    subprocess.run(["scancel", job_id], check=False, capture_output=True, timeout=30)
    return {
        "new_limit_min": minutes,
        "stop_after_update_s": round(signal["time"] - updated_at, 1),
        **margins(run_folder),
    }
