"""Configurations of other sites, on the real cluster (issue 12): a duplicate submission is refused;
preemption on a PreemptMode=CANCEL partition ends in a finished run through a resubmitted job; a node
that goes down during training ends in a finished run, SLURM's requeue, "node failure" in the log.
Each with the real nnU-Net tiny training (paced trainer), a few minutes at most."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_PLANS, NnunetEnv, nnslurm
from support import processes_with_marker, wait_for

from nnslurm.commands.synthetic import PACED_TRAINER

from .tools import Background, Cluster, check_story, events, kinds, patient, position, sh, wait_for_event

# As in test_scenarios.py: a floor of 0.25 s per iteration, so that after the epoch-0 checkpoint
# 120 iterations (>= 30 s) remain, more than the 20 s GraceTime and what each scenario waits for.
EPOCHS, ITERATIONS = 3, 60
MIN_ITERATION_S = "0.25"
TRAINER = "nnUNetTrainerPaced"
RUN = ["-d", "501", "-f", "0", "-p", TINY_PLANS, "--val-iterations-per-epoch", "2", "-tr", PACED_TRAINER]
RUN += ["--device", "cpu", "--no-final-validation", "--save-every-minutes", "60"]


def training(epochs: int = EPOCHS, iterations: int = ITERATIONS) -> list[str]:
    return [*RUN, "--epochs", str(epochs), "--iterations-per-epoch", str(iterations)]


def job_env(nnunet_env: NnunetEnv) -> dict[str, str]:
    return nnunet_env.env(nnUNet_n_proc_DA="0", NNSLURM_MIN_ITERATION_S=MIN_ITERATION_S)


def submit_args(log_dir: Path, *extra: str) -> list[str]:
    return ["submit", "--executor", "slurm", "--log-dir", str(log_dir), *extra]


def report(name: str, started: float, **facts: object) -> None:
    details = " ".join(f"{key}={value}" for key, value in facts.items())
    print(f"\n[nnslurm scenario] {name}: wall {time.time() - started:.0f} s {details}", file=sys.stderr)


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
    args = submit_args(tmp_path / "logs", *training(), "--time", "10")
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
    wait_for(lambda: not sh(["squeue", "-h", "-j", job_id]).strip(), 60, f"job {job_id} to leave squeue")
    third = nnslurm(args, env)
    assert third.returncode == 0, third.stderr
    idle_cluster.own.update(r["job_id"] for r in kinds(run_folder, "submitted"))
    report("duplicate submit", started, refused=job_id)


# --- preemption on a PreemptMode=CANCEL partition ----------------------------------------------------


def test_cancel_mode_preemption_resubmits(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    mode = sh(["scontrol", "show", "partition", "-o", "cancel"])
    if "PreemptMode=CANCEL" not in mode:
        pytest.fail(
            "the dev cluster has no PreemptMode=CANCEL partition `cancel`: scripts/slurm-dev-cluster up"
        )
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    env = job_env(nnunet_env)
    args = submit_args(
        tmp_path / "logs",
        "--wait",
        *training(),
        "--time",
        "10",
        "--partition",
        "cancel",
        "--cpus-per-task",
        "1",
    )
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    wait_for_event(run_folder, "checkpoint", 300, reason="periodic")
    idle_cluster.preempt()
    resubmitted = wait_for_event(run_folder, "resubmitted", 90)
    new_id = resubmitted["job_id"]
    idle_cluster.own.add(new_id)
    code, output = waiting.finish(300)
    assert code == 0, output
    assert (
        f"job {new_id} (3d_fullres fold 0): finished [COMPLETED]" in output
        and f"after job {job_id}" in output
    )
    story = check_story(run_folder, ITERATIONS, EPOCHS)
    assert story["stops"] == 1  # redone <= 1 iteration: check_story
    (decision,) = kinds(run_folder, "decision")
    assert decision["kind"] == "resubmit" and "PreemptMode=CANCEL" in decision["reason"]
    assert (resubmitted["old_job_id"], resubmitted["by"]) == (job_id, "nnslurm") and new_id != job_id
    assert not kinds(run_folder, "requeued")
    assert [r["job_id"] for r in kinds(run_folder, "finished")] == [new_id]
    # SLURM ran the old job once (never requeued) and the new one once.
    assert "REQUEUED" not in idle_cluster.ended_states(job_id) and len(idle_cluster.states(job_id)) == 1
    assert idle_cluster.ended_states(new_id) == ["COMPLETED"]
    row = status_of(run_folder, env)
    assert (row["job_id"], row["state"], row["job_ids"]) == (new_id, "finished", [job_id, new_id])
    assert row["interruptions"]["preemption"] == 1
    report("cancel-mode preemption", started, old=job_id, new=new_id, redone=story["redone"])


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
        wait_for(lambda: node_state(name) in USABLE, patient(60), f"node {name} to come back")


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


def node_state(name: str) -> str:
    return sh(["sinfo", "-h", "-n", name, "-o", "%T"]).strip().rstrip("*~#!%$@^-")


def test_node_failure_requeues_and_resumes(
    idle_cluster: Cluster, node: str, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    started = time.time()
    run_folder = nnunet_env.run_folder(TRAINER)
    env = job_env(nnunet_env)
    args = submit_args(tmp_path / "logs", "--wait", *training(), "--time", "10", "--save-every-epochs", "1")
    waiting = Background.start(args, env, tmp_path / "submit.out")
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    checkpoint = wait_for_event(run_folder, "checkpoint", 300, reason="periodic")
    time.sleep(3)  # a few iterations past the checkpoint: work the failure may cost
    # The node "fails" but its processes live on: drained at once, it takes no job until the old
    # job's processes are gone (measured: ReturnToService=2 put it back within 40 ms and SLURM
    # relaunched the requeued job while the old step was still ending: "Duplicate jobid", drained).
    sh(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=nnslurm-test"])
    sh(["scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=nnslurm-test"])
    wait_for(
        lambda: "NODE_FAIL" in idle_cluster.states(job_id), 120, f"sacct to record NODE_FAIL for {job_id}"
    )
    wait_for(lambda: not job_processes(job_id), patient(60), f"the processes of job {job_id} to end")
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False, timeout=30)
    wait_for(lambda: node_state(node) in USABLE, patient(60), f"node {node} to come back")
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
    # Killed outright: the restart's "interrupted" record; stopped on TERM: SLURM's "requeued" record.
    told = [
        r
        for r in log
        if (r["event"], r.get("kind")) == ("interrupted", "node failure")
        or (r["event"], r.get("reason")) == ("requeued", "node failure")
    ]
    assert told, names
    report("node failure", started, lost=lost, sacct=states, told=told[0]["event"])
