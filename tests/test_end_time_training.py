"""The end-time rule in a real `nnslurm train` (real nnU-Net, CPU), inside a "job" whose scontrol
is a script on the PATH: EndTime comes from it, no signal is ever sent, and the training stops
before that end with a checkpoint, records why, and requeues itself."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from support import TINY_PLANS, NnunetEnv, nnslurm, patience

from nnslurm import EXIT_RESUMABLE
from nnslurm.commands.synthetic import PACED_TRAINER

pytestmark = pytest.mark.nnunet

# EndTime = the first `scontrol show job` + this: room for the rest of start-up and some training,
# more on a busier machine (the patience factor)
LEFT_S = round(patience(8))
SAFETY_S = 8
# iterations of at least 0.2 s (paced), twice LEFT_S of them: no start can finish inside LEFT_S
EPOCHS, ITERATIONS = 6, max(40, math.ceil(2 * LEFT_S / 0.2 / 6))

# EndTime counts from the first call (the training process's first read), whatever the start-up took.
FAKE_SCONTROL = """#!/bin/bash
echo "$*" >> "{log}"
case "$1" in
  show)
    [ -f "{first}" ] || date +%s > "{first}"
    end=$(date -d @$(( $(cat "{first}") + {left} )) +%Y-%m-%dT%H:%M:%S)
    echo "JobId=99 JobName=t JobState=RUNNING Reason=None Restarts=0 Requeue=1 TimeLimit=00:01:00 \
RunTime=00:00:10 StartTime=2026-12-01T00:00:00 EndTime=$end PreemptTime=None ExitCode=0:0" ;;
  requeue) exit 0 ;;
  *) exit 1 ;;
esac
"""


def fake_job(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    script = bin_dir / "scontrol"
    script.write_text(FAKE_SCONTROL.format(log=log, first=tmp_path / "first-call", left=LEFT_S))
    script.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "99"}
    return env, log


def test_train_stops_before_the_end_time_without_a_signal(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    job, log = fake_job(tmp_path)
    env = nnunet_env.env(NNSLURM_MIN_ITERATION_S="0.2", nnUNet_n_proc_DA="0", **job)
    env.pop("NNSLURM_WARNING_SIGNAL", None)
    args = [
        "train",
        "-d", "501", "-f", "0", "-p", TINY_PLANS, "-tr", PACED_TRAINER, "--device", "cpu",
        "--epochs", str(EPOCHS), "--iterations-per-epoch", str(ITERATIONS), "--val-iterations-per-epoch", "2",
        "--no-final-validation", "--end-time-safety", str(SAFETY_S), "--end-time-refresh", "5",
    ]  # fmt: skip
    result = nnslurm(args, env, timeout=patience(80))
    assert result.returncode == EXIT_RESUMABLE, result.stderr[-3000:]
    folder = nnunet_env.run_folder("nnUNetTrainerPaced")
    records = [json.loads(line) for line in (folder / "nnslurm_events.jsonl").read_text().splitlines()]
    (signal,) = [r for r in records if r["event"] == "signal"]
    assert signal["signal"] == "ENDTIME" and signal["reason"].startswith("EndTime ")
    # it stopped before the end, with the margin: no later than safety + one iteration + a checkpoint
    assert 0 < signal["time_left_s"] <= signal["margin_s"]
    assert signal["margin_s"] == pytest.approx(signal["next_s"] + signal["checkpoint_s"] + SAFETY_S, abs=0.01)
    first_call = int((tmp_path / "first-call").read_text())
    assert signal["time"] < first_call + LEFT_S
    (stopped,) = [r for r in records if r["event"] == "stopped"]
    assert stopped["signal"] == "ENDTIME" and (stopped["epoch"], stopped["iteration"]) < (EPOCHS, 0)
    (decision,) = [r for r in records if r["event"] == "decision"]
    assert (decision["kind"], decision["requeue_self"]) == ("walltime", True)
    assert decision["reason"].startswith("end-time rule (EndTime ") and "margin" in decision["reason"]
    (requeued,) = [r for r in records if r["event"] == "requeued"]
    assert (requeued["by"], requeued["reason"]) == ("nnslurm", "walltime")
    calls = log.read_text().splitlines()
    assert calls[-1] == "requeue 99" and calls.count("requeue 99") == 1
    assert "end-time rule: stopping before the" in result.stderr

    # The requeued job's next start (EndTime anew from its first read) resumes exactly there, and
    # stops by the rule again: no iteration redone, each stop its own walltime self-requeue.
    (tmp_path / "first-call").unlink()
    again = nnslurm(args, env, timeout=patience(80))
    assert again.returncode == EXIT_RESUMABLE, again.stderr[-3000:]
    records = [json.loads(line) for line in (folder / "nnslurm_events.jsonl").read_text().splitlines()]
    (resume,) = [r for r in records if r["event"] == "resumed"]
    assert (resume["epoch"], resume["iteration"]) == (stopped["epoch"], stopped["iteration"])
    assert [r["signal"] for r in records if r["event"] == "stopped"] == ["ENDTIME", "ENDTIME"]
    assert [r["by"] for r in records if r["event"] == "requeued"] == ["nnslurm", "nnslurm"]
    assert log.read_text().splitlines().count("requeue 99") == 2
