"""`nnslurm submit -num_gpus 2 -device cpu` on a real SLURM: the submitit job's process launches two
gloo ranks on its node, a preemption stops both at the same iteration, rank 0 decides in its own
process with the job's after-stop decision, and SLURM's requeue resumes the run exactly."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from support import NnunetEnv, patience, processes_with_marker, wait_for

from .tools import (
    TRAINER,
    Background,
    Cluster,
    check_story,
    job_env,
    kinds,
    paced_training,
    report,
    submit_args,
    wait_for_event,
)

# Epoch 0 (paced: >= 10 s) ends with the periodic checkpoint the preemption waits for; epoch 1 (>= 10 s
# more) is still training when TERM comes (measured: 0.5 s after the preemptor's sbatch). The resumed
# start goes unpaced.
EPOCHS, ITERATIONS = 2, 40


def test_two_ranks_preempted_resume_exactly(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    started = time.time()
    marker = uuid.uuid4().hex  # in every process of the job (sbatch exports the submitting environment)
    env = dict(job_env(nnunet_env), NNSLURM_TEST_MARKER=marker, NNSLURM_NO_PROGRESS="1")
    run_folder = nnunet_env.run_folder(TRAINER)
    training = [*paced_training(EPOCHS, ITERATIONS), "--no-end-time-stop", "-num_gpus", "2"]
    # both CPUs of the node: one torch thread per rank, and the preemptor's job needs them all
    args = submit_args(tmp_path / "logs", *training, "--time", "10", "--cpus-per-task", "2")
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for_event(run_folder, "checkpoint", 180, reason="periodic")  # both ranks past epoch 0
    preempted_at = time.time()
    idle_cluster.preempt()
    stop = wait_for_event(run_folder, "stopped", 60)
    code, output = waiting.finish(300)
    assert code == 0, output

    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert story["stops"] == 1 and story["redone"] == [0], story
    assert len(kinds(run_folder, "stopped")) == 1  # one record of the stop, by rank 0
    assert len([c for c in kinds(run_folder, "checkpoint") if c["reason"] == "stop"]) == 1
    (decision,) = kinds(run_folder, "decision")
    assert decision["kind"] == "preemption" and decision["requeue_self"] is False, decision
    (requeued,) = kinds(run_folder, "requeued")
    assert (requeued["by"], requeued["reason"]) == ("slurm", "preemption")  # nnslurm did not requeue
    assert [s.get("world_size") for s in kinds(run_folder, "started")] == [2, 2]
    assert idle_cluster.ended_states(job_id) == ["PREEMPTED", "COMPLETED"]
    log = (tmp_path / "logs" / job_id / f"{job_id}_0_log.err").read_text()
    assert log.count("launched 2 ranks") == 2
    # neither rank killed by the TERMs that end the grace time (SLURM's own, and forwarded)
    assert "ranks ended: rank 0 exited 75, rank 1 exited 75" in log
    assert "ranks ended: rank 0 exited 0, rank 1 exited 0" in log
    wait_for(lambda: not processes_with_marker(marker), patience(30), "every process of the job to end")
    report(
        "two ranks preempted (submit -num_gpus 2 -device cpu)",
        started,
        redone=story["redone"],
        stopped_at=(stop["epoch"], stop["iteration"]),
        stop_after_preemption_s=round(stop["time"] - preempted_at, 1),
        waited_for_requeue_s=requeued.get("waited_s"),
    )
