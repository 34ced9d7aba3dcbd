"""Torch threads and augmentation workers follow the job's allocation in a real `nnslurm train`
(real nnU-Net, CPU) inside a "job" (SLURM_JOB_ID, SLURM_CPUS_PER_TASK; every SLURM command on the
PATH is a recording fake, so nothing reaches a real cluster): the process's log line says the
budget, and the process itself, probed while it trains (tests/cpu_probe_trainer.py), uses exactly
that many torch threads and augmentation worker processes."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from support import TINY_PLANS, NnunetEnv, nnslurm

pytestmark = pytest.mark.nnunet

PROBE_TRAINER = "cpu_probe_trainer:nnUNetTrainerCpuProbe"
LOG_LINE = re.compile(
    r"CPUs: (\d+) \((.*)\): torch threads (\d+), augmentation workers (\d+) \(nnUNet_n_proc_DA\)"
)
SLURM_COMMANDS = ("scontrol", "sacct", "squeue", "sbatch", "scancel", "srun")

# EndTime an hour away: the end-time rule reads it and never stops this short training.
FAKE = """#!/bin/bash
echo "$(basename "$0") $*" >> "{log}"
if [ "$(basename "$0")" = scontrol ] && [ "$1" = show ]; then
  end=$(date -d @$(( $(date +%s) + 3600 )) +%Y-%m-%dT%H:%M:%S)
  echo "JobId=99 JobName=t JobState=RUNNING Reason=None Restarts=0 Requeue=1 TimeLimit=01:00:00 \
RunTime=00:00:10 StartTime=2026-12-01T00:00:00 EndTime=$end PreemptTime=None ExitCode=0:0"
  exit 0
fi
exit 1
"""


def fake_slurm(tmp_path: Path) -> tuple[Path, Path]:
    """A bin folder whose SLURM commands only record their calls (and scontrol shows job 99)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm-calls.log"
    bin_dir.mkdir()
    for name in SLURM_COMMANDS:
        script = bin_dir / name
        script.write_text(FAKE.format(log=log))
        script.chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize("cpus", [1, 2])
def test_train_uses_only_its_allocation(nnunet_env: NnunetEnv, tmp_path: Path, cpus: int) -> None:
    bin_dir, calls = fake_slurm(tmp_path)
    probe = tmp_path / "probe.json"
    env = {k: v for k, v in nnunet_env.env().items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env.pop("nnUNet_n_proc_DA")  # the rule decides the workers (a user's value is kept: tests/test_cpus.py)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID="99",
        SLURM_CPUS_PER_TASK=str(cpus),
        NNSLURM_TEST_CPU_PROBE=str(probe),
    )
    args = [
        "train", "-d", "501", "-f", "0", "-p", TINY_PLANS, "-tr", PROBE_TRAINER, "--device", "cpu",
        "--epochs", "2", "--iterations-per-epoch", "3", "--val-iterations-per-epoch", "1",
        "--no-final-validation",
    ]  # fmt: skip
    started = time.time()
    result = nnslurm(args, env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    budget = min(cpus, len(os.sched_getaffinity(0)))  # the affinity where it is narrower
    workers = budget - 1  # the allocation minus the main process
    (line,) = LOG_LINE.findall(result.stderr)
    assert line == (str(budget), f"SLURM_CPUS_PER_TASK={cpus}, CPU affinity {len(os.sched_getaffinity(0))}",
                    str(budget), str(workers))  # fmt: skip
    # What the process really used, seen from inside while it trained: torch's thread count, and
    # nnU-Net's augmentation worker processes (for training `workers`, for validation max(1, workers // 2)).
    used = json.loads(probe.read_text())
    assert probe.stat().st_mtime >= started
    assert used["torch_threads"] == budget
    assert used["children"] == (0 if workers == 0 else workers + max(1, workers // 2))
    # Only the fake SLURM answered, and only about the end time: no requeue, no other command.
    assert {call for call in calls.read_text().splitlines()} == {"scontrol show job -o 99"}
