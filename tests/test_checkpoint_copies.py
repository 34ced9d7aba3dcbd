"""Snapshots off the training tensors (HostCopies) and the writer path, on real tensors and files."""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from nnslurm.checkpoints import (
    FORMAT_VERSION,
    META_KEY,
    BackgroundWriter,
    HostCopies,
    atomic,
    atomic_torch_save,
    read_checkpoint,
    safe_load,
    weights_checksum,
    write_checkpoint,
)


def shared_state() -> dict[str, torch.Tensor]:
    """Like nnU-Net's state_dict: one weight under several names, and a view into it."""
    weight = torch.randn(8, 16, requires_grad=True)
    return {
        "conv.weight": weight.detach(),
        "all_modules.0.weight": weight.detach(),
        "row": weight.detach()[2],
    }


def saved_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())


def test_copy_keeps_values_and_shared_storages() -> None:
    state = shared_state()
    copy = HostCopies().copy(state)
    assert all(torch.equal(copy[key], state[key]) for key in state)
    pointers = {copy[key].untyped_storage().data_ptr() for key in copy}
    assert len(pointers) == 1  # copied once, still shared: torch.save writes it once
    assert pointers.isdisjoint({state["conv.weight"].untyped_storage().data_ptr()})
    assert not copy["conv.weight"].requires_grad
    assert saved_bytes(copy) == saved_bytes(state)


def test_buffers_are_reused_only_after_release() -> None:
    copies, state = HostCopies(), {"w": torch.randn(1000)}
    first = copies.copy(state)
    second = copies.copy(state)  # first is still lent: other memory
    pointer = first["w"].untyped_storage().data_ptr()
    assert second["w"].untyped_storage().data_ptr() != pointer
    copies.release(first)
    copies.release(first)  # twice: still handed out once only
    state["w"] += 1
    third, fourth = copies.copy(state), copies.copy(state)
    assert third["w"].untyped_storage().data_ptr() == pointer
    assert fourth["w"].untyped_storage().data_ptr() != pointer
    assert torch.equal(third["w"], state["w"]) and not torch.equal(second["w"], state["w"])


def test_background_copy_is_complete_after_wait() -> None:
    copies, weights = HostCopies(), torch.randn(4_000_000)
    expected = weights.clone()
    copy = copies.copy({"w": weights}, background=True)
    copies.wait()
    weights.zero_()  # what the next train_step does to the weights
    assert torch.equal(copy["w"], expected)


def test_writer_fills_the_weights_checksum(tmp_path: Path) -> None:
    weights = shared_state()
    state = {
        "network_weights": weights,
        "current_epoch": 3,
        META_KEY: {"epoch": 3, "iteration": 7, "weights_crc32": None},
    }
    writer = BackgroundWriter()
    snapshot = writer.copies.copy(state, background=True)
    done: list[Path] = []
    writer.submit(snapshot, tmp_path / "checkpoint_latest.pth", lambda path, seconds: done.append(path))
    writer.wait()
    writer.close()
    assert done == [tmp_path / "checkpoint_latest.pth"]
    info = read_checkpoint(tmp_path / "checkpoint_latest.pth")  # verifies the checksum
    assert info.position == (3, 7) and info.meta["format"] == FORMAT_VERSION
    assert info.meta["weights_crc32"] == weights_checksum(weights)
    write_checkpoint(dict(state, **{META_KEY: dict(state[META_KEY])}), tmp_path / "again.pth")
    again = read_checkpoint(tmp_path / "again.pth")
    assert again.meta["weights_crc32"] == weights_checksum(weights)
    assert again.meta["weights_crc32"] == weights_checksum(
        safe_load(tmp_path / "again.pth")["network_weights"]
    )


def test_write_behind_file_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic._WriteBehind, "CHUNK", 4096)  # many writeback starts
    state = {"a": torch.randn(100_000), "b": list(range(10))}
    atomic_torch_save(state, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)
    assert torch.equal(loaded["a"], state["a"]) and loaded["b"] == state["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def checksum_weights() -> dict[str, torch.Tensor]:
    weight, half = torch.randn(20, 30), torch.randn(7, dtype=torch.bfloat16)
    return {
        "encoder.conv.weight": weight,
        "decoder.encoder.conv.weight": weight,
        "all_modules.0.weight": weight.detach(),
        "transposed": weight.t(),
        "row": weight[3],
        "column": weight[:, 2],
        "empty": torch.empty(0),
        "half": half,
        "half.again": half,
        "ints": torch.arange(5),
    }


def test_checksum_reads_each_shared_storage_once(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = checksum_weights()
    expected = weights_checksum(weights)
    fed: list[bytes] = []

    def counting_crc32(data: Any, value: int = 0) -> int:
        fed.append(bytes(data))
        return real_crc32(data, value)

    real_crc32 = zlib.crc32
    monkeypatch.setattr(zlib, "crc32", counting_crc32)
    assert weights_checksum(weights) == expected
    monkeypatch.undo()
    header, *storages = fed
    assert header.decode().count("\n") == len(weights)  # one header line per key
    # The storages the sorted keys first use: the shared weight (6 keys), half (2 keys), ints.
    weight, half = weights["encoder.conv.weight"], weights["half"]
    assert [len(data) for data in storages] == [20 * 30 * 4, 7 * 2, 5 * 8]
    assert storages[0] == weight.numpy().tobytes() and storages[1] == half.view(torch.uint8).numpy().tobytes()


def test_checksum_sees_every_byte_and_every_view() -> None:
    weights = checksum_weights()
    before = weights_checksum(weights)
    assert weights_checksum(dict(weights, row=weights["encoder.conv.weight"][4])) != before  # another view
    weights["half"][6] += 1  # a byte only two keys share
    assert weights_checksum(weights) != before


def test_checksum_is_the_same_on_the_snapshot_and_the_file(tmp_path: Path) -> None:
    weights = checksum_weights()
    snapshot = HostCopies().copy(weights)
    atomic_torch_save(snapshot, tmp_path / "w.pth")
    loaded = safe_load(tmp_path / "w.pth")  # mmapped: storages shared as they were written
    assert weights_checksum(snapshot) == weights_checksum(weights) == weights_checksum(loaded)
