"""nnslurm.core.files, the one atomic writer, on real files: the content is whole after a write,
no temp file stays, and a write that fails halfway leaves the old file as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nnslurm.core import files


class Boom(Exception):
    pass


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_bytes_text_and_json_are_complete_and_leave_no_temp(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # larger than any buffer: several writes
    files.write_bytes(tmp_path / "blob", data)
    files.write_text(tmp_path / "note.txt", "grüße\n")
    files.write_json(tmp_path / "record.json", {"b": 1, "a": [1, 2]}, indent=2, sort_keys=True, newline=True)
    assert (tmp_path / "blob").read_bytes() == data
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "grüße\n"
    text = (tmp_path / "record.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    assert names(tmp_path) == ["blob", "note.txt", "record.json"]


def test_a_write_replaces_the_old_content_whole(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    files.write_json(target, {"version": 1, "pad": "x" * 100_000})
    files.write_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 2}
    assert names(tmp_path) == ["record.json"]


def test_an_exception_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "marker.json"
    files.write_text(target, "old")
    with pytest.raises(Boom), files.atomic_stream(target) as stream:
        stream.write(b"new, but only half")
        stream.flush()
        assert any(files.TEMP_MARKER in name for name in names(tmp_path))  # it was being written
        raise Boom
    assert target.read_text() == "old"
    assert names(tmp_path) == ["marker.json"]


def test_an_exception_mid_write_leaves_no_file_where_there_was_none(tmp_path: Path) -> None:
    with pytest.raises(Boom), files.atomic_stream(tmp_path / "new.txt", "w") as stream:
        stream.write("half")
        raise Boom
    assert names(tmp_path) == []


def test_content_json_cannot_hold_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    files.write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        files.write_json(target, {"not json": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert names(tmp_path) == ["record.json"]


def test_a_failing_fsync_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk shows at the latest in fsync: the rename never happens."""
    target = tmp_path / "record.json"
    files.write_json(target, {"version": 1})

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        files.write_json(target, {"version": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert names(tmp_path) == ["record.json"]


def test_the_file_and_its_folder_are_synced_before_the_writer_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable after a crash of the machine: the data is fsynced before the rename, the folder after."""
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        order.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(source: str | Path, target: str | Path) -> None:
        order.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    files.write_bytes(tmp_path / "blob", b"data")
    assert order == ["fsync file", "rename", "fsync folder"]


def test_the_file_gets_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    files.write_text(tmp_path / "note.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "note.txt").stat().st_mode & 0o777 == 0o666 & ~umask
