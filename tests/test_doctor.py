"""`nnslurm doctor` at the subprocess seam: recorded `scontrol show config` / `show partition -o`
outputs of SLURM 22.05.8 (the dev cluster's own) and of a 23.11 site, and no SLURM at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import FakeCluster, write_log

from nnslurm import cli
from nnslurm.slurm.cluster_config import (
    SlurmVersion,
    parse_config,
    parse_partitions,
    parse_qos,
    parse_record,
    parse_version,
)
from nnslurm.slurm.commands import use_runner
from nnslurm.slurm.diagnosis import ESTIMATED_STOP_S, Evidence, Severity, StopNeed, base_mode, diagnose

FIXTURES = Path(__file__).parent / "doctor_fixtures"


def recorded(version: str, what: str) -> str:
    return (FIXTURES / f"slurm-{version}-show-{what}.txt").read_text()


def cluster(version: str = "22.05", **config_changes: str) -> FakeCluster:
    """A fake SLURM answering with the recorded outputs; `KillWait="2 sec"` changes one setting."""
    config = recorded(version, "config")
    for key, value in config_changes.items():
        lines = config.splitlines()
        hits = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
        assert hits, key
        lines[hits[0]] = f"{key:<23} = {value}"
        config = "\n".join(lines) + "\n"
    return FakeCluster(
        answers={
            "scontrol show config": [config],
            "scontrol show partition": [recorded(version, "partition")],
            "sacctmgr": ["normal|cluster|00:00:00\n"],
        }
    )


def doctor(fake: FakeCluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with use_runner(fake):
        code = cli.main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(fake: FakeCluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code, out, _ = doctor(fake, capsys, *args, "--json")
    return code, json.loads(out)


def finding(document: dict, partition: str | None, topic: str) -> dict:
    findings = (
        document["findings"]
        if partition is None
        else next(p for p in document["partitions"] if p["name"] == partition)["findings"]
    )
    return next(f for f in findings if f["topic"] == topic)


# --- parsing ----------------------------------------------------------------------------------------


def test_parse_the_dev_clusters_config() -> None:
    config = parse_config(recorded("22.05", "config"))
    assert config.name == "nnslurmdev"
    assert config.version == SlurmVersion(22, 5, 8) and str(config.version) == "22.05.8"
    assert (config.preempt_type, config.preempt_mode) == ("preempt/partition_prio", "REQUEUE")
    assert config.kill_wait_s == 10 and config.job_requeue is True
    assert config.max_batch_requeue is None and config.signal_children is None  # not printed by 22.05
    assert config.proctrack_type == "proctrack/linuxproc" and config.scheduler_type == "sched/backfill"
    assert config.send_user_signal is None and config.preempt_parameters == ()
    assert config.over_time_limit_min == 0


def test_parse_a_23_11_config_with_its_cgroup_section() -> None:
    config = parse_config(recorded("23.11", "config"))
    assert (
        config.version is not None and config.version.at_least(23, 11) and not config.version.at_least(24, 5)
    )
    assert config.send_user_signal == "PreemptParameters=send_user_signal"
    assert config.max_batch_requeue == 5 and config.kill_wait_s == 30
    assert config.proctrack_type == "proctrack/cgroup" and config.signal_children is False
    assert config.sections["Cgroup Support Configuration"]["CgroupPlugin"] == "autodetect"
    assert config.sections["MPI Plugins Configuration"]["PMIxTimeout"] == "300"
    assert config.slurmctld_parameters == ("enable_configless",)


def test_parse_partitions() -> None:
    low, cancel, high = parse_partitions(recorded("22.05", "partition"))
    assert (low.name, low.default, low.preempt_mode, low.grace_time_s) == ("low", True, "REQUEUE", 20)
    assert (cancel.name, cancel.default, cancel.preempt_mode) == ("cancel", False, "CANCEL")
    assert (high.preempt_mode, high.priority_tier, high.max_time_s) == ("OFF", 10, None)
    gpu, scavenger, urgent = parse_partitions(recorded("23.11", "partition"))
    assert gpu.max_time_s == 2 * 86400 and urgent.max_time_s == 4 * 3600 and urgent.qos == "urgent"
    assert gpu.fields["TRES"] == "cpu=1024,mem=8000000M,node=16,billing=1024,gres/gpu=64"
    assert scavenger.grace_time_s == 120


def test_parse_small_pieces() -> None:
    assert parse_version("slurm-wlm 22.05.8") == SlurmVersion(22, 5, 8)
    assert parse_version("slurm 24.05") == SlurmVersion(24, 5, 0)
    assert parse_version("no version") is None
    assert parse_record("A=1 B=x y C=k=v")["B"] == "x y"
    low = parse_qos("normal|cluster|00:00:00\nlow|REQUEUE|00:02:00\n", "low")
    assert low is not None and (low.preempt_mode, low.grace_time_s) == ("REQUEUE", 120)
    normal = parse_qos("normal|cluster|00:00:00\n", "normal")
    assert normal is not None and normal.preempt_mode is None  # "cluster": the cluster's PreemptMode
    assert parse_qos("", "ghost") is None
    assert [base_mode(m) for m in ("SUSPEND,GANG", "GANG", "REQUEUE", "OFF")] == [
        "SUSPEND",
        "GANG",
        "REQUEUE",
        "OFF",
    ]


def test_unreadable_output_is_refused_with_the_text() -> None:
    from nnslurm.core.errors import SchedulerError

    with pytest.raises(SchedulerError, match="scontrol show config"):
        parse_config("something else entirely")
    with pytest.raises(SchedulerError, match="PartitionName"):
        parse_partitions("garbage line")


# --- the dev cluster (22.05.8) ---------------------------------------------------------------------


def test_dev_cluster_nothing_loses_work(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = doctor(cluster(), capsys)
    assert code == 0
    assert out.startswith("SLURM 22.05.8, cluster nnslurmdev")
    assert f"needs {ESTIMATED_STOP_S:.1f} s: an estimate" in out
    assert "partition low (default): PreemptMode=REQUEUE (preempted by high)" in out
    assert "partition cancel: PreemptMode=CANCEL (preempted by high)" in out
    assert "partition high: PreemptMode=OFF" in out
    assert "SLURM requeues a preempted job" in out and "SLURM cancels a preempted job" in out
    assert "no SLURM_JOB_END_TIME" in out
    assert "SlurmctldParameters=preempt_send_user_signal" in out  # the 22.05 spelling of the fix
    assert "Nothing found that can lose work (exit status 0)." in out


def test_dev_cluster_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, document = as_json(cluster(), capsys)
    assert code == 0 == document["exit_status"] and document["loses_work"] == []
    assert set(document) == {"cluster", "stop", "findings", "partitions", "loses_work", "exit_status"}
    assert document["cluster"] == {
        "name": "nnslurmdev",
        "slurm_version": "22.05.8",
        "preempt_type": "preempt/partition_prio",
        "preempt_mode": "REQUEUE",
        "kill_wait_s": 10,
        "job_requeue": True,
        "send_user_signal": None,
    }
    assert document["stop"] == {
        "seconds": ESTIMATED_STOP_S,
        "measured": False,
        "detail": document["stop"]["detail"],
    }
    modes = {
        p["name"]: (p["preempt_mode"], p["preempted"], p["grace_time_s"]) for p in document["partitions"]
    }
    assert modes == {"low": ("REQUEUE", True, 20), "cancel": ("CANCEL", True, 20), "high": ("OFF", False, 0)}
    low = finding(document, "low", "preemption-time")
    assert low["severity"] == "ok" and "30 s from the signal to SIGKILL" in low["nnslurm"]
    assert set(low) == {"topic", "severity", "setting", "nnslurm", "fix"}
    topics = [f["topic"] for f in document["findings"]]
    assert topics == ["end-time", "backfill", "requeue", "max-batch-requeue", "process-tracking"]


def test_dev_cluster_with_a_short_kill_wait_loses_template_jobs_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`slurm-dev-cluster set KillWait 2`: a template job hears SIGTERM only after the grace and
    has 2 s; a `nnslurm submit` job still has 20 + 2 s."""
    code, out, _ = doctor(cluster(KillWait="2 sec"), capsys)
    assert code == 1
    assert "2 finding(s) can lose work (exit status 1):" in out
    assert "- partition low, preemption-time: SlurmctldParameters=preempt_send_user_signal" in out
    assert "- partition cancel, preemption-time:" in out
    _, document = as_json(cluster(KillWait="2 sec"), capsys)
    low = finding(document, "low", "preemption-time")
    assert low["severity"] == "loses-work"
    assert "has 22 s, enough" in low["nnslurm"] and "KillWait = 2 s" in low["nnslurm"]
    assert "KillWait=20" in low["fix"] and "nnslurm submit" in low["fix"]
    assert [(w["partition"], w["topic"]) for w in document["loses_work"]] == [
        ("low", "preemption-time"),
        ("cancel", "preemption-time"),
    ]
    assert finding(document, "high", "preemption")["severity"] == "ok"


def test_run_folders_measured_stop_decides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run whose stops took 40 s: 20 s grace + 10 s KillWait is not enough, even for submit jobs."""
    run = write_log(
        tmp_path / "fold_0",
        [
            {"event": "checkpoint", "time": -300, "seconds": 3.0},
            {"event": "stopped", "time": -200, "signal": "USR1", "signal_to_durable_s": 12.5},
            {"event": "stopped", "time": -100, "signal": "TERM", "signal_to_durable_s": 40.0},
        ],
    )
    code, document = as_json(cluster(), capsys, str(run), "--partition", "low")
    assert code == 1
    assert document["stop"]["seconds"] == 40.0 and document["stop"]["measured"] is True
    assert "the slowest of the 2 most recent stops of" in document["stop"]["detail"]
    assert [p["name"] for p in document["partitions"]] == ["low"]
    low = finding(document, "low", "preemption-time")
    assert (
        low["severity"] == "loses-work"
        and "30 s from the signal to SIGKILL, a stop needs 40 s" in low["nnslurm"]
    )
    assert "raise partition low's GraceTime to 40 s or more" in low["fix"]
    assert "PartitionName=low ... GraceTime=40" in low["fix"] and "KillWait to 30" in low["fix"]
    assert "templates also need SlurmctldParameters=preempt_send_user_signal" in low["fix"]
    assert "or KillWait=50" in low["fix"]


def test_run_folder_with_checkpoints_only_and_with_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_log(tmp_path / "a", [{"event": "checkpoint", "time": -10, "seconds": 1.5}])
    _, document = as_json(cluster(), capsys, str(run))
    assert (
        document["stop"]["seconds"] == 3.5
        and "the one recorded checkpoint write of" in document["stop"]["detail"]
    )
    empty = tmp_path / "b"
    empty.mkdir()
    _, document = as_json(cluster(), capsys, str(empty))
    assert document["stop"]["measured"] is False and "recorded no stop" in document["stop"]["detail"]


def test_dev_cluster_without_preemption_type(capsys: pytest.CaptureFixture[str]) -> None:
    code, document = as_json(cluster(PreemptType="preempt/none", KillWait="2 sec"), capsys)
    assert code == 0  # nothing is preempted: KillWait does not matter
    assert {p["preempt_mode"] for p in document["partitions"]} == {"OFF"}
    assert all(f["topic"] != "preemption-time" for p in document["partitions"] for f in p["findings"])


def test_job_requeue_off_and_no_backfill(capsys: pytest.CaptureFixture[str]) -> None:
    code, document = as_json(cluster(JobRequeue="0", SchedulerType="sched/builtin"), capsys)
    assert code == 0
    requeue = finding(document, None, "requeue")
    assert requeue["severity"] == "info" and "nnslurm submits with --requeue" in requeue["nnslurm"]
    assert "needs --requeue too" in requeue["nnslurm"]
    backfill = finding(document, None, "backfill")
    assert backfill["severity"] == "info" and backfill["fix"].startswith("SchedulerType=sched/backfill")


def test_suspend_and_gang(capsys: pytest.CaptureFixture[str]) -> None:
    fake = cluster()
    fake.answers["scontrol show partition"] = [
        recorded("22.05", "partition").replace("PreemptMode=REQUEUE", "PreemptMode=SUSPEND,GANG")
    ]
    code, document = as_json(fake, capsys, "-p", "low")
    assert code == 0
    low = finding(document, "low", "preemption")
    assert low["severity"] == "info" and low["setting"].startswith("PreemptMode=SUSPEND,GANG")
    assert (
        "suspended, not told to stop" in low["nnslurm"] and "nothing is lost but the time" in low["nnslurm"]
    )
    assert document["partitions"][0]["preempt_mode"] == "SUSPEND"


# --- a 23.11 site ---------------------------------------------------------------------------------


def test_23_11_site(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = doctor(cluster("23.11"), capsys)
    assert code == 0
    assert out.startswith("SLURM 23.11.4, cluster hpc2")
    assert "jobs get SLURM_JOB_END_TIME" in out
    assert "MaxBatchRequeue=5" in out and "JobHoldMaxRequeue" in out
    assert "SignalChildrenProcesses=no" in out and "signals only a step's main process" in out
    assert "PreemptParameters=send_user_signal" in out
    _, document = as_json(cluster("23.11"), capsys)
    modes = {p["name"]: (p["preempt_mode"], p["preempted"]) for p in document["partitions"]}
    assert modes == {"gpu": ("REQUEUE", True), "scavenger": ("CANCEL", True), "urgent": ("OFF", False)}
    urgent = finding(document, "urgent", "max-time")
    assert urgent["severity"] == "info" and "--time 04:00:00" in urgent["fix"]
    gpu = finding(document, "gpu", "preemption-time")
    assert (
        gpu["severity"] == "ok"
        and "30 s from the signal" in gpu["nnslurm"]
        and "templates" not in gpu["nnslurm"]
    )


def test_23_11_site_with_a_slow_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_log(tmp_path / "run", [{"event": "stopped", "time": -5, "signal_to_durable_s": 45.0}])
    code, document = as_json(cluster("23.11"), capsys, str(run))
    assert code == 1
    assert [(w["partition"], w["topic"]) for w in document["loses_work"]] == [("gpu", "preemption-time")]
    assert "GraceTime to 30 s" in document["loses_work"][0]["fix"]
    assert finding(document, "scavenger", "preemption-time")["severity"] == "ok"  # 120 + 30 s
    walltime = finding(document, "gpu", "walltime-signal")
    assert walltime["severity"] == "ok"  # 45 s < the signal's 120 s lead


def test_qos_preemption(capsys: pytest.CaptureFixture[str]) -> None:
    fake = cluster("23.11", PreemptType="preempt/qos")
    fake.answers["sacctmgr"] = ["preemptible|REQUEUE|00:00:05\n"]
    code, document = as_json(fake, capsys, "--qos", "preemptible", "-p", "gpu")
    assert fake.ran("sacctmgr -P -n show qos preemptible format=Name,PreemptMode,GraceTime")
    assert code == 0  # 5 s grace + 30 s KillWait
    assert finding(document, None, "qos")["setting"] == "QOS preemptible: PreemptMode=REQUEUE GraceTime=5 s"
    gpu = document["partitions"][0]
    assert (gpu["preempt_mode"], gpu["grace_time_s"]) == ("REQUEUE", 5)
    without = cluster("23.11", PreemptType="preempt/qos")
    code, document = as_json(without, capsys, "-p", "gpu")
    assert code == 0 and document["partitions"][0]["preempt_mode"] == "UNKNOWN"
    assert "--qos" in finding(document, "gpu", "preemption")["fix"]


def test_qos_that_cannot_be_read(capsys: pytest.CaptureFixture[str]) -> None:
    fake = cluster()
    fake.fail["sacctmgr"] = (1, "sacctmgr: error: Problem talking to the database: Connection refused")
    code, document = as_json(fake, capsys, "--qos", "normal")
    assert code == 0
    qos = finding(document, None, "qos")
    assert qos["setting"] == "QOS normal: could not be read" and "Connection refused" in qos["nnslurm"]
    fake = cluster()
    fake.answers["sacctmgr"] = [""]
    _, document = as_json(fake, capsys, "--qos", "ghost")
    assert "does not know a QOS 'ghost'" in finding(document, None, "qos")["nnslurm"]


# --- bad input and no SLURM -------------------------------------------------------------------------


def test_unknown_partition(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    code, out, _ = doctor(cluster(), capsys, "--partition", "gpu")
    assert code == 2 and out == ""
    assert "no partition gpu on this cluster" in caplog.text and "low, cancel, high" in caplog.text


def test_run_folder_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    code, out, _ = doctor(cluster(), capsys, str(tmp_path / "missing"))
    assert code == 2 and out == "" and "is not a folder" in caplog.text


def test_scontrol_failing_is_exit_2(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeCluster(
        fail={"scontrol show config": (1, "slurm_load_ctl_conf error: Unable to contact slurm controller")}
    )
    code, out, _ = doctor(fake, capsys)
    assert code == 2 and out == ""
    assert (
        "SLURM is not reachable from here" in caplog.text
        and "Unable to contact slurm controller" in caplog.text
    )
    assert "scontrol ping" in caplog.text and "Traceback" not in caplog.text


def test_scontrol_answering_nonsense_is_exit_2(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeCluster(answers={"scontrol show config": ["<html>proxy error</html>"]})
    code, out, _ = doctor(fake, capsys, "--json")
    assert code == 2 and out == "" and "cannot read the output of `scontrol show config`" in caplog.text


def test_without_slurm_in_a_fresh_process(tmp_path: Path) -> None:
    """No scontrol on the PATH: exit 2, one clear message, nothing on stdout, no traceback."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    for json_flag in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-m", "nnslurm", "doctor", *json_flag],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert "SLURM is not reachable from here" in result.stderr
        assert "scontrol: command not found" in result.stderr
        assert "Traceback" not in result.stderr


def test_help_answers_an_admin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nnslurm", "doctor", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for words in (
        "read-only",
        "scontrol show config",
        "sacctmgr -P -n show qos",
        "loses-work",
        "exit status: 0",
        "2 SLURM not reachable",
        "loses_work",
        "exit_status",
        "preemption-time",
        "GraceTime + KillWait",
    ):
        assert words in result.stdout, words


# --- the judgement alone ----------------------------------------------------------------------------


def test_diagnose_is_pure_evidence_in_findings_out() -> None:
    config = parse_config(recorded("22.05", "config"))
    partitions = parse_partitions(recorded("22.05", "partition"))
    slow = StopNeed(200.0, measured=True, detail="test")
    diagnosis = diagnose(Evidence(config=config, partitions=partitions, stop=slow, only=("low",)))
    assert [p.name for p in diagnosis.partitions] == ["low"]
    by_topic = {f.topic: f for f in diagnosis.partitions[0].findings}
    assert by_topic["walltime-signal"].severity == Severity.INFO  # 200 s > the signal's 120 s lead
    assert "--signal-delay 210" in (by_topic["walltime-signal"].fix or "")
    assert by_topic["preemption-time"].severity == Severity.LOSES_WORK
    assert diagnosis.exit_status == 1
