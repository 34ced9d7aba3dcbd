"""nnslurm train as a drop-in for nnUNetv2_train: --npz, --val, --val_best, -pretrained_weights and the
positional form, against nnU-Net's own code on the synthetic dataset (the tests marked nnunet)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import TINY_PLANS, TINY_TRAINING, NnunetEnv, nnslurm, read_events

from nnslurm.checkpoints import CheckpointInfo, RunIdentity
from nnslurm.core.errors import CheckpointError, NnslurmError, UsageError
from nnslurm.training.pretrained import META_FIELD, PretrainedWeights, record_for_resume
from nnslurm.training.process import _validate
from nnslurm.training.signals import StopMonitor
from nnslurm.training.validation import RECORD, Validation, begin, checkpoint_for, is_done

SIGNALS = ["-tr", "signal_trainers:nnUNetTrainerSignals"]
TINY_POSITIONAL = [
    "501", "3d_fullres", "0", "-p", TINY_PLANS,
    "--epochs", "3", "--iterations-per-epoch", "5", "--val-iterations-per-epoch", "2", "-device", "cpu",
]  # fmt: skip


# --- what "validated" means (nnslurm.training.validation) -----------------------------------------------


def test_a_validation_is_done_only_with_a_whole_summary_that_covers_the_request(tmp_path: Path) -> None:
    final, final_npz, best = Validation("final", False), Validation("final", True), Validation("best", False)
    assert not is_done(tmp_path, final)  # nothing yet
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "summary.json").write_text('{"metric_per_case": [')  # torn by a kill
    assert not is_done(tmp_path, final)
    (tmp_path / "validation" / "summary.json").write_text("{}")
    # no record: plain nnU-Net or an older nnslurm validated checkpoint_final without npz
    assert is_done(tmp_path, final) and not is_done(tmp_path, final_npz) and not is_done(tmp_path, best)
    (tmp_path / "validation" / "case.npz").write_text("old")
    begin(tmp_path, final_npz)
    assert not (tmp_path / "validation").exists()  # everything an earlier validation wrote is gone
    assert json.loads((tmp_path / RECORD).read_text()) == {"checkpoint": "final", "npz": True}
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "summary.json").write_text("{}")
    assert is_done(tmp_path, final_npz) and is_done(tmp_path, final) and not is_done(tmp_path, best)


def test_validating_a_missing_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NnslurmError, match=r"checkpoint_best\.pth does not exist") as error:
        checkpoint_for(tmp_path, Validation("best", False))
    assert "drop --val_best" in str(error.value)


class FailingValidation:
    """Stands in for nnU-Net's trainer: its validation fails as when SLURM's stop signal killed its
    spawned export workers (they have no handler)."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.calls.append(save_probabilities)
        raise RuntimeError("Some background worker is 6 feet under. Yuck.")


def test_a_validation_that_fails_after_a_stop_signal_is_that_stop(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_final.pth").write_bytes(b"")
    trainer, validation = FailingValidation(), Validation("final", npz=True)
    with StopMonitor(["USR1"], 60, lambda request, phase: None) as monitor:
        with pytest.raises(RuntimeError, match="6 feet under"):  # no stop asked: a failure
            _validate(trainer, tmp_path, validation, monitor, None)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _validate(trainer, tmp_path, validation, monitor, None) is monitor.request is not None
    assert trainer.calls == [True, True] and monitor.phase == "final validation"
    assert not is_done(tmp_path, validation)


# --- pretrained weights on resume (nnslurm.training.pretrained) -----------------------------------------


def checkpoint_info(tmp_path: Path, meta: dict) -> CheckpointInfo:
    identity = RunIdentity("Dataset501_Synthetic", TINY_PLANS, "3d_fullres", "0", "nnUNetTrainer")
    return CheckpointInfo(tmp_path / "checkpoint_latest.pth", 1, 2, False, identity, meta)


def test_a_resume_keeps_the_record_and_refuses_other_weights(tmp_path: Path) -> None:
    file = tmp_path / "w.pth"
    file.write_bytes(b"weights")
    given = PretrainedWeights.of_file(file)
    assert given.sha256 == hashlib.sha256(b"weights").hexdigest()
    same = checkpoint_info(tmp_path, {META_FIELD: given.record()})
    assert record_for_resume(given, same) == given.record()
    assert record_for_resume(None, same) == given.record()  # resumed without the flag: still recorded
    other = checkpoint_info(tmp_path, {META_FIELD: {"path": "/a.pth", "sha256": "0" * 64}})
    with pytest.raises(CheckpointError, match=r"not the file this run started from: /a\.pth"):
        record_for_resume(given, other)
    without = checkpoint_info(tmp_path, {META_FIELD: None})
    with pytest.raises(CheckpointError, match="started without pretrained weights"):
        record_for_resume(given, without)
    assert record_for_resume(None, without) is None
    assert record_for_resume(given, checkpoint_info(tmp_path, {})) == given.record()  # unverifiable
    with pytest.raises(UsageError, match="No such file"):
        PretrainedWeights.of_file(tmp_path / "missing.pth")


# --- the real trainer ----------------------------------------------------------------------------


def val_cases(env: NnunetEnv) -> list[str]:
    splits = json.loads((env.preprocessed / "Dataset501_Synthetic" / "splits_final.json").read_text())
    return sorted(splits[0]["val"])


def assert_complete(folder: Path, cases: list[str], npz: bool) -> None:
    """Every validation case written whole: segmentation (and .npz/.pkl) readable, metrics written."""
    import SimpleITK

    validation = folder / "validation"
    assert json.loads((validation / "summary.json").read_text())["metric_per_case"]
    for case in cases:
        assert SimpleITK.ReadImage(str(validation / f"{case}.nii.gz")).GetSize()
        if npz:
            with np.load(validation / f"{case}.npz") as arrays:
                assert arrays["probabilities"].ndim == 4
            with open(validation / f"{case}.pkl", "rb") as stream:
                assert pickle.load(stream)
    suffixes = (".nii.gz", ".npz", ".pkl") if npz else (".nii.gz",)
    assert sorted(p.name for p in validation.iterdir() if p.name != "summary.json") == sorted(
        f"{case}{suffix}" for case in cases for suffix in suffixes
    )


def since_last_start(events: list[dict]) -> list[dict]:
    """The records of the newest process: from its "resumed" (if any) and "started" on."""
    start = max(i for i, event in enumerate(events) if event["event"] == "started")
    if start > 0 and events[start - 1]["event"] == "resumed":
        start -= 1
    return events[start:]


def nnunet_train(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """nnU-Net's own nnUNetv2_train, from the same environment."""
    command = Path(sys.executable).with_name("nnUNetv2_train")
    return subprocess.run([str(command), *argv], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.nnunet
def test_positional_npz_run_writes_what_nnunet_val_npz_writes(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    result = nnslurm(["train", *TINY_POSITIONAL, "--npz"], nnunet_env.env())
    assert result.returncode == 0, result.stderr[-3000:]
    folder = nnunet_env.run_folder()  # the folder of the flag form (TINY_TRAINING)
    assert_complete(folder, val_cases(nnunet_env), npz=True)

    # The flag form names the same run: it finds it finished and validated, and does nothing.
    result = nnslurm(["train", *TINY_TRAINING, "--npz"], nnunet_env.env())
    assert result.returncode == 0, result.stderr[-3000:]
    last = since_last_start(read_events(folder))
    assert [e["event"] for e in last] == ["resumed", "started", "finished"]
    assert last[0]["checkpoint"] == "checkpoint_final.pth" and "validation" not in last[-1]

    # nnU-Net's own --val --npz on a copy of the finished run writes the same files.
    copy = tmp_path / "nnunet_results"
    shutil.copytree(nnunet_env.results, copy)
    theirs = copy / folder.relative_to(nnunet_env.results) / "validation"
    shutil.rmtree(theirs)
    result = nnunet_train(
        ["501", "3d_fullres", "0", "-p", TINY_PLANS, "--val", "--npz", "-device", "cpu"],
        nnunet_env.env(nnUNet_results=str(copy)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = folder / "validation"
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for npz in ours.glob("*.npz"):
        with np.load(npz) as mine, np.load(theirs / npz.name) as nnunet:
            assert set(mine) == set(nnunet)
            for key in mine:
                assert mine[key].shape == nnunet[key].shape, (npz.name, key)
                assert np.allclose(mine[key], nnunet[key], atol=1e-5), (npz.name, key)
    for pkl in ours.glob("*.pkl"):
        with open(pkl, "rb") as a, open(theirs / pkl.name, "rb") as b:
            assert set(pickle.load(a)) == set(pickle.load(b))


@pytest.mark.nnunet
def test_a_stop_during_final_validation_is_redone_whole(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    signals = {"NNSLURM_TEST_SIGNALS": "final", "NNSLURM_TEST_SIGNAL_STATE": str(tmp_path / "fired")}
    argv = ["train", *TINY_TRAINING, *SIGNALS, "--npz", "--stop-deadline", "1"]
    result = nnslurm(argv, nnunet_env.env(**signals))
    assert result.returncode == 75, result.stderr[-3000:]
    folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    stopped = read_events(folder)[-1]
    assert (stopped["event"], stopped["phase"]) == ("stopped", "final validation")
    assert not (folder / "validation" / "summary.json").exists()
    # What a kill mid-write leaves: a torn case file and a torn summary.
    cases = val_cases(nnunet_env)
    (folder / "validation").mkdir(exist_ok=True)
    (folder / "validation" / f"{cases[0]}.npz").write_bytes(b"PK\x03\x04 torn")
    (folder / "validation" / "summary.json").write_text('{"foreground_mean": {')

    result = nnslurm(argv, nnunet_env.env(**signals))  # "final" fired already: runs through
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(folder, cases, npz=True)
    last = since_last_start(read_events(folder))
    assert [e["event"] for e in last] == ["resumed", "started", "finished"]  # validated, nothing trained
    assert last[-1]["validation"] == {"checkpoint": "final", "npz": True}


@pytest.mark.nnunet
def test_val_validates_a_finished_run_only_and_resumes_after_a_stop(
    nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    result = nnslurm(["train", *TINY_TRAINING, *SIGNALS, "--val"], nnunet_env.env())
    assert result.returncode == 1
    assert "is not finished: there is no checkpoint_final.pth" in result.stderr and "HINT" in result.stderr
    assert list(nnunet_env.results.iterdir()) == []  # nothing written

    # --val_best without --val: train, then validate checkpoint_best.pth (as nnUNetv2_train).
    result = nnslurm(["train", *TINY_TRAINING, *SIGNALS, "--val_best"], nnunet_env.env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_events(folder)[-1]["validation"] == {"checkpoint": "best", "npz": False}
    assert_complete(folder, val_cases(nnunet_env), npz=False)
    final = (folder / "checkpoint_final.pth").read_bytes()

    # --val --val_best --npz, stopped during the validation, then run again: complete.
    signals = {"NNSLURM_TEST_SIGNALS": "final", "NNSLURM_TEST_SIGNAL_STATE": str(tmp_path / "fired")}
    argv = ["train", "501", "3d_fullres", "0", "-p", TINY_PLANS, *SIGNALS, "-device", "cpu"]
    argv += ["--val", "--val_best", "--npz", "--stop-deadline", "1"]  # nnU-Net's line: no epoch flags
    result = nnslurm(argv, nnunet_env.env(**signals))
    assert result.returncode == 75, result.stderr[-3000:]
    assert not (folder / "validation" / "summary.json").exists()
    result = nnslurm(argv, nnunet_env.env(**signals))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(folder, val_cases(nnunet_env), npz=True)
    last = since_last_start(read_events(folder))
    assert [e["event"] for e in last] == ["resumed", "started", "finished"]
    assert last[1]["validation_only"] and last[-1]["validation"] == {"checkpoint": "best", "npz": True}
    assert (folder / "checkpoint_final.pth").read_bytes() == final  # validation changes no checkpoint


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


@pytest.mark.nnunet
def test_pretrained_weights_start_a_fresh_run_only(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    # The pretrained file: a short finished run in other results.
    (tmp_path / "pretraining").mkdir()
    other = nnunet_env.env(nnUNet_results=str(tmp_path / "pretraining"))
    short = ["--epochs", "1", "--iterations-per-epoch", "2", "--no-final-validation"]
    result = nnslurm(["train", *TINY_TRAINING, *short], other)
    assert result.returncode == 0, result.stderr[-3000:]
    pretrained_file = next((tmp_path / "pretraining").rglob("checkpoint_final.pth"))
    pretrained = weights(pretrained_file)
    record = {
        "path": str(pretrained_file),
        "sha256": hashlib.sha256(pretrained_file.read_bytes()).hexdigest(),
    }

    folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    argv = [
        "train",
        *TINY_TRAINING,
        *SIGNALS,
        "--no-final-validation",
        "-pretrained_weights",
        str(pretrained_file),
    ]

    def start(points: str, name: str) -> subprocess.CompletedProcess[str]:
        extra = {"NNSLURM_TEST_SIGNALS": points, "NNSLURM_TEST_SIGNAL_STATE": str(tmp_path / name)}
        return nnslurm(argv, nnunet_env.env(nnUNet_n_proc_DA="0", **extra))

    # A fresh start, stopped before its first step: the weights are the pretrained ones, except
    # the segmentation layers (nnU-Net's load_pretrained_weights does not transfer those).
    result = start("startup", "fired-1")
    assert result.returncode == 75, result.stderr[-3000:]
    first = torch.load(folder / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert (first["nnslurm"]["epoch"], first["nnslurm"]["iteration"]) == (0, 0)
    transferred = [key for key in pretrained if ".seg_layers." not in key]
    assert transferred and all(torch.equal(first["network_weights"][k], pretrained[k]) for k in transferred)
    assert any(
        not torch.equal(first["network_weights"][k], pretrained[k])
        for k in pretrained
        if k not in transferred
    )
    assert first["nnslurm"][META_FIELD] == record
    assert [e for e in read_events(folder) if e["event"] == "started"][-1]["pretrained_weights"] == record

    # --val on this unfinished run: refused, nothing written.
    events_before = (folder / "nnslurm_events.jsonl").read_bytes()
    result = nnslurm(["train", *TINY_TRAINING, *SIGNALS, "--val"], nnunet_env.env())
    assert result.returncode == 1 and "is not finished" in result.stderr
    assert (folder / "nnslurm_events.jsonl").read_bytes() == events_before

    # Resumed with the same flag, stopped mid-run, resumed again and stopped at once: the resume
    # continues from the checkpoint's weights, the pretrained ones are not loaded over them.
    result = start("1:2", "fired-2")
    assert result.returncode == 75, result.stderr[-3000:]
    checkpoint = torch.load(folder / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    trained, trained_at = (
        checkpoint["network_weights"],
        (checkpoint["nnslurm"]["epoch"], checkpoint["nnslurm"]["iteration"]),
    )
    assert trained_at > (1, 0)
    result = start("startup", "fired-3")
    assert result.returncode == 75, result.stderr[-3000:]
    resumed = torch.load(folder / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert (resumed["nnslurm"]["epoch"], resumed["nnslurm"]["iteration"]) == trained_at
    assert all(torch.equal(resumed["network_weights"][k], trained[k]) for k in trained)
    assert not all(torch.equal(resumed["network_weights"][k], pretrained[k]) for k in transferred)
    assert resumed["nnslurm"][META_FIELD] == record

    # Other weights on resume: refused with the reason, nothing written.
    changed = dict(torch.load(pretrained_file, map_location="cpu", weights_only=False))
    changed["network_weights"] = {k: v + 1 for k, v in pretrained.items()}
    other_file = tmp_path / "other.pth"
    torch.save(changed, other_file)
    events_before = (folder / "nnslurm_events.jsonl").read_bytes()
    checkpoint_before = (folder / "checkpoint_latest.pth").read_bytes()
    result = nnslurm([*argv[:-1], str(other_file)], nnunet_env.env())
    assert result.returncode == 1, result.stderr[-3000:]
    assert "is not the file this run started from" in result.stderr and "HINT" in result.stderr
    assert (folder / "nnslurm_events.jsonl").read_bytes() == events_before
    assert (folder / "checkpoint_latest.pth").read_bytes() == checkpoint_before
