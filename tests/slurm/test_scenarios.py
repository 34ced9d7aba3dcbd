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
from support import NnunetEnv, nnslurm, patience, wait_for

from .tools import (
    EPOCHS,
    ITERATIONS,
    LONG_EPOCHS,
    LONG_ITERATIONS,
    TRAINER,
    Background,
    Cluster,
    check_story,
    config_value,
    events,
    job_env,
    kinds,
    paced_training,
    render_template,
    report,
    sh,
    submit_args,
    wait_for_event,
)


def training(epochs: int, iterations: int, fold: str = "0") -> list[str]:
    # These scenarios test the warning signal, preemption and requeue paths under 1-minute limits;
    # the end-time rule (tests/slurm/test_end_time.py) would stop first there.
    return [*paced_training(epochs, iterations, fold), "--no-end-time-stop"]


def signal_lead_times(run_folder: Path) -> list[float]:
    return [d["time_left_s"] for d in kinds(run_folder, "decision") if d.get("time_left_s") is not None]


# --- 1. walltime ---------------------------------------------------------------------------------


def test_walltime_requeue_through_submit_and_template(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """Two 1-CPU jobs side by side on the node, each stopped by its 1-minute limit's warning and
    requeued by nnslurm until it finished: fold 0 through `nnslurm submit` (submitit, USR1 to the
    srun step), fold 1 through the sbatch template (`--signal=B:USR1` + exec: the signal reaches Python)."""
    started = time.time()
    env = job_env(nnunet_env)
    limits = ["--time", "1", "--signal-delay", "20", "--cpus-per-task", "1"]
    submitted = nnunet_env.run_folder(TRAINER, fold="0")
    args = submit_args(tmp_path / "logs", *training(LONG_EPOCHS, LONG_ITERATIONS, "0"), *limits)
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(submitted, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    templated = nnunet_env.run_folder(TRAINER, fold="1")
    script = render_template(env, tmp_path, *training(LONG_EPOCHS, LONG_ITERATIONS, "1"), *limits)
    template_job = idle_cluster.sbatch(script, cwd=tmp_path)

    wait_for(lambda: _ended(waiting), patience(400), "the submitted job to end")
    code, output = waiting.finish(60)
    assert code == 0, output
    assert f"job {job_id} (3d_fullres fold 0): finished [COMPLETED]" in output
    story = check_story(submitted, LONG_ITERATIONS, LONG_EPOCHS)
    decisions = kinds(submitted, "decision")
    assert story["stops"] >= 1 and {d["kind"] for d in decisions} == {"walltime"}
    requeued = kinds(submitted, "requeued")
    assert [r["by"] for r in requeued] == ["nnslurm"] * story["stops"]
    # SLURM's own count agrees with the event log: one requeue per stop.
    assert idle_cluster.ended_states(job_id).count("REQUEUED") == story["stops"]
    assert kinds(submitted, "finished")[0].get("restart_count") == story["stops"]

    assert idle_cluster.wait_done(template_job, 400) == "COMPLETED"
    template_story = check_story(templated, LONG_ITERATIONS, LONG_EPOCHS)
    assert template_story["stops"] >= 1
    assert {d["kind"] for d in kinds(templated, "decision")} == {"walltime"}
    assert idle_cluster.states(template_job).count("REQUEUED") == template_story["stops"]
    # B: reached Python: each stop was the warning, or the end-time rule after the warning came
    # with time to spare (a hint: nnslurm.training.stop_margin), and then the stop names it.
    warned = [r.get("after_signal", r["signal"]) for r in kinds(templated, "signal")]
    assert warned == ["USR1"] * template_story["stops"], kinds(templated, "signal")
    hints = [r for r in kinds(submitted, "signal") + kinds(templated, "signal") if "after_signal" in r]
    report(
        "walltime/submit + template",
        started,
        stops=(story["stops"], template_story["stops"]),
        redone=(story["redone"], template_story["redone"]),
        signal_lead_s=(signal_lead_times(submitted), signal_lead_times(templated)),
        warnings_taken_as_hints=len(hints),
    )


def _ended(waiting: Background) -> bool:
    return waiting.process.poll() is not None


# --- 2. preemption -------------------------------------------------------------------------------


def test_preemption_without_user_signal_through_submit_and_template(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """One `high` job preempts two 1-CPU `low` jobs at once (no preempt_send_user_signal).
    Fold 0 through `nnslurm submit`: TERM reaches the srun step at once, nnslurm stops and leaves
    the requeue to SLURM. Fold 1 through the template (B: + exec): nothing arrives until the grace
    time ends, then TERM with the job already requeued (Restarts+1); KillWait is the time left to
    checkpoint."""
    started = time.time()
    env = job_env(nnunet_env)
    one_cpu = ["--time", "10", "--cpus-per-task", "1"]
    submitted = nnunet_env.run_folder(TRAINER, fold="0")
    args = submit_args(tmp_path / "logs", *training(EPOCHS, ITERATIONS, "0"), *one_cpu)
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(submitted, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    templated = nnunet_env.run_folder(TRAINER, fold="1")
    template_job = idle_cluster.sbatch(
        render_template(env, tmp_path, *training(EPOCHS, ITERATIONS, "1"), *one_cpu), cwd=tmp_path
    )
    for folder in (submitted, templated):
        wait_for_event(folder, "checkpoint", 300, reason="periodic")  # training, past epoch 0
    preempted_at = time.time()
    idle_cluster.preempt()  # every CPU of the node: both jobs must go
    stop = wait_for_event(submitted, "stopped", 60)
    code, output = waiting.finish(300)
    assert code == 0, output
    story = check_story(submitted, ITERATIONS, EPOCHS)
    assert story["stops"] == 1
    (decision,) = kinds(submitted, "decision")
    assert decision["kind"] == "preemption" and decision["requeue_self"] is False
    assert decision["signal"] == "TERM" and decision["preempt_time"]
    (requeued,) = kinds(submitted, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("slurm", "preemption")  # nnslurm did not requeue
    # SLURM requeued it exactly once: one PREEMPTED record, the last start has SLURM_RESTART_COUNT=1.
    assert idle_cluster.ended_states(job_id) == ["PREEMPTED", "COMPLETED"]
    assert kinds(submitted, "resumed")[0]["restart_count"] == 1

    assert idle_cluster.wait_done(template_job, 300) == "COMPLETED"
    template_story = check_story(templated, ITERATIONS, EPOCHS)
    assert template_story["stops"] == 1
    (template_decision,) = kinds(templated, "decision")
    assert template_decision["kind"] in ("requeued", "preemption")
    assert template_decision["requeue_self"] is False
    assert idle_cluster.states(template_job) == ["PREEMPTED", "COMPLETED"]
    report(
        "preemption/submit (TERM) + template",
        started,
        redone=(story["redone"], template_story["redone"]),
        stop_after_preemption_s=round(stop["time"] - preempted_at, 1),
        waited_for_requeue_s=requeued.get("waited_s"),
        template_decision=template_decision["kind"],
    )


@pytest.mark.usefixtures("user_signal_preemption", "no_job_requeue")
def test_preemption_with_user_signal_where_jobs_are_not_requeued_by_default(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """preempt_send_user_signal on, and JobRequeue=0 as on sites whose jobs SLURM requeues only
    when they ask: USR1 reaches the step at once, nnslurm stops, and SLURM requeues the job because
    nnslurm asked (`--requeue`)."""
    started = time.time()
    assert config_value("JobRequeue") == "0"
    run_folder = nnunet_env.run_folder(TRAINER)
    args = submit_args(
        tmp_path / "logs", *training(EPOCHS, ITERATIONS), "--time", "10", "--cpus-per-task", "1"
    )
    waiting = Background.start(args, job_env(nnunet_env), tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    assert " Requeue=1 " in sh(["scontrol", "show", "job", "-o", job_id])  # asked for, site default 0
    wait_for_event(run_folder, "checkpoint", 300, reason="periodic")  # training, past epoch 0
    preempted_at = time.time()
    idle_cluster.preempt()
    stop = wait_for_event(run_folder, "stopped", 60)
    code, output = waiting.finish(300)
    assert code == 0, output
    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert story["stops"] == 1
    (decision,) = kinds(run_folder, "decision")
    assert decision["kind"] == "preemption" and decision["requeue_self"] is False
    assert decision["signal"] == "USR1" and decision["preempt_time"]
    (requeued,) = kinds(run_folder, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("slurm", "preemption")  # nnslurm did not requeue
    assert idle_cluster.ended_states(job_id) == ["PREEMPTED", "COMPLETED"]
    assert kinds(run_folder, "resumed")[0]["restart_count"] == 1
    report(
        "preemption/submit (USR1, JobRequeue=0)",
        started,
        redone=story["redone"],
        stop_after_preemption_s=round(stop["time"] - preempted_at, 1),
        waited_for_requeue_s=requeued.get("waited_s"),
    )


# --- 3. scontrol requeue from outside, and 4. scancel ------------------------------------------------


def test_requeue_from_outside_and_scancel(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """Two 1-CPU jobs side by side. Fold 0 is requeued from outside (`scontrol requeue`): nnslurm
    leaves it to SLURM and it finishes. Fold 1 is cancelled (`scancel`): it stays cancelled, no
    result, and a plain `nnslurm train` later resumes it where it stopped."""
    started = time.time()
    env = job_env(nnunet_env)
    one_cpu = ["--time", "10", "--cpus-per-task", "1"]
    requeued_folder = nnunet_env.run_folder(TRAINER, fold="0")
    cancelled_folder = nnunet_env.run_folder(TRAINER, fold="1")
    waiting = Background.start(
        submit_args(tmp_path / "logs-requeue", *training(EPOCHS, ITERATIONS, "0"), *one_cpu),
        env,
        tmp_path / "requeue.out",
    )
    cancel_waiting = Background.start(
        submit_args(tmp_path / "logs-cancel", *training(EPOCHS, ITERATIONS, "1"), *one_cpu),
        env,
        tmp_path / "cancel.out",
    )
    job_id = wait_for_event(requeued_folder, "submitted", 60)["job_id"]
    cancel_id = wait_for_event(cancelled_folder, "submitted", 60)["job_id"]
    idle_cluster.own.update((job_id, cancel_id))
    wait_for_event(requeued_folder, "checkpoint", 300, reason="periodic")
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    wait_for_event(cancelled_folder, "checkpoint", 300, reason="periodic")
    subprocess.run(["scancel", cancel_id], check=True, timeout=30)

    code, output = cancel_waiting.finish(120)
    assert code == 1, output
    assert f"job {cancel_id} (3d_fullres fold 1): cancelled [CANCELLED" in output
    (cancel_decision,) = kinds(cancelled_folder, "decision")
    assert (cancel_decision["kind"], cancel_decision["requeue_self"]) == ("cancel", False)
    # Not requeued: once SLURM holds the job no more (not pending, running or ending), nothing
    # can bring it back; a wrongly requeued job would be PENDING and fail this wait.
    idle_cluster.wait_gone(cancel_id, 60)
    assert idle_cluster.ended_states(cancel_id) == ["CANCELLED"]
    assert not kinds(cancelled_folder, "requeued")
    stop = kinds(cancelled_folder, "stopped")[0]
    job: submitit.SlurmJob[object] = submitit.SlurmJob(
        folder=tmp_path / "logs-cancel" / "%j", job_id=cancel_id
    )
    assert job.state.startswith("CANCELLED")
    assert isinstance(job.exception(), submitit.core.utils.UncompletedJobError)  # no result: it never ended

    # Resumable later, where it stopped: plain `nnslurm train` here finishes it (fold 0 runs on).
    # Beside fold 0's job and the rest of the suite: measured 300 s on a loaded machine (CI).
    resumed = nnslurm(["train", *training(EPOCHS, ITERATIONS, "1")], env, timeout=patience(400))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cancel_story = check_story(cancelled_folder, ITERATIONS, EPOCHS)
    assert kinds(cancelled_folder, "resumed")[0]["epoch"] == stop["epoch"]

    wait_for(lambda: _ended(waiting), patience(300), "the requeued job to end")
    code, output = waiting.finish(60)
    assert code == 0, output
    story = check_story(requeued_folder, ITERATIONS, EPOCHS)
    (decision,) = kinds(requeued_folder, "decision")
    assert (decision["kind"], decision["requeue_self"], decision["signal"]) == ("requeued", False, "TERM")
    assert idle_cluster.ended_states(job_id) == ["REQUEUED", "COMPLETED"]  # one requeue: the one from outside

    report(
        "requeue from outside + scancel",
        started,
        redone=(story["redone"], cancel_story["redone"]),
        stopped_at=(stop["epoch"], stop["iteration"]),
    )


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
    # The second start too must reach its limit's warning: paced as the first.
    waiting = Background.start(args, job_env(nnunet_env, pace_later_starts=True), tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for(lambda: _ended(waiting), patience(300), "the job to end")
    code, output = waiting.finish(60)
    assert code == 1, output
    assert "failed [" in output
    decisions = [d["kind"] for d in kinds(run_folder, "decision")]
    assert decisions == ["walltime", "requeue-limit"]
    assert idle_cluster.ended_states(job_id) == ["REQUEUED", "FAILED"]
    job: submitit.SlurmJob[object] = submitit.SlurmJob(folder=tmp_path / "logs" / "%j", job_id=job_id)
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
