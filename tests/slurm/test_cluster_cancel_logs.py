"""`nnslurm status`, `cancel`, `logs` and `report` on a real sbatch job of the single-node cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import NnunetEnv, last_event, nnslurm, patience, the_only_run_status, wait_for

from nnslurm.commands.cancel import _user
from nnslurm.slurm import commands as slurm

from .tools import TRAINER, Cluster, job_env, paced_training

USER = _user()


def test_status_cancel_logs_report_on_real_slurm(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """A real sbatch job: running in status, cancelled with scancel, its log and its picture."""
    # Paced (tests/slurm/tools.py): after the first epoch (>= 10 s) at least 200 iterations (>= 50 s)
    # remain, so the job is still training when it is looked at and cancelled.
    env = job_env(nnunet_env)
    args = paced_training(6, 40)
    submitted = nnslurm(
        ["submit", "--executor", "slurm", "--log-dir", str(tmp_path / "logs"), "--time", "10", *args], env
    )
    assert submitted.returncode == 0, submitted.stderr
    folder = nnunet_env.run_folder(TRAINER)
    job_id = str(last_event(folder, "submitted")["job_id"])  # type: ignore[index]
    idle_cluster.own.add(job_id)
    try:
        wait_for(lambda: last_event(folder, "checkpoint"), patience(180), "the first epoch")
        run = the_only_run_status(env)
        assert (run["state"], run["job_id"], run["executor"], run["scheduler_state"]) == (
            "running",
            job_id,
            "slurm",
            "RUNNING",
        )

        cancelled = nnslurm(["cancel", job_id], env)
        assert cancelled.returncode == 0, cancelled.stderr
        decision = wait_for(lambda: last_event(folder, "decision"), patience(120), "the job's stop decision")
        assert decision["kind"] == "cancel"
        wait_for(lambda: slurm.query_scheduler([job_id]).get(job_id), patience(60), "sacct")  # type: ignore[union-attr]
        wait_for(
            lambda: the_only_run_status(env)["scheduler_state"] == "CANCELLED",
            patience(60),
            "the job to end as CANCELLED",
        )
        run = the_only_run_status(env)
        assert (run["state"], run["detail"]) == ("cancelled", f"cancelled by {USER}")
        assert run["interruptions"]["cancel"] == 1
        assert (run["epoch"], run["iteration"]) == (decision["epoch"], decision["iteration"])

        logs = nnslurm(["logs", str(folder)], env)
        assert logs.returncode == 0 and "SIGTERM received: stopping at epoch" in logs.stdout
        report = nnslurm(["report", job_id, "-o", str(tmp_path / "t.png")], env)
        assert report.returncode == 0 and (tmp_path / "t.png").is_file()
        assert "cancel     job " + job_id in report.stdout
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=False)
