"""`nnslurm submit -num_gpus 2 -device cpu` on a real SLURM: the submitit job's process launches two
gloo ranks on its node; a preemption, and the walltime warning of the job's 1-minute limit, each stop
both ranks at the same iteration; rank 0 decides in its own process with the job's after-stop
decision (SLURM requeues after the preemption, nnslurm after the warning); the run resumes exactly."""

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

# Every start is paced (>= 0.25 s an iteration) and has 1 minute, its warning (USR1) 20 s before the
# end: 180 iterations (>= 45 s of training) outlast one start, so the warning stops at least one
# start; the preemption comes after the first periodic checkpoint (epoch 0's), in whichever start
# that is. The end-time rule is off: the stops come from the signals, forwarded by the launcher.
EPOCHS, ITERATIONS = 3, 60


def test_two_ranks_preempted_and_warned_resume_exactly(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    started = time.time()
    marker = uuid.uuid4().hex  # in every process of the job (sbatch exports the submitting environment)
    env = dict(
        job_env(nnunet_env, pace_later_starts=True), NNSLURM_TEST_MARKER=marker, NNSLURM_NO_PROGRESS="1"
    )
    run_folder = nnunet_env.run_folder(TRAINER)
    training = [*paced_training(EPOCHS, ITERATIONS), "--no-end-time-stop", "-num_gpus", "2"]
    # both CPUs of the node: one torch thread per rank, and the preemptor's job needs them all
    limits = ["--time", "1", "--signal-delay", "20", "--cpus-per-task", "2"]
    args = submit_args(tmp_path / "logs", *training, *limits)
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for_event(run_folder, "checkpoint", 180, reason="periodic")  # both ranks past epoch 0
    preempted_at = time.time()
    idle_cluster.preempt()
    stop = wait_for(
        lambda: next((d for d in kinds(run_folder, "decision") if d["kind"] == "preemption"), None),
        patience(60),
        "the preemption's stop and decision",
    )
    code, output = waiting.finish(400)
    assert code == 0, output

    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert story["stops"] >= 2 and story["redone"] == [0] * story["stops"], story
    decisions = [d["kind"] for d in kinds(run_folder, "decision")]
    assert sorted(set(decisions)) == ["preemption", "walltime"] and decisions.count("preemption") == 1, (
        decisions
    )
    # one record of each stop, by rank 0, and one stop checkpoint each
    assert len([c for c in kinds(run_folder, "checkpoint") if c["reason"] == "stop"]) == story["stops"]
    walltime = [s for s in kinds(run_folder, "signal") if s.get("signal") == "USR1"]
    assert len(walltime) == decisions.count("walltime"), kinds(run_folder, "signal")  # the warning, forwarded
    requeued = [(r["by"], r["reason"]) for r in kinds(run_folder, "requeued")]
    assert sorted(set(requeued)) == [("nnslurm", "walltime"), ("slurm", "preemption")], requeued
    assert requeued.count(("slurm", "preemption")) == 1  # nnslurm did not requeue a preempted job
    starts = story["stops"] + 1
    assert [s.get("world_size") for s in kinds(run_folder, "started")] == [2] * starts
    states = idle_cluster.ended_states(job_id)
    assert states.count("PREEMPTED") == 1 and states[-1] == "COMPLETED" and len(states) == starts, states
    logs = "".join(path.read_text() for path in sorted((tmp_path / "logs" / job_id).glob("*_log.err")))
    assert logs.count("launched 2 ranks") == starts, logs[-3000:]
    # neither rank killed by the TERMs that end the grace time (SLURM's own, and forwarded), nor by
    # the TERM of nnslurm's own requeue after the warning
    assert logs.count("ranks ended: rank 0 exited 75, rank 1 exited 75") == story["stops"], logs[-3000:]
    assert "ranks ended: rank 0 exited 0, rank 1 exited 0" in logs
    assert "Traceback" not in logs, logs[-3000:]  # multiprocessing's helper never killed by a stop signal
    wait_for(lambda: not processes_with_marker(marker), patience(30), "every process of the job to end")
    report(
        "two ranks preempted and warned (submit -num_gpus 2 -device cpu)",
        started,
        redone=story["redone"],
        decisions=decisions,
        preempted_at=(stop["epoch"], stop["iteration"]),
        stop_after_preemption_s=round(stop["time"] - preempted_at, 1),
    )


# Two launchers of one rank each, as two srun tasks (the layout of `--nodes 2`, on the one node here):
# every start paced and 1 minute long, its warning 20 s before the end; 180 iterations outlast a start.
TASKS = 2


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
    training = [*paced_training(EPOCHS, ITERATIONS), "--no-end-time-stop", "-num_gpus", "1"]
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
    story = check_story(run_folder, ITERATIONS, EPOCHS)
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
    followed = log.count("this launcher's ranks stopped; rank 0's launcher decides")
    assert followed == story["stops"], log[-3000:]
    assert log.count("ranks ended: rank 1 exited 75") == story["stops"], log[-3000:]  # task 1's rank
    assert "Traceback" not in log, log[-3000:]
    wait_for(lambda: not processes_with_marker(marker), patience(30), "every process of the job to end")
    report("two srun tasks, a launcher each (template, walltime)", started, redone=story["redone"])
