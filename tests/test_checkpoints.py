"""Checkpoint files: atomic writes, validation and the newest-valid rule, on real files."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from nnslurm.checkpoints import (
    FORMAT_VERSION,
    META_KEY,
    NoUsableCheckpointError,
    RunIdentity,
    UnreadableCheckpointError,
    atomic_torch_save,
    candidates,
    check_belongs,
    choose_checkpoint,
    legacy_weights_checksum,
    newest_valid,
    read,
    read_checkpoint,
    remove_stale_temp_files,
    safe_load,
    wait_for_discards,
    weights_checksum,
)
from nnslurm.checkpoints.choose import UNUSABLE_SUFFIX
from nnslurm.core.errors import CheckpointError

IDENTITY = RunIdentity("Dataset501_Synthetic", "nnUNetPlans", "3d_fullres", "0", "nnUNetTrainer")


def checkpoint(
    epoch: int,
    iteration: int | None = None,
    fold: int = 0,
    trainer: str = "nnUNetTrainer",
    finished: bool = False,
    overrides: dict[str, int] | None = None,
) -> dict:
    """nnU-Net's keys; with `iteration` also nnslurm's entry (without: a file plain nnU-Net wrote)."""
    weights = {"conv.weight": torch.full((4, 4), float(epoch))}
    state = {
        "network_weights": weights,
        "optimizer_state": {},
        "current_epoch": epoch,
        "trainer_name": trainer,
        "init_args": {
            "plans": {"dataset_name": "Dataset501_Synthetic", "plans_name": "nnUNetPlans"},
            "configuration": "3d_fullres",
            "fold": fold,
        },
    }
    if iteration is not None:
        state[META_KEY] = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "iteration": iteration,
            "finished": finished,
            "overrides": overrides or {},
            "weights_crc32": weights_checksum(weights),
        }
    return state


def test_atomic_save_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint_latest.pth"
    atomic_torch_save(checkpoint(1, 0), target)
    atomic_torch_save(checkpoint(2, 0), target)
    assert read_checkpoint(target).epoch == 2
    wait_for_discards()  # the replaced file is unlinked in the background
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as nnU-Net's own files


def test_disk_full_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "checkpoint_latest.pth"
    atomic_torch_save(checkpoint(1, 0), target)
    before = target.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="No space left on device") as error:
        atomic_torch_save(checkpoint(2, 0), target)
    assert str(target) in str(error.value)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_latest.pth"]


def test_newer_best_wins_over_older_latest(tmp_path: Path) -> None:
    torch.save(checkpoint(40), tmp_path / "checkpoint_latest.pth")  # plain nnU-Net: epoch 40
    torch.save(checkpoint(45, 0), tmp_path / "checkpoint_best.pth")
    chosen, skipped = newest_valid(candidates(tmp_path))
    assert chosen is not None and chosen.path.name == "checkpoint_best.pth" and not skipped


def test_mid_epoch_latest_beats_best_of_same_epoch(tmp_path: Path) -> None:
    torch.save(checkpoint(45, 0), tmp_path / "checkpoint_best.pth")
    torch.save(checkpoint(45, 120), tmp_path / "checkpoint_latest.pth")
    chosen, _ = newest_valid(candidates(tmp_path))
    assert chosen is not None and chosen.position == (45, 120)


def test_final_wins_on_equal_progress(tmp_path: Path) -> None:
    torch.save(checkpoint(3, 0), tmp_path / "checkpoint_best.pth")
    torch.save(checkpoint(3, 0, finished=True), tmp_path / "checkpoint_final.pth")
    chosen, _ = newest_valid(candidates(tmp_path))
    assert chosen is not None and chosen.finished and chosen.path.name == "checkpoint_final.pth"


def test_truncated_newest_is_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.save(checkpoint(10, 0), tmp_path / "checkpoint_best.pth")
    torch.save(checkpoint(12, 7), tmp_path / "checkpoint_latest.pth")
    data = (tmp_path / "checkpoint_latest.pth").read_bytes()
    (tmp_path / "checkpoint_latest.pth").write_bytes(data[: len(data) // 2])
    chosen, skipped = newest_valid(candidates(tmp_path))
    assert chosen is not None and chosen.position == (10, 0)
    assert [(item.path.name, item.damaged) for item in skipped] == [("checkpoint_latest.pth", True)]
    assert "checkpoint_latest.pth" in caplog.text


def test_garbage_and_corrupt_weights_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_final.pth").write_bytes(b"not a checkpoint at all")
    corrupt = checkpoint(20, 3)
    corrupt["network_weights"]["conv.weight"][0, 0] = 123.0  # bit rot after the checksum
    torch.save(corrupt, tmp_path / "checkpoint_latest.pth")
    torch.save(checkpoint(5, 0), tmp_path / "checkpoint_best.pth")
    chosen, skipped = newest_valid(candidates(tmp_path))
    assert chosen is not None and chosen.position == (5, 0)
    reasons = {item.path.name: item.reason for item in skipped}
    assert "checksum" in reasons["checkpoint_latest.pth"]
    assert "does not load" in reasons["checkpoint_final.pth"]
    assert all(item.damaged for item in skipped)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fold": 1}, "fold '1'"), ({"trainer": "nnUNetTrainerDA5"}, "trainer 'nnUNetTrainerDA5'")],
)
def test_checkpoint_of_another_run_is_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    torch.save(checkpoint(3, 0, **kwargs), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="belongs to another run") as error:
        check_belongs(read_checkpoint(tmp_path / "other.pth"), IDENTITY, {})
    assert message in str(error.value)


def test_other_epoch_settings_are_refused(tmp_path: Path) -> None:
    torch.save(checkpoint(3, 0, overrides={"num_epochs": 10}), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="num_epochs=10"):
        check_belongs(read_checkpoint(tmp_path / "c.pth"), IDENTITY, {"num_epochs": 20})


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint_latest.pth.nnslurm-tmp-123-abcd").write_bytes(b"half")
    (tmp_path / "checkpoint_best.pth").write_bytes(b"kept")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".checkpoint_latest.pth.nnslurm-tmp-123-abcd"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_best.pth"]


class RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch /tmp/nnslurm-test-pwned",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    state = checkpoint(99, 0)
    state["init_args"]["payload"] = RunsCode()
    torch.save(state, tmp_path / "checkpoint_latest.pth")
    torch.save(checkpoint(3, 0), tmp_path / "checkpoint_best.pth")
    with pytest.raises(UnreadableCheckpointError, match="could run arbitrary code") as error:
        read_checkpoint(tmp_path / "checkpoint_latest.pth")
    assert "posix.system" in str(error.value) and not error.value.unusable.damaged
    chosen, skipped = newest_valid(candidates(tmp_path))
    assert chosen is not None and chosen.position == (3, 0)
    assert [item.path.name for item in skipped] == ["checkpoint_latest.pth"]
    assert not Path("/tmp/nnslurm-test-pwned").exists()


def legacy_weights() -> dict[str, torch.Tensor]:
    weight = torch.arange(600, dtype=torch.float32).reshape(20, 30) / 7
    half = torch.arange(7, dtype=torch.bfloat16)
    return {
        "encoder.conv.weight": weight,
        "decoder.encoder.conv.weight": weight,
        "transposed": weight.t(),
        "row": weight[3],
        "empty": torch.empty(0),
        "half": half,
        "half.again": half,
        "ints": torch.arange(5),
    }


# weights_crc32 of legacy_weights() as nnslurm 0.1 (format 1, crc32_combine) computed it.
FORMAT_1_CHECKSUM = 2898430018


@pytest.mark.parametrize("format_field", [{"format": 1}, {}], ids=["format 1", "no format field"])
def test_file_of_the_old_format_still_verifies(tmp_path: Path, format_field: dict) -> None:
    assert legacy_weights_checksum(legacy_weights()) == FORMAT_1_CHECKSUM
    state = checkpoint(4, 2)
    state["network_weights"] = legacy_weights()
    state[META_KEY] = {"epoch": 4, "iteration": 2, "weights_crc32": FORMAT_1_CHECKSUM, **format_field}
    torch.save(state, tmp_path / "checkpoint_latest.pth")
    assert read_checkpoint(tmp_path / "checkpoint_latest.pth").position == (4, 2)

    state["network_weights"]["half"][3] = 100.0  # one shared value changed after the checksum
    torch.save(state, tmp_path / "checkpoint_latest.pth")
    with pytest.raises(UnreadableCheckpointError, match="fails its checksum") as error:
        read_checkpoint(tmp_path / "checkpoint_latest.pth")
    assert error.value.unusable.damaged


def test_a_newer_format_is_not_damage(tmp_path: Path) -> None:
    state = checkpoint(4, 2)
    state[META_KEY]["format"] = FORMAT_VERSION + 1
    torch.save(state, tmp_path / "checkpoint_latest.pth")
    with pytest.raises(UnreadableCheckpointError, match=f"checkpoint format {FORMAT_VERSION + 1}") as error:
        read_checkpoint(tmp_path / "checkpoint_latest.pth")
    assert not error.value.unusable.damaged
    assert "cannot be read in this environment" in str(error.value)


def test_numpy_values_round_trip_through_the_safe_loader(tmp_path: Path) -> None:
    """nnU-Net's logger and RNG states hold numpy values; numpy_pickle_globals must allow what
    numpy pickles them with (checked against numpy 2.4.6: numpy._core.multiarray)."""
    values = {
        "float": np.float64(0.25),
        "int": np.int64(7),
        "bool": np.bool_(True),
        "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "dtype": np.dtype("<u2"),
        "rng": np.random.RandomState(3).get_state(),
    }
    atomic_torch_save(values, tmp_path / "numpy.pth")
    loaded = safe_load(tmp_path / "numpy.pth")
    assert loaded["float"] == values["float"] and type(loaded["float"]) is np.float64
    assert loaded["int"] == 7 and loaded["bool"] and loaded["dtype"] == values["dtype"]
    assert np.array_equal(loaded["array"], values["array"]) and loaded["array"].dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(loaded["rng"], values["rng"], strict=True))


class Numpy1Pickler(pickle._Pickler):
    """Pickles numpy's reconstructors under the names numpy 1.x gave them (numpy.core.multiarray)."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if getattr(obj, "__module__", None) == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + f"numpy.core.multiarray\n{obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def test_numpy_values_of_a_numpy_1_file_load(tmp_path: Path) -> None:
    torch.save(
        {"float": np.float64(0.5), "array": np.arange(3)},
        tmp_path / "numpy1.pth",
        pickle_module=SimpleNamespace(Pickler=Numpy1Pickler, __name__="numpy1"),
    )
    with zipfile.ZipFile(tmp_path / "numpy1.pth") as archive:
        pickled = next(archive.read(name) for name in archive.namelist() if name.endswith("data.pkl"))
    assert b"numpy.core.multiarray\nscalar" in pickled and b"numpy._core" not in pickled
    loaded = safe_load(tmp_path / "numpy1.pth")
    assert loaded["float"] == 0.5 and np.array_equal(loaded["array"], np.arange(3))


# --- files it cannot read are never discarded ------------------------------------------------
def with_custom_object(state: dict) -> dict:
    """A custom trainer's init_args holding an object the safe loader refuses (torch.save takes it)."""
    state["init_args"]["data_root"] = PurePosixPath("/data/custom")
    return state


def folder_bytes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "failure",
    [
        ModuleNotFoundError("No module named 'numpy._core'", name="numpy._core"),
        ImportError("cannot import name 'multiarray' from 'numpy._core'"),
        AttributeError("module 'numpy' has no attribute 'dtypes'"),
    ],
    ids=["ModuleNotFoundError", "ImportError", "AttributeError"],
)
def test_environment_failures_are_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    torch.save(checkpoint(3, 0), tmp_path / "checkpoint_latest.pth")

    def broken_environment() -> list:
        raise failure

    monkeypatch.setattr(read, "numpy_pickle_globals", broken_environment)
    chosen, skipped = newest_valid(candidates(tmp_path))
    assert chosen is None and len(skipped) == 1 and not skipped[0].damaged
    assert skipped[0].reason == f"{type(failure).__name__}: {failure}"
    assert str(skipped[0]) == (
        f"{tmp_path / 'checkpoint_latest.pth'} cannot be read in this environment: {skipped[0].reason}"
    )


def test_an_object_the_safe_loader_refuses_is_not_damage(tmp_path: Path) -> None:
    torch.save(with_custom_object(checkpoint(3, 0)), tmp_path / "checkpoint_latest.pth")
    _, (unusable,) = newest_valid(candidates(tmp_path))
    assert not unusable.damaged and "pathlib.PurePosixPath" in unusable.reason


def test_unreadable_checkpoints_stop_the_run_and_stay_untouched(tmp_path: Path) -> None:
    torch.save(with_custom_object(checkpoint(3, 2)), tmp_path / "checkpoint_latest.pth")
    torch.save(with_custom_object(checkpoint(3, 0)), tmp_path / "checkpoint_best.pth")
    before = folder_bytes(tmp_path)
    with pytest.raises(NoUsableCheckpointError) as error:
        choose_checkpoint(tmp_path, "newest", IDENTITY, {})
    message = str(error.value)
    assert f"no checkpoint in {tmp_path} can be resumed" in message
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth"):
        assert f"{name} cannot be read in this environment: the safe loader" in message
    assert "pathlib.PurePosixPath" in message
    hint = error.value.hint or ""
    assert "--resume-from PATH" in hint and "--start-over" in hint
    assert {item.path.name for item in error.value.unusable} == {
        "checkpoint_latest.pth",
        "checkpoint_best.pth",
    }
    assert folder_bytes(tmp_path) == before


def test_an_unreadable_file_beside_a_usable_one_stops_the_run(tmp_path: Path) -> None:
    """It may hold more progress than the usable one: resuming would overwrite it."""
    torch.save(with_custom_object(checkpoint(4, 2)), tmp_path / "checkpoint_latest.pth")
    torch.save(checkpoint(3, 0), tmp_path / "checkpoint_best.pth")
    with pytest.raises(
        NoUsableCheckpointError, match=r"resuming from checkpoint_best.pth \(epoch 3, iteration 0\)"
    ):
        choose_checkpoint(tmp_path, "newest", IDENTITY, {})
    chosen = choose_checkpoint(tmp_path, str(tmp_path / "checkpoint_best.pth"), IDENTITY, {})
    assert chosen is not None and chosen.position == (3, 0)  # the way forward the hint names


def test_only_damaged_checkpoints_stop_the_run(tmp_path: Path) -> None:
    torch.save(checkpoint(3, 2), tmp_path / "checkpoint_latest.pth")
    data = (tmp_path / "checkpoint_latest.pth").read_bytes()
    (tmp_path / "checkpoint_latest.pth").write_bytes(data[:-100])
    with pytest.raises(NoUsableCheckpointError, match=r"checkpoint_latest\.pth damaged: does not load"):
        choose_checkpoint(tmp_path, "newest", IDENTITY, {})


def test_a_truncated_file_among_good_ones_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.save(checkpoint(3, 0), tmp_path / "checkpoint_best.pth")
    torch.save(checkpoint(3, 4), tmp_path / "checkpoint_latest.pth")
    data = (tmp_path / "checkpoint_latest.pth").read_bytes()
    (tmp_path / "checkpoint_latest.pth").write_bytes(data[: len(data) // 3])
    chosen = choose_checkpoint(tmp_path, "newest", IDENTITY, {})
    assert chosen is not None and chosen.path.name == "checkpoint_best.pth"
    assert "skipping" in caplog.text and "checkpoint_latest.pth damaged" in caplog.text


def test_start_over_moves_the_files_aside_and_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.save(with_custom_object(checkpoint(3, 2)), tmp_path / "checkpoint_latest.pth")
    torch.save(with_custom_object(checkpoint(3, 0)), tmp_path / "checkpoint_best.pth")
    (tmp_path / "nnslurm_events.jsonl").write_text("{}\n")
    before = folder_bytes(tmp_path)
    assert choose_checkpoint(tmp_path, "newest", IDENTITY, {}, start_over=True) is None
    after = folder_bytes(tmp_path)
    assert after.pop("nnslurm_events.jsonl") == before.pop("nnslurm_events.jsonl")
    moved = {re.sub(r"\.unusable-\d{8}T\d{6}$", "", name): digest for name, digest in after.items()}
    assert moved == before and len(moved) == len(after) == 2  # renamed, byte-identical, none deleted
    assert all(UNUSABLE_SUFFIX in name for name in after)
    assert "starting over: moved" in caplog.text and "checkpoint_latest.pth.unusable-" in caplog.text
    assert candidates(tmp_path) == []


def test_start_over_resumes_a_usable_checkpoint(tmp_path: Path) -> None:
    """A requeued job runs the same command again: --start-over must not discard progress."""
    torch.save(checkpoint(3, 2), tmp_path / "checkpoint_latest.pth")
    chosen = choose_checkpoint(tmp_path, "newest", IDENTITY, {}, start_over=True)
    assert chosen is not None and chosen.position == (3, 2)
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint_latest.pth"]


def test_an_empty_folder_starts_fresh(tmp_path: Path) -> None:
    assert choose_checkpoint(tmp_path, "newest", IDENTITY, {}) is None


def test_resume_from_an_unreadable_path_names_the_cause(tmp_path: Path) -> None:
    torch.save(with_custom_object(checkpoint(3, 0)), tmp_path / "mine.pth")
    with pytest.raises(UnreadableCheckpointError, match="cannot be read in this environment") as error:
        choose_checkpoint(tmp_path, str(tmp_path / "mine.pth"), IDENTITY, {})
    assert error.value.unusable.path == tmp_path / "mine.pth"
