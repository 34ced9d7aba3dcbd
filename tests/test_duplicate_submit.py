"""A second `nnslurm submit` of a run already queued or running is refused at submission, naming the
job that holds it; a run that is merely stopped and resumable is submitted as usual (issue 12 item 6).
SLURM is the FakeCluster at the subprocess seam; the local case uses a real living process."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import FakeCluster, started, stop, wait_for, write_log

from nnslurm import cli
from nnslurm.jobs import submission as launch
from nnslurm.runs.holder import holders
from nnslurm.runs.state import RunState
from nnslurm.slurm.commands import use_runner


def submitted(job: str, t: float) -> dict:
    return {"event": "submitted", "time": t, "job_id": job, "executor": "slurm"}


def run(tmp_path: Path, fold: str, records: list[dict]) -> Path:
    return write_log(tmp_path / "Dataset501_X" / "T__P__3d_fullres" / f"fold_{fold}", records)


@pytest.mark.parametrize(
    ("squeue", "state"),
    [("101|RUNNING|None", RunState.RUNNING), ("101|PENDING|BeginTime", RunState.REQUEUED)],
)
def test_a_job_slurm_runs_or_queues_holds_the_run(tmp_path: Path, squeue: str, state: RunState) -> None:
    log = [submitted("101", -60), *started("101", -50)]
    if state == RunState.REQUEUED:
        log += stop("101", -10, 0, 40, "walltime")
    folder = run(tmp_path, "0", log)
    with use_runner(FakeCluster.queue(squeue=squeue)):
        (held,) = holders([folder])
    assert (held.job_id, held.state) == ("101", state)
    assert "job 101" in held.describe() and squeue.split("|")[1] in held.describe()


def test_a_stopped_run_slurm_no_longer_knows_is_free(tmp_path: Path) -> None:
    """Walltime with --max-requeues used up: the job ended, the run is resumable: submit it again."""
    folder = run(
        tmp_path,
        "0",
        [submitted("101", -60), *started("101", -50), *stop("101", -10, 0, 40, "requeue-limit")],
    )
    with use_runner(FakeCluster.queue(squeue="", sacct="101|FAILED")):
        assert holders([folder]) == []


def test_the_log_alone_is_not_evidence(tmp_path: Path) -> None:
    """The log says running, but SLURM has no record of the job (not queued, not running)."""
    folder = run(tmp_path, "0", [submitted("101", -60), *started("101", -50)])
    with use_runner(FakeCluster.queue(squeue="", sacct="")):
        assert holders([folder]) == []


def test_a_living_local_training_process_holds_the_run(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # nnslurm"])
    cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
    wait_for(lambda: b"nnslurm" in cmdline.read_bytes(), 10, "the process to exec")
    try:
        host = socket.gethostname()
        log = [dict(record, host=host) for record in started("local-1", -5, pid=sleeper.pid)]
        folder = run(tmp_path, "0", log)
        (held,) = holders([folder])
        assert held.job_id == "local-1" and f"process {sleeper.pid}" in held.evidence
    finally:
        sleeper.kill()
        sleeper.wait()
    assert holders([folder]) == []  # the process is gone: nothing holds the run


# --- through `nnslurm submit` --------------------------------------------------------------------


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Folds 0 and 1 of a run whose folders are in tmp_path; no dataset needed, nothing submitted."""
    folders = {
        "0": run(tmp_path, "0", [submitted("101_0", -60), *started("101_0", -50)]),
        "1": run(
            tmp_path, "1", [submitted("90", -600), *started("90", -590), *stop("90", -300, 1, 3, "cancel")]
        ),
    }
    monkeypatch.setattr(launch, "run_folder", lambda job: folders[job.run.fold])
    monkeypatch.setattr(launch, "check_runs", lambda jobs: None)
    monkeypatch.setattr(launch, "choose_executor", lambda requested: "slurm")
    sent: list[launch.Submission] = []

    def fake_submit(submission: launch.Submission) -> list[object]:
        sent.append(submission)
        return [SimpleNamespace(job_id=f"20{index}") for index, _ in enumerate(submission.jobs)]

    monkeypatch.setattr(launch, "submit", fake_submit)
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    folders["sent"] = sent  # type: ignore[assignment]
    yield folders


def submit(*folds: str, dry_run: bool = False) -> list[str]:
    args = ["submit", "-d", "501", "-c", "3d_fullres", "--executor", "slurm"]
    args += [arg for fold in folds for arg in ("-f", fold)]
    return [*args, "--dry-run"] if dry_run else args


def test_submit_of_a_running_array_task_is_refused(
    two_runs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with use_runner(FakeCluster.queue(squeue="101_0|RUNNING|None")):
        code = cli.main(submit("0", "1"))
    err = caplog.text
    assert code == 1
    assert "nothing was submitted" in err and "job 101_0 (SLURM: RUNNING)" in err
    assert str(two_runs["0"]) in err and str(two_runs["1"]) not in err  # fold 1 is merely stopped
    assert "nnslurm status" in err and "nnslurm cancel 101_0" in err
    assert "Traceback" not in err
    assert two_runs["sent"] == []  # type: ignore[comparison-overlap]


def test_submit_of_a_stopped_run_goes_ahead(two_runs: dict[str, Path]) -> None:
    with use_runner(FakeCluster.queue(squeue="101_0|RUNNING|None", sacct="90|CANCELLED")):
        assert cli.main(submit("1")) == 0
    assert len(two_runs["sent"]) == 1  # type: ignore[arg-type]


def test_dry_run_only_warns(two_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with use_runner(FakeCluster.queue(squeue="101_0|PENDING|Priority")):
        code = cli.main(submit("0", dry_run=True))
    out = capsys.readouterr().out
    assert code == 0
    assert "# WARNING: this submission would be refused" in out and "job 101_0 (SLURM: PENDING)" in out
    assert "#SBATCH" in out
