"""Snapshots off the training tensors (HostCopies) and the writer path, on real tensors and files."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest
import torch

from nnslurm import checkpoints
from nnslurm.checkpoints import (
    META_KEY,
    BackgroundWriter,
    HostCopies,
    atomic_torch_save,
    read_checkpoint,
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
    assert info.position == (3, 7) and info.meta["weights_crc32"] == weights_checksum(weights)
    seconds = write_checkpoint(dict(state, **{META_KEY: dict(state[META_KEY])}), tmp_path / "again.pth")
    assert seconds > 0 and read_checkpoint(tmp_path / "again.pth").meta["weights_crc32"] is not None


def test_write_behind_file_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints._WriteBehind, "CHUNK", 4096)  # many writeback starts
    state = {"a": torch.randn(100_000), "b": list(range(10))}
    atomic_torch_save(state, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)
    assert torch.equal(loaded["a"], state["a"]) and loaded["b"] == state["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def reference_checksum(weights: dict[str, torch.Tensor]) -> int:
    """The checksum's definition, read naively: every key's bytes, in key order."""
    crc = 0
    for key in sorted(weights):
        tensor = weights[key].detach().cpu().contiguous()
        crc = zlib.crc32(key.encode(), crc)
        if tensor.numel():
            crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy().data, crc)
    return crc


def test_checksum_reads_shared_bytes_once_and_gives_the_same_value() -> None:
    weight, half = torch.randn(20, 30), torch.randn(7, dtype=torch.bfloat16)
    weights = {
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
    assert weights_checksum(weights) == reference_checksum(weights)
    assert weights_checksum(shared_state()) != weights_checksum({"x": torch.zeros(3)})
