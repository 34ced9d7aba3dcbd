"""`nnslurm train` inside an sbatch template's job, restarted after its node went down: before it
trains, it records what ended the previous start (sacct -D: NODE_FAIL), as submitit's jobs do
(tests/test_node_failure.py). SLURM is the FakeCluster at the subprocess seam; the training itself
is replaced, to see what the log held when it would have begun."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import FakeCluster, started, write_log

from nnslurm import cli
from nnslurm.commands import train
from nnslurm.runs.events import read_events
from nnslurm.runs.interruptions import Kind
from nnslurm.slurm import commands
from nnslurm.training.process import TrainingOutcome

DATASET = "Dataset501_Synthetic"
SACCT_D = "15|NODE_FAIL\n15|RUNNING\n"


@pytest.fixture
def run_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SUBMITIT_LOCAL_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    folder = tmp_path / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    # the previous start of job 15 began and left no end: the node took it down
    return write_log(folder, [*started("15", -100), {"event": "checkpoint", "time": -60, "job_id": "15"}])


def train_recording(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[list[dict[str, Any]]]:
    """Replace the training: each call records the run's event log as the training would find it."""
    seen: list[list[dict[str, Any]]] = []

    def fake_training(job: object, after_stop: object) -> TrainingOutcome:
        seen.append([dict(record) for record in read_events(folder)])
        return TrainingOutcome(status="finished", output_folder=folder, epoch=10, iteration=0)

    monkeypatch.setattr(train, "run_stoppable", fake_training)
    return seen


def train_command() -> int:
    return cli.main(["train", DATASET, "3d_fullres", "0", "--device", "cpu"])


def test_a_restarted_template_job_records_the_node_failure_before_training(
    monkeypatch: pytest.MonkeyPatch, run_folder: Path
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "15")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    seen = train_recording(monkeypatch, run_folder)
    fake = FakeCluster(answers={"sacct -D": [SACCT_D]})
    with commands.use_runner(fake):
        assert train_command() == 0
    (log,) = seen
    (told,) = [record for record in log if record["event"] == "interrupted"]
    assert (told["kind"], told["accounting"], told["previous_restart_count"]) == (
        Kind.NODE_FAILURE,
        "NODE_FAIL",
        0,
    )
    assert "node failure" in told["reason"] and told["job_id"] == "15"
    assert [call[0] for call in fake.calls] == ["sacct"]  # nothing but the accounting question


@pytest.mark.parametrize(
    "environ",
    [{"SLURM_JOB_ID": "15"}, {}],  # a first start; outside SLURM
    ids=["first start", "outside SLURM"],
)
def test_nothing_is_asked_on_a_first_start_or_outside_slurm(
    monkeypatch: pytest.MonkeyPatch, run_folder: Path, environ: dict[str, str]
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen = train_recording(monkeypatch, run_folder)
    fake = FakeCluster(answers={"sacct -D": [SACCT_D]})
    with commands.use_runner(fake):
        assert train_command() == 0
    assert fake.calls == [] and not [r for r in seen[0] if r["event"] == "interrupted"]


def test_accounting_that_fails_does_not_stop_the_training(
    monkeypatch: pytest.MonkeyPatch, run_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "15")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    seen = train_recording(monkeypatch, run_folder)
    with commands.use_runner(FakeCluster(missing=True)):  # no sacct on this node
        assert train_command() == 0
    assert len(seen) == 1  # it trained
    (told,) = [r for r in read_events(run_folder) if r["event"] == "interrupted"]
    assert told["kind"] == Kind.KILL and "no accounting" in told["reason"]
