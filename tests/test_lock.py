"""The run lock on a filesystem without POSIX locks: a lock file, taken over only on evidence."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import TINY_TRAINING, NnunetEnv, wait_for

from nnslurm.core.errors import RunLockedError
from nnslurm.slurm import commands as slurm
from nnslurm.training import lock
from nnslurm.training.lock import EXCLUSIVE_FILE, RunLock


@pytest.fixture
def no_posix_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(lock, "lockf", fails)


def write_holder(folder: Path, pid: int, host: str | None = None, job_id: str | None = None) -> Path:
    path = folder / EXCLUSIVE_FILE
    holder = {"pid": pid, "host": host or socket.gethostname(), "job_id": job_id, "since": "then"}
    path.write_text(json.dumps(holder))
    return path


def assert_held_by_this_process(folder: Path) -> None:
    """Taken over: the lock file names this process now, and a second lock is refused naming it."""
    holder = json.loads((folder / EXCLUSIVE_FILE).read_text())
    assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname()), holder
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        RunLock(folder).acquire()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def scontrol_says(stdout: str = "", returncode: int = 0, stderr: str = "") -> slurm.Runner:
    def runner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ["scontrol", "show", "job"], argv
        return subprocess.CompletedProcess(argv, returncode, stdout, stderr)

    return runner


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_without_posix_locks_a_lock_file_is_taken_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    def fails(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(lock, "lockf", fails)
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / EXCLUSIVE_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert f"has no POSIX locks (lockf: {os.strerror(code)})" in caplog.text
    assert not (tmp_path / EXCLUSIVE_FILE).exists()  # released


def test_other_lockf_failures_still_mean_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def held(fd: int, operation: int) -> None:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(lock, "lockf", held)
    with pytest.raises(RunLockedError, match="already being trained"):
        RunLock(tmp_path).acquire()
    assert not (tmp_path / EXCLUSIVE_FILE).exists()


@pytest.mark.usefixtures("no_posix_locks")
def test_a_second_holder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        path = write_holder(tmp_path, sleeper.pid, job_id="4242")
        before = path.read_bytes()
        with pytest.raises(RunLockedError, match="already being trained") as error:
            RunLock(tmp_path).acquire()
        assert f"pid {sleeper.pid} on {socket.gethostname()}, SLURM job 4242" in str(error.value)
        assert "without POSIX locks" in str(error.value) and str(path) in str(error.value)
        assert path.read_bytes() == before
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.usefixtures("no_posix_locks")
def test_a_second_lock_in_this_process_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()


@pytest.mark.usefixtures("no_posix_locks")
def test_a_lock_file_of_a_dead_pid_on_this_host_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid = dead_pid()
    write_holder(tmp_path, pid)
    with RunLock(tmp_path):
        assert_held_by_this_process(tmp_path)
    assert f"stale lock file in {tmp_path}: pid {pid}" in caplog.text
    assert f"(pid {pid} is gone on {socket.gethostname()}); taking over" in caplog.text


@pytest.mark.usefixtures("no_posix_locks")
@pytest.mark.parametrize(
    ("runner", "taken"),
    [
        (scontrol_says("JobId=4242 JobState=COMPLETED Reason=None"), "its SLURM job 4242 is COMPLETED"),
        (scontrol_says("JobId=4242 JobState=PENDING Reason=BeginTime"), "its SLURM job 4242 is PENDING"),
        (scontrol_says(returncode=1, stderr="slurm_load_jobs error: Invalid job id specified"), "gone"),
        (scontrol_says("JobId=4242 JobState=RUNNING Reason=None"), None),
        (scontrol_says(returncode=1, stderr="Unable to contact slurm controller"), None),
    ],
    ids=["completed", "pending", "unknown to slurm", "running", "no answer"],
)
def test_a_lock_file_of_another_host_is_judged_by_its_slurm_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, runner: slurm.Runner, taken: str | None
) -> None:
    write_holder(tmp_path, 123, host="node-elsewhere", job_id="4242")
    with slurm.use_runner(runner):
        if taken is None:
            with pytest.raises(RunLockedError, match="pid 123 on node-elsewhere, SLURM job 4242"):
                RunLock(tmp_path).acquire()
            return
        with RunLock(tmp_path):
            assert_held_by_this_process(tmp_path)
    assert taken in caplog.text and "taking over" in caplog.text
    assert not (tmp_path / EXCLUSIVE_FILE).exists()  # released: not the old holder's file put back


@pytest.mark.usefixtures("no_posix_locks")
def test_a_lock_file_of_an_earlier_start_of_this_job_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Requeued after a SIGKILL: the job runs again (RUNNING), but its earlier start is gone."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    write_holder(tmp_path, 123, host="node-elsewhere", job_id="4242")
    with RunLock(tmp_path):
        assert_held_by_this_process(tmp_path)
    assert "an earlier start of this SLURM job 4242" in caplog.text


NO_LOCKS_CLI = (
    "import errno, os, sys\n"
    "import nnslurm.training.lock\n"
    "def fails(fd, operation):\n"
    "    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))\n"
    "nnslurm.training.lock.lockf = fails\n"
    "from nnslurm.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.nnunet
def test_real_trainer_without_posix_locks_trains_and_refuses_a_second(nnunet_env: NnunetEnv) -> None:
    env = nnunet_env.env()
    args = [
        sys.executable,
        "-c",
        NO_LOCKS_CLI,
        "train",
        *TINY_TRAINING,
        "--epochs",
        "50",
        "--no-final-validation",
    ]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    exclusive = nnunet_env.run_folder() / EXCLUSIVE_FILE
    try:
        wait_for(lambda: exclusive.exists() and exclusive.read_text(), 120, "the lock file")
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr[-3000:]
        assert "already being trained" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "without POSIX locks" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 75, stderr[-3000:]
    assert "has no POSIX locks (lockf: Function not implemented)" in stderr
    assert not exclusive.exists()  # released at the stop


def test_with_posix_locks_a_held_lock_file_still_refuses(tmp_path: Path) -> None:
    """Clients may mount one filesystem with and without POSIX locks: both kinds of lock count."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_holder(tmp_path, sleeper.pid)
        with pytest.raises(RunLockedError, match=f"pid {sleeper.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(tmp_path):  # its holder is gone now: taken over
        assert not (tmp_path / EXCLUSIVE_FILE).exists()
