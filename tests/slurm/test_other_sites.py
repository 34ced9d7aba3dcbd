"""Configurations of other sites, on the real cluster (issue 12): a duplicate submission is refused;
a node that goes down during training ends in a finished run, SLURM's requeue, "node failure" in
the log. Each with the real nnU-Net tiny training (paced trainer), a few minutes at most.
Preemption on a PreemptMode=CANCEL partition: tests/slurm/test_chain.py (a chain whose training task
is resubmitted); JobRequeue=0: tests/slurm/test_scenarios.py (preemption with the user signal)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import NnunetEnv, nnslurm, patience, processes_with_marker, wait_for

from .tools import (
    EPOCHS,
    ITERATIONS,
    TRAINER,
    Background,
    Cluster,
    events,
    job_env,
    kinds,
    paced_training,
    position,
    report,
    sh,
    submit_args,
    wait_for_event,
)


def training() -> list[str]:
    return paced_training(EPOCHS, ITERATIONS)


def status_of(run_folder: Path, env: dict[str, str]) -> dict[str, Any]:
    shown = nnslurm(["status", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    rows = [row for row in json.loads(shown.stdout)["runs"] if row["folder"] == str(run_folder)]
    assert len(rows) == 1, shown.stdout
    return rows[0]


# --- a second submission of a run already queued or running ------------------------------------------


def test_duplicate_submit_is_refused(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    env = job_env(nnunet_env)
    args = submit_args(tmp_path / "logs", *training(), "--time", "10", wait=False)
    first = nnslurm(args, env)
    assert first.returncode == 0, first.stderr
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    second = nnslurm(args, env)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"job {job_id}" in second.stderr and "nnslurm cancel" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert [r["job_id"] for r in kinds(run_folder, "submitted")] == [job_id]  # nothing more was queued
    dry = nnslurm([*args, "--dry-run"], env)
    assert dry.returncode == 0 and "would be refused" in dry.stdout and f"job {job_id}" in dry.stdout
    # Stopped for good (scancel): the run is merely resumable and is submitted as usual.
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    idle_cluster.wait_done(job_id, 120)
    idle_cluster.wait_gone(job_id, 60)
    third = nnslurm(args, env)
    assert third.returncode == 0, third.stderr
    idle_cluster.own.update(r["job_id"] for r in kinds(run_folder, "submitted"))
    report("duplicate submit", started, refused=job_id)


# --- node failure --------------------------------------------------------------------------------------


@pytest.fixture
def node(cluster: Cluster) -> Iterator[str]:
    """The node's name; whatever the test does, the node is resumed afterwards (others need it)."""
    name = sh(["sinfo", "-h", "-N", "-o", "%N"]).split()[0]
    try:
        yield name
    finally:
        subprocess.run(
            ["scontrol", "update", f"NodeName={name}", "State=RESUME"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        wait_for(lambda: node_state(name) in USABLE, patience(60), f"node {name} to come back")


USABLE = ("idle", "mixed", "allocated", "completing")


def job_processes(job_id: str) -> list[int]:
    """This machine's processes of the job: whatever runs in its steps, and their slurmstepd."""
    stepds = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                f"slurmstepd: [{job_id}.".encode()
            ):
                stepds.append(int(entry.name))
        except OSError:
            continue
    return processes_with_marker(f"SLURM_JOB_ID={job_id}\0") + stepds


def _epoch_begun(run_folder: Path, epoch: int) -> bool:
    """nnU-Net's training log has the line it writes when epoch `epoch` begins ("<time>: Epoch 1 ")."""
    lines = [line for log in run_folder.glob("training_log_*.txt") for line in log.read_text().splitlines()]
    return any(line.partition(": ")[2].strip() == f"Epoch {epoch}" for line in lines)


def node_state(name: str) -> str:
    return sh(["sinfo", "-h", "-n", name, "-o", "%T"]).strip().rstrip("*~#!%$@^-")


def test_node_failure_requeues_and_resumes(
    idle_cluster: Cluster, node: str, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    env = job_env(nnunet_env)
    args = submit_args(tmp_path / "logs", *training(), "--time", "10", "--save-every-epochs", "1")
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    checkpoint = wait_for_event(run_folder, "checkpoint", 300, reason="periodic")
    # Past the checkpoint: nnU-Net has begun the next epoch (its log's "Epoch N" line), so the
    # failure lands in the middle of work the checkpoint does not hold.
    wait_for(
        lambda: _epoch_begun(run_folder, checkpoint["epoch"]),
        patience(60),
        f"epoch {checkpoint['epoch']} to begin",
    )
    # The node "fails" but its processes live on: drained first, it takes no job until the old
    # job's processes are gone (measured: ReturnToService=2 put a down node back within 40 ms and
    # SLURM relaunched the requeued job while the old step was still ending: "Duplicate jobid",
    # drained). Drained before it goes down, it comes back drained: no window to start in.
    sh(["scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=nnslurm-test"])
    sh(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=nnslurm-test"])
    wait_for(
        lambda: "NODE_FAIL" in idle_cluster.states(job_id),
        patience(120),
        f"sacct to record NODE_FAIL for {job_id}",
    )
    wait_for(lambda: not job_processes(job_id), patience(60), f"the processes of job {job_id} to end")
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False, timeout=30)
    wait_for(lambda: node_state(node) in USABLE, patience(60), f"node {node} to come back")
    # The requeued job starts again on the node: bounded, so a job SLURM keeps pending (held after
    # a failed launch, say) fails here with SLURM's view in the report, not after the long finish.
    wait_for(lambda: kinds(run_folder, "resumed"), patience(180), f"job {job_id} to start again and resume")
    code, output = waiting.finish(400)
    assert code == 0, output
    log = events(run_folder)
    names = [record["event"] for record in log]
    assert names[-1] == "finished" and (run_folder / "checkpoint_final.pth").is_file(), names
    assert log[-1]["epoch"] == EPOCHS
    states = idle_cluster.ended_states(job_id)
    assert states[0] == "NODE_FAIL" and states[-1] == "COMPLETED", states
    # Resumed from the newest periodic checkpoint (or a stop's): at most one checkpoint interval lost.
    resumed = kinds(run_folder, "resumed")[0]
    lost = max(
        position(r, ITERATIONS) for r in log if "epoch" in r and r["time"] < resumed["time"]
    ) - position(resumed, ITERATIONS)
    assert 0 <= lost <= ITERATIONS, (lost, resumed)
    assert position(resumed, ITERATIONS) >= position(checkpoint, ITERATIONS)
    row = status_of(run_folder, env)
    assert row["state"] == "finished" and row["interruptions"]["node failure"] == 1, row
    # Which path ran is in the log: a training that heard TERM stopped ("stopped"), checkpointed,
    # and SLURM's requeue was recorded as such; one killed outright has no "stopped" record, and
    # the restart found it interrupted. Each path must leave its own record, not the other's.
    before_resume = [r for r in log if r["time"] < resumed["time"]]
    stopped = [r for r in before_resume if r["event"] == "stopped"]
    requeued = [r for r in log if (r["event"], r.get("reason")) == ("requeued", "node failure")]
    interrupted = [r for r in log if (r["event"], r.get("kind")) == ("interrupted", "node failure")]
    if stopped:
        assert len(requeued) == 1 and not interrupted, names
    else:
        assert len(interrupted) == 1 and not requeued, names
    path = "TERM, stopped, requeued" if stopped else "killed, interrupted"
    report("node failure", started, lost=lost, sacct=states, path=path)
