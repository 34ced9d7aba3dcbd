"""nnU-Net's own loggers across stops: W&B (offline), progress.png and the training logs read as one run."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from support import TINY_TRAINING, NnunetEnv, nnslurm, read_events

from nnslurm.training.nnunet_compat import nnunet_version

pytestmark = pytest.mark.nnunet

EPOCHS = 3  # TINY_TRAINING
PER_EPOCH = ("epoch_start_timestamps", "lrs", "train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice")


def test_stopped_twice_is_one_wandb_run_with_every_epoch_once(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    if nnunet_version() < (2, 7):
        pytest.skip(reason="nnU-Net has a W&B logger from 2.7.0 on; this venv has an older one")
    wandb_home = tmp_path / "wandb-home"
    env = nnunet_env.env(
        NNSLURM_TEST_SIGNALS="0:3,v1:0",  # mid-epoch, and during an epoch's validation step
        NNSLURM_TEST_SIGNAL_STATE=str(tmp_path / "fired"),
        nnUNet_wandb_enabled="1",
        nnUNet_wandb_mode="offline",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(wandb_home),  # W&B's own files in tmp too (nnU-Net puts the run's in its folder)
        WANDB_CACHE_DIR=str(wandb_home / "cache"),
        WANDB_CONFIG_DIR=str(wandb_home / "config"),
        WANDB_DATA_DIR=str(wandb_home / "data"),
    )
    args = ["train", *TINY_TRAINING, "-tr", "signal_trainers:nnUNetTrainerSignals", "--no-final-validation"]
    codes = []
    for _ in range(4):
        result = nnslurm(args, env)
        codes.append(result.returncode)
        assert result.returncode in (0, 75), result.stderr[-4000:]
        if result.returncode == 0:
            break
    assert codes == [75, 75, 0]
    run_folder = nnunet_env.run_folder("nnUNetTrainerSignals")
    assert [(e["epoch"], e["iteration"]) for e in read_events(run_folder) if e["event"] == "stopped"] == [
        (0, 4),  # the boundary after the iteration the signal came in
        (1, 5),  # validation: "training part of epoch 1 done"
    ]

    # One W&B run, resumed by nnU-Net at each start: one offline folder per start, one run id.
    starts = sorted((run_folder / "wandb").glob("offline-run-*"))
    assert len(starts) == 3, starts
    files = [next(start.glob("run-*.wandb")) for start in starts]
    ids = {record.run.run_id for file in files for record in wandb_records(file) if record.HasField("run")}
    assert len(ids) == 1 and {file.stem.removeprefix("run-") for file in files} == ids

    # Every epoch logged exactly once, whole, with the values the checkpoint (progress.png) has.
    steps = [row for file in files for row in history(file)]
    assert [step for step, _ in steps] == list(range(EPOCHS))
    final = torch.load(run_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = final["logging"]
    for step, values in steps:
        assert set(PER_EPOCH) <= values.keys(), values.keys()
        for key in PER_EPOCH:
            assert float(values[key]) == pytest.approx(float(logging[key][step])), (step, key)

    # progress.png is drawn from those lists: each holds one value per epoch.
    assert {key: len(values) for key, values in logging.items()} == {key: EPOCHS for key in logging}
    assert (run_folder / "progress.png").is_file()
    # nnU-Net's training logs (one file per start): each epoch ends once, in order.
    assert ended_epochs(sorted(run_folder.glob("training_log_*.txt"))) == list(range(EPOCHS))


def history(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(step, {key: value}) of each history row the run file holds, nnU-Net's keys only."""
    for record in wandb_records(file):
        if record.HasField("history"):
            items = {"/".join(item.nested_key) or item.key: item.value_json for item in record.history.item}
            yield record.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}


# A W&B run file (run-<id>.wandb) is a LevelDB log of protobuf `Record`s (wandb.proto's public
# schema): a 7-byte header, then 32 KiB blocks of chunks, each with crc32, length and type.
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(file: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = file.read_bytes()
    assert _FILE_HEADER.unpack_from(data)[:2] == (b":W&B", 0xBEE1), f"{file} is no W&B run file"
    position, pending = _FILE_HEADER.size, b""
    while position + _CHUNK_HEADER.size <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, position)
        if left_in_block < _CHUNK_HEADER.size or (length, kind) == (0, 0):  # block padding
            position += left_in_block
            continue
        chunk = data[position + _CHUNK_HEADER.size : position + _CHUNK_HEADER.size + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"damaged chunk at {position} in {file}"
        position += _CHUNK_HEADER.size + length
        pending += chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def ended_epochs(logs: list[Path]) -> list[int]:
    """The epochs whose end ("Epoch time: ...") nnU-Net's training logs report, in order."""
    ended, current = [], None
    for log in logs:
        for line in log.read_text().splitlines():
            started = re.search(r": Epoch (\d+)\s*$", line)
            if started:
                current = int(started.group(1))
            elif ": Epoch time: " in line:
                ended.append(current)
    return ended
