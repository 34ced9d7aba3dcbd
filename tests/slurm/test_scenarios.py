"""The acceptance suite on a real SLURM: walltime, preemption, requeue from outside, scancel, the
requeue cap and an array, through `nnslurm submit` (submitit) and the sbatch templates, with the
real nnU-Net tiny training. Each asserts what a user cares about: the final checkpoint, the epoch
reached, at most one iteration redone per interruption, the event log's story, and the state that
`--wait` / `job.result()` report."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import submitit
from conftest import NnunetEnv, nnslurm
from support import wait_for

from .tools import (
    EPOCHS,
    ITERATIONS,
    LONG_EPOCHS,
    LONG_ITERATIONS,
    TRAINER,
    Background,
    Cluster,
    check_story,
    events,
    job_env,
    kinds,
    paced_training,
    patient,
    report,
    submit_args,
    template_setup,
    wait_for_event,
)


def training(epochs: int, iterations: int) -> list[str]:
    # These scenarios test the warning signal, preemption and requeue paths under 1-minute limits;
    # the end-time rule (tests/slurm/test_end_time.py) would stop first there.
    return [*paced_training(epochs, iterations), "--no-end-time-stop"]


def signal_lead_times(run_folder: Path) -> list[float]:
    return [d["time_left_s"] for d in kinds(run_folder, "decision") if d.get("time_left_s") is not None]


# --- 1. walltime ---------------------------------------------------------------------------------


def test_walltime_requeue_through_submit(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    args = submit_args(
        tmp_path / "logs",
        *training(LONG_EPOCHS, LONG_ITERATIONS),
        "--time",
        "1",
        "--signal-delay",
        "20",
    )
    waiting = Background.start(args, job_env(nnunet_env), tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for(lambda: _ended(waiting), patient(400), "the job to end")
    code, output = waiting.finish(60)
    assert code == 0, output
    assert f"job {job_id} (3d_fullres fold 0): finished [COMPLETED]" in output
    story = check_story(run_folder, LONG_ITERATIONS, LONG_EPOCHS)
    decisions = kinds(run_folder, "decision")
    assert story["stops"] >= 1 and {d["kind"] for d in decisions} == {"walltime"}
    requeued = kinds(run_folder, "requeued")
    assert [r["by"] for r in requeued] == ["nnslurm"] * story["stops"]
    # SLURM's own count agrees with the event log: one requeue per stop.
    assert idle_cluster.ended_states(job_id).count("REQUEUED") == story["stops"]
    assert kinds(run_folder, "finished")[0].get("restart_count") == story["stops"]
    report(
        "walltime/submit",
        started,
        stops=story["stops"],
        redone=story["redone"],
        signal_lead_s=signal_lead_times(run_folder),
    )


def _ended(waiting: Background) -> bool:
    return waiting.process.poll() is not None


def test_walltime_requeue_through_template(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    env = job_env(nnunet_env)
    script = tmp_path / "train.sbatch"
    rendered = nnslurm(
        [
            "template",
            "train",
            *training(LONG_EPOCHS, LONG_ITERATIONS),
            "--time",
            "1",
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
    job_id = idle_cluster.sbatch(script, cwd=tmp_path)
    assert idle_cluster.wait_done(job_id, 400) == "COMPLETED"
    story = check_story(run_folder, LONG_ITERATIONS, LONG_EPOCHS)
    assert story["stops"] >= 1
    assert {d["kind"] for d in kinds(run_folder, "decision")} == {"walltime"}
    assert idle_cluster.states(job_id).count("REQUEUED") == story["stops"]
    assert [r["signal"] for r in kinds(run_folder, "stopped")] == ["USR1"] * story[
        "stops"
    ]  # B: reached Python
    report(
        "walltime/template",
        started,
        stops=story["stops"],
        redone=story["redone"],
        signal_lead_s=signal_lead_times(run_folder),
    )


# --- 2. preemption -------------------------------------------------------------------------------


def _preempt_once(cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path, expected_signal: str) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    args = submit_args(
        tmp_path / "logs", *training(EPOCHS, ITERATIONS), "--time", "10", "--cpus-per-task", "1"
    )
    waiting = Background.start(args, job_env(nnunet_env), tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    cluster.own.add(job_id)
    wait_for_event(run_folder, "checkpoint", 300, reason="periodic")  # training, past epoch 0
    preempted_at = time.time()
    cluster.preempt()
    stop = wait_for_event(run_folder, "stopped", 60)
    signal_after = stop["time"] - preempted_at
    code, output = waiting.finish(300)
    assert code == 0, output
    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert story["stops"] == 1
    (decision,) = kinds(run_folder, "decision")
    assert decision["kind"] == "preemption" and decision["requeue_self"] is False
    assert decision["signal"] == expected_signal and decision["preempt_time"]
    (requeued,) = kinds(run_folder, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("slurm", "preemption")  # nnslurm did not requeue
    # SLURM requeued it exactly once: one PREEMPTED record, the last start has SLURM_RESTART_COUNT=1.
    assert cluster.ended_states(job_id) == ["PREEMPTED", "COMPLETED"]
    assert kinds(run_folder, "resumed")[0]["restart_count"] == 1
    report(
        f"preemption/submit ({expected_signal})",
        started,
        redone=story["redone"],
        stop_after_preemption_s=round(signal_after, 1),
        waited_for_requeue_s=requeued.get("waited_s"),
    )


def test_preemption_without_user_signal(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    _preempt_once(idle_cluster, nnunet_env, tmp_path, expected_signal="TERM")


@pytest.mark.usefixtures("user_signal_preemption")
def test_preemption_with_user_signal(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    _preempt_once(idle_cluster, nnunet_env, tmp_path, expected_signal="USR1")


def test_preemption_through_template(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    """B: + exec, no user signal: nothing arrives until the grace time ends, then TERM with the job
    already requeued (Restarts+1); KillWait is the time left to checkpoint."""
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    env = job_env(nnunet_env)
    script = tmp_path / "train.sbatch"
    rendered = nnslurm(
        [
            "template",
            "train",
            *training(EPOCHS, ITERATIONS),
            "--time",
            "10",
            "--cpus-per-task",
            "1",
            "--log-dir",
            str(tmp_path),
            *template_setup(env),
            "-o",
            str(script),
        ],
        env,
    )
    assert rendered.returncode == 0, rendered.stderr
    job_id = idle_cluster.sbatch(script, cwd=tmp_path)
    wait_for_event(run_folder, "checkpoint", 300, reason="periodic")
    idle_cluster.preempt()
    assert idle_cluster.wait_done(job_id, 300) == "COMPLETED"
    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert story["stops"] == 1
    (decision,) = kinds(run_folder, "decision")
    assert decision["kind"] in ("requeued", "preemption") and decision["requeue_self"] is False
    assert idle_cluster.states(job_id) == ["PREEMPTED", "COMPLETED"]
    report("preemption/template", started, redone=story["redone"], decision=decision["kind"])


# --- 3. scontrol requeue from outside ------------------------------------------------------------


def test_requeue_from_outside(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    args = submit_args(tmp_path / "logs", *training(EPOCHS, ITERATIONS), "--time", "10")
    waiting = Background.start(args, job_env(nnunet_env), tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for_event(run_folder, "checkpoint", 300, reason="periodic")
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    wait_for(lambda: _ended(waiting), patient(300), "the job to end")
    code, output = waiting.finish(60)
    assert code == 0, output
    story = check_story(run_folder, ITERATIONS, EPOCHS)
    (decision,) = kinds(run_folder, "decision")
    assert (decision["kind"], decision["requeue_self"], decision["signal"]) == ("requeued", False, "TERM")
    assert idle_cluster.ended_states(job_id) == ["REQUEUED", "COMPLETED"]  # one requeue: the one from outside
    report("requeue from outside", started, redone=story["redone"])


# --- 4. scancel ----------------------------------------------------------------------------------


def test_scancel_stays_cancelled_and_resumable(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    env = job_env(nnunet_env)
    args = submit_args(tmp_path / "logs", *training(EPOCHS, ITERATIONS), "--time", "10")
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for_event(run_folder, "checkpoint", 300, reason="periodic")
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    code, output = waiting.finish(120)
    assert code == 1, output
    assert f"job {job_id} (3d_fullres fold 0): cancelled [CANCELLED" in output
    time.sleep(10)  # a wrongly requeued job would be back by now (cred_expire=5)
    assert idle_cluster.states(job_id) == ["CANCELLED"]
    (decision,) = kinds(run_folder, "decision")
    assert (decision["kind"], decision["requeue_self"]) == ("cancel", False)
    assert not kinds(run_folder, "requeued")
    stop = kinds(run_folder, "stopped")[0]
    job = submitit.SlurmJob(folder=tmp_path / "logs" / "%j", job_id=job_id)
    assert job.state.startswith("CANCELLED")
    assert isinstance(job.exception(), submitit.core.utils.UncompletedJobError)  # no result: it never ended
    # Resumable later, where it stopped: plain `nnslurm train` on this machine finishes it.
    resumed = nnslurm(["train", *training(EPOCHS, ITERATIONS)], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert kinds(run_folder, "resumed")[0]["epoch"] == stop["epoch"]
    report("scancel", started, redone=story["redone"], stopped_at=(stop["epoch"], stop["iteration"]))


# --- 5. the requeue cap --------------------------------------------------------------------------


def test_requeue_cap(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    args = submit_args(
        tmp_path / "logs",
        *training(8, LONG_ITERATIONS),
        "--time",
        "1",
        "--signal-delay",
        "20",
        "--max-requeues",
        "1",
    )
    waiting = Background.start(args, job_env(nnunet_env), tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for(lambda: _ended(waiting), patient(300), "the job to end")
    code, output = waiting.finish(60)
    assert code == 1, output
    assert "failed [" in output
    decisions = [d["kind"] for d in kinds(run_folder, "decision")]
    assert decisions == ["walltime", "requeue-limit"]
    assert idle_cluster.ended_states(job_id) == ["REQUEUED", "FAILED"]
    job = submitit.SlurmJob(folder=tmp_path / "logs" / "%j", job_id=job_id)
    error = job.exception()
    assert error is not None and "RequeueLimitReached" in str(error) and "--max-requeues" in str(error)
    last_stop = kinds(run_folder, "stopped")[-1]
    assert (run_folder / "checkpoint_latest.pth").is_file()  # resumable: the stop's checkpoint
    assert events(run_folder)[-1]["event"] in ("decision", "failed")
    report("requeue cap", started, stopped_at=(last_stop["epoch"], last_stop["iteration"]))


# --- 6. an array of folds, one task preempted ----------------------------------------------------


def test_array_with_one_task_preempted(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    started = time.time()
    folders = [nnunet_env.run_folder(TRAINER, fold=fold) for fold in ("0", "1")]
    run = [arg for arg in training(EPOCHS, ITERATIONS) if arg not in ("-f", "0")]
    # One CPU per task: each trains with 1 torch thread whatever the node's binding (nnslurm.slurm.cpus),
    # so the two tasks do not slow each other down on a 2-CPU node.
    args = submit_args(tmp_path / "logs", *run, "--fold", "0-1", "--time", "10", "--cpus-per-task", "1")
    waiting = Background.start(args, job_env(nnunet_env), tmp_path / "submit.out")
    ids = [wait_for_event(folder, "submitted", 60)["job_id"] for folder in folders]
    assert ids[0].endswith("_0") and ids[1].endswith("_1") and ids[0].split("_")[0] == ids[1].split("_")[0]
    idle_cluster.own.update(ids)
    for folder in folders:
        wait_for_event(folder, "checkpoint", 300, reason="periodic")
    idle_cluster.preempt(cpus=max(1, idle_cluster.cpus - 1))  # more than is free: one task must go
    code, output = waiting.finish(400)
    assert code == 0, output
    preempted = []
    for folder, job_id in zip(folders, ids, strict=True):
        story = check_story(folder, ITERATIONS, EPOCHS)
        decisions = [d["kind"] for d in kinds(folder, "decision")]
        states = idle_cluster.ended_states(job_id)
        if decisions:
            assert decisions == ["preemption"] and states == ["PREEMPTED", "COMPLETED"], (decisions, states)
            preempted.append(job_id)
        else:
            assert story["stops"] == 0 and states == ["COMPLETED"]
    assert len(preempted) == 1, preempted
    report("array, one task preempted", started, preempted=preempted[0])
