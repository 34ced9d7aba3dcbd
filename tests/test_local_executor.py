"""`nnslurm submit --executor local`: submitit's local executor honours --time, so a run longer
than one start is stopped, checkpointed, requeued (exit 144, restarted by the local controller)
and resumed, with real nnU-Net training and no SLURM."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from support import (
    TINY_PLANS,
    TINY_TRAINING,
    NnunetEnv,
    nnslurm,
    patience,
    read_events,
    wait_for,
)

from nnslurm.commands.synthetic import PACED_TRAINER

pytestmark = pytest.mark.nnunet

# The warning comes this long after a start (--time minus --signal-delay): start-up and some
# training, more on a busier machine (the patience factor). At >= 0.5 s per iteration (paced), the
# iterations of a run outlast it by a few epochs' worth, anywhere.
SIGNAL_DELAY_S = 15
WARNING_AFTER_S = round(patience(25 / 3))
EPOCHS, ITERATIONS = 3, max(20, math.ceil(WARNING_AFTER_S / 0.5 / 3) + 4)
JOB_TIME = "{}:{:02d}".format(*divmod(WARNING_AFTER_S + SIGNAL_DELAY_S, 60))  # M:SS


def test_local_executor_stops_requeues_and_finishes(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    started = time.time()
    env = nnunet_env.env(nnUNet_n_proc_DA="0", NNSLURM_MIN_ITERATION_S="0.5")
    result = nnslurm(
        [
            "submit",
            "--executor",
            "local",
            "-d",
            "501",
            "-f",
            "0",
            "-p",
            TINY_PLANS,
            "-tr",
            PACED_TRAINER,
            "--epochs",
            str(EPOCHS),
            "--iterations-per-epoch",
            str(ITERATIONS),
            "--val-iterations-per-epoch",
            "2",
            "--device",
            "cpu",
            "--no-final-validation",
            "--time",
            JOB_TIME,
            "--signal-delay",
            str(SIGNAL_DELAY_S),
            "--log-dir",
            str(tmp_path / "logs"),
            "--wait",
        ],
        env,
        timeout=patience(140),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished [COMPLETED]" in result.stdout, result.stdout  # launch.job_state: a result pickle

    run_folder = nnunet_env.run_folder("nnUNetTrainerPaced")
    assert (run_folder / "checkpoint_final.pth").is_file()
    events = read_events(run_folder)
    names = [e["event"] for e in events]
    assert names[0] == "submitted" and names[-1] == "finished", names
    assert events[-1]["epoch"] == EPOCHS

    stops = [e for e in events if e["event"] == "stopped"]
    resumes = [e for e in events if e["event"] == "resumed"]
    decisions = [e for e in events if e["event"] == "decision"]
    requeues = [e for e in events if e["event"] == "requeued"]
    assert len(stops) >= 1, names
    assert len(resumes) == len(stops) == len(decisions) == len(requeues), names
    assert {d["kind"] for d in decisions} == {"walltime"}
    assert {r["by"] for r in requeues} == {"nnslurm"}
    assert len({e["job_id"] for e in events}) == 1 and events[0]["job_id"].startswith("local-")
    for stop, resume in zip(stops, resumes, strict=True):
        redone = (stop["epoch"] * ITERATIONS + stop["iteration"]) - (
            resume["epoch"] * ITERATIONS + resume["iteration"]
        )
        assert 0 <= redone <= 1, (stop, resume)
    print(f"\n[nnslurm scenario] local executor: {len(stops)} stop(s), wall {time.time() - started:.0f} s")


def test_local_submit_without_wait_returns_at_once_and_leaves_a_clean_log_folder(
    nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    """The local controller outlives `nnslurm submit` and must not hold the caller's pipe open
    (`nnslurm submit ... | tee` would hang until the job ends); its output goes to the log folder."""
    logs = tmp_path / "logs"
    result = nnslurm(
        ["submit", "--executor", "local", *TINY_TRAINING, "--no-final-validation", "--log-dir", str(logs)],
        nnunet_env.env(),
        timeout=patience(40),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_folder = nnunet_env.run_folder()
    assert "finished" not in [e["event"] for e in read_events(run_folder)]  # returned while it trains
    wait_for(
        lambda: "finished" in [e["event"] for e in read_events(run_folder)], patience(80), "the run to finish"
    )
    assert read_events(run_folder)[-1]["event"] == "finished"
    assert (run_folder / "checkpoint_final.pth").is_file()
    (job_id,) = {e["job_id"] for e in read_events(run_folder)}
    job_folder = logs / job_id.removeprefix("local-")
    wait_for(
        lambda: list(job_folder.glob("*_result.pkl")), patience(20), "the job's result pickle (its last file)"
    )
    folders = sorted(p.name for p in logs.iterdir() if p.is_dir())
    assert folders == [job_id.removeprefix("local-")], folders  # no literal "%j" folder beside it
    assert (logs / "local-controller.log").is_file()
