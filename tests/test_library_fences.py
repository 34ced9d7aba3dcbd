"""Other libraries' insides, touched only for the length of a call: nnU-Net's trainer lookup is
replaced inside a `with` block and restored after it (an exception too), and the environment
nnslurm sets for nnU-Net (nnUNet_n_proc_DA) is as the caller left it once the training returns.
Also the one "is this process alive" (nnslurm.core.processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.core.processes import environment_restored, pid_exists, process_alive
from nnslurm.slurm.cpus import WORKERS_ENV, CpuBudget
from nnslurm.training import process
from nnslurm.workflow.predict_models import trainer_lookup


class Boom(Exception):
    pass


LOOKUPS = ("recursive_find_trainer_class_by_name", "recursive_find_python_class")


def lookups() -> dict[str, Any]:
    import nnunetv2.inference.predict_from_raw_data as predictor_module

    return {name: getattr(predictor_module, name) for name in LOOKUPS if hasattr(predictor_module, name)}


def test_the_trainer_lookup_is_replaced_inside_the_block_only() -> None:
    original = lookups()
    assert original, "nnU-Net's predictor has neither lookup: see nnslurm.workflow.predict_models"
    with trainer_lookup(("signal_trainers:nnUNetTrainerSignals",)):
        inside = lookups()
        assert all(inside[name] is not original[name] for name in original)
        by_name = inside.get("recursive_find_trainer_class_by_name")
        if by_name is not None:  # nnU-Net 2.7+
            assert by_name("nnUNetTrainer").__name__ == "nnUNetTrainer"
    assert lookups() == original


def test_the_trainer_lookup_is_restored_after_an_exception() -> None:
    original = lookups()
    with pytest.raises(Boom), trainer_lookup(()):
        assert lookups() != original
        raise Boom
    assert lookups() == original


@pytest.mark.parametrize("before", [None, "5"])
@pytest.mark.parametrize("ends", ["returns", "raises"])
def test_training_leaves_nnunet_n_proc_da_as_found(
    monkeypatch: pytest.MonkeyPatch, before: str | None, ends: str
) -> None:
    """What the training sets (0 when deterministic, the job's CPUs) does not outlive it."""
    if before is None:
        monkeypatch.delenv(WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKERS_ENV, before)
    seen: list[str | None] = []

    def train(*_: Any) -> Any:  # what _train does to the environment, then the end
        process._prepare_process(TrainingOptions(deterministic=True))
        seen.append(os.environ.get(WORKERS_ENV))
        process._follow_allocation(CpuBudget(cpus=3, workers=2, source="test"), threads=False)
        seen.append(os.environ.get(WORKERS_ENV))
        if ends == "raises":
            raise Boom
        return "outcome"

    monkeypatch.setattr(process, "_run_training", train)
    monkeypatch.setattr(process, "fix_malloc_thresholds", lambda: None)
    monkeypatch.setattr(process.rng, "seed_everything", lambda seed: None)
    job = TrainJob(RunSpec("501", "3d_fullres", "0"), TrainingOptions(deterministic=True))
    if ends == "raises":
        with pytest.raises(Boom):
            process.run_training(job, monitor=None)  # type: ignore[arg-type]
    else:
        assert process.run_training(job, monitor=None) == "outcome"  # type: ignore[arg-type]
    assert seen == ["0", "2"]  # nnU-Net saw them during the training
    assert os.environ.get(WORKERS_ENV) == before


def test_environment_restored_puts_back_set_changed_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNSLURM_TEST_A", "a")
    monkeypatch.delenv("NNSLURM_TEST_B", raising=False)
    with environment_restored("NNSLURM_TEST_A", "NNSLURM_TEST_B"):
        os.environ.pop("NNSLURM_TEST_A")
        os.environ["NNSLURM_TEST_B"] = "b"
    assert os.environ["NNSLURM_TEST_A"] == "a" and "NNSLURM_TEST_B" not in os.environ


def test_pid_exists_and_process_alive() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "nnslurm-marker"])
    try:
        assert pid_exists(sleeper.pid)
        cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
        deadline = time.monotonic() + 30
        while b"nnslurm-marker" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # between fork and exec it still shows pytest's command line
        assert process_alive(sleeper.pid)  # its command line names nnslurm
        assert not process_alive(sleeper.pid, names=(b"something-else",))  # a reused pid, as it were
        assert pid_exists(1)  # another user's process (init): kill(0) says EPERM, it exists
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not pid_exists(sleeper.pid)
    assert not process_alive(sleeper.pid)


def test_process_alive_without_proc_trusts_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_bytes

    def no_proc(path: Path) -> bytes:
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", no_proc)
    assert process_alive(os.getpid(), names=(b"nothing-here",))


def test_the_prediction_lock_says_predicted_into_with_its_own_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's refusal names what the folder is used for (no rewriting of a training's text)."""
    import errno

    from nnslurm.core.errors import RunLockedError
    from nnslurm.training import lock
    from nnslurm.workflow.predict import _output_lock

    def held(fd: int, operation: int) -> None:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(lock, "lockf", held)
    with pytest.raises(RunLockedError, match="already being predicted into by another process") as error:
        _output_lock(tmp_path).acquire()
    assert "being trained" not in str(error.value)
    assert error.value.hint is not None and "the other prediction" in error.value.hint
    with pytest.raises(RunLockedError, match="already being trained by another process") as error:
        lock.RunLock(tmp_path).acquire()  # a training's, as before
    assert error.value.hint == lock.STILL_HELD_HINT
