"""Several ranks on a real SLURM. `nnslurm submit -num_gpus 2 -device cpu`: the submitit job's process
launches two gloo ranks on its node, a preemption stops both at the same iteration, rank 0 decides in
its own process with the job's after-stop decision, and SLURM's requeue resumes the run exactly.
Two srun tasks each a launcher (the layout of `--nodes 2`): the walltime warning stops both."""

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
    render_template,
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
    assert "Traceback" not in log, log[-3000:]  # multiprocessing's helper never killed by a stop signal
    wait_for(lambda: not processes_with_marker(marker), patience(30), "every process of the job to end")
    report(
        "two ranks preempted (submit -num_gpus 2 -device cpu)",
        started,
        redone=story["redone"],
        stopped_at=(stop["epoch"], stop["iteration"]),
        stop_after_preemption_s=round(stop["time"] - preempted_at, 1),
        waited_for_requeue_s=requeued.get("waited_s"),
    )


# Two launchers of one rank each, as two srun tasks (the layout of `--nodes 2`, on the one node here):
# every start paced and 1 minute long, its warning 20 s before the end (SLURM sends it up to 60 s
# sooner: on a busy machine a start had 15 s); 3 x 60 paced iterations (>= 45 s) outlast a start.
TASKS = 2
WARNED_EPOCHS, WARNED_ITERATIONS = 3, 60


def test_two_srun_tasks_each_a_launcher_stop_on_the_warning_and_resume_exactly(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """The template's script with `srun` as its launch (what `template --nodes M` renders), two tasks
    on this one node: each task launches its rank, places it by SLURM_PROCID (global ranks 0 and 1),
    and both meet at the step's first host on the job's port. The warning (B:USR1) reaches srun,
    which passes it to both tasks; rank 0 decides (walltime: nnslurm requeues), task 1 leaves with 0."""
    started = time.time()
    marker = uuid.uuid4().hex
    env = dict(job_env(nnunet_env), NNSLURM_TEST_MARKER=marker, NNSLURM_NO_PROGRESS="1")
    run_folder = nnunet_env.run_folder(TRAINER)
    training = [*paced_training(WARNED_EPOCHS, WARNED_ITERATIONS), "--no-end-time-stop", "-num_gpus", "1"]
    limits = ["--time", "1", "--signal-delay", "20", "--cpus-per-task", "1"]
    script = render_template(env, tmp_path, *training, *limits)
    text = script.read_text()
    one_node = "LAUNCH=()  # none: one node (--nodes M: srun)"
    assert one_node in text, text
    text = text.replace(one_node, f"LAUNCH=(srun --ntasks={TASKS} --kill-on-bad-exit=0)")
    text = text.replace("#SBATCH --requeue\n", f"#SBATCH --requeue\n#SBATCH --ntasks={TASKS}\n")
    script.write_text(text)
    job_id = idle_cluster.sbatch(script, cwd=tmp_path)

    assert idle_cluster.wait_done(job_id, 400) == "COMPLETED", idle_cluster.states(job_id)
    story = check_story(run_folder, WARNED_ITERATIONS, WARNED_EPOCHS)
    assert story["stops"] >= 1 and story["redone"] == [0] * story["stops"], story
    assert {d["kind"] for d in kinds(run_folder, "decision")} == {"walltime"}
    assert [r["by"] for r in kinds(run_folder, "requeued")] == ["nnslurm"] * story["stops"]
    assert [s["signal"] for s in kinds(run_folder, "signal")] == ["USR1"] * story["stops"]  # via srun
    starts = story["stops"] + 1
    assert [s.get("world_size") for s in kinds(run_folder, "started")] == [TASKS] * starts
    assert idle_cluster.states(job_id).count("REQUEUED") == story["stops"]
    (out,) = tmp_path.glob(f"nnslurm-*-{job_id}.out")
    log = out.read_text()
    for index in range(TASKS):
        assert log.count(f"as launcher {index} of {TASKS}, meeting at") == starts, log[-3000:]
    # Task 1's launcher never ended badly: it leaves with 0 once its rank stopped (what it logs then
    # may be cut short by the KILL of nnslurm's requeue; srun names every task that exits non-zero).
    assert "task 1: Exited with exit code" not in log, log[-3000:]
    assert "ranks ended: rank 1 exited 0" in log  # and finished with the run
    assert "Traceback" not in log, log[-3000:]
    wait_for(lambda: not processes_with_marker(marker), patience(30), "every process of the job to end")
    report("two srun tasks, a launcher each (template, walltime)", started, redone=story["redone"])
