"""`nnslurm doctor` on the real dev cluster: what it says about `low` (REQUEUE) and `cancel` (CANCEL),
and that a KillWait too short for a stop makes it warn with exit 1. Submits no job; KillWait is
changed for a few seconds and restored to the value it had."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import skip_unless_required

from nnslurm import cli
from nnslurm.slurm import commands as slurm
from nnslurm.slurm.cluster_config import parse_config

from .tools import Cluster

SCRIPT = Path(__file__).parents[2] / "scripts" / "slurm-dev-cluster"


def doctor_json(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = cli.main(["doctor", "--json"])
    return code, json.loads(capsys.readouterr().out)


def set_kill_wait(seconds: int) -> None:
    subprocess.run(
        [str(SCRIPT), "set", "KillWait", str(seconds)], check=True, capture_output=True, timeout=60
    )


def test_doctor_on_the_dev_cluster(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0 or not SCRIPT.is_file():
        skip_unless_required("switching KillWait needs root and scripts/slurm-dev-cluster")
    config = parse_config(slurm.run_command(["scontrol", "show", "config"]).stdout)
    assert config.kill_wait_s is not None
    before = config.kill_wait_s

    code = cli.main(["doctor"])
    text = capsys.readouterr().out
    assert "partition low (default): PreemptMode=REQUEUE" in text
    assert "partition cancel: PreemptMode=CANCEL" in text
    code, document = doctor_json(capsys)
    modes = {p["name"]: p["preempt_mode"] for p in document["partitions"]}
    assert modes["low"] == "REQUEUE" and modes["cancel"] == "CANCEL" and modes["high"] == "OFF"
    assert document["cluster"]["kill_wait_s"] == before
    if before >= 10:  # the dev cluster's own KillWait (10): nothing loses work
        assert code == 0 and document["loses_work"] == []

    set_kill_wait(2)
    try:
        code, document = doctor_json(capsys)
    finally:
        set_kill_wait(before)
    assert document["cluster"]["kill_wait_s"] == 2
    # Without send_user_signal (the dev cluster's setting) a template job hears SIGTERM only after
    # the 20 s grace and has KillWait = 2 s left: less than a stop needs.
    assert document["cluster"]["send_user_signal"] is None, "preempt_send_user_signal was left on"
    assert code == 1 == document["exit_status"]
    losing = {(item["partition"], item["topic"]) for item in document["loses_work"]}
    assert {("low", "preemption-time"), ("cancel", "preemption-time")} <= losing
    assert all(item["fix"] for item in document["loses_work"])
    restored = parse_config(slurm.run_command(["scontrol", "show", "config"]).stdout)
    assert restored.kill_wait_s == before
