"""Files that must survive a crash, written whole or not at all: temp file, fsync, replace, fsync the folder.

The temp file sits in the target's folder (same filesystem, so os.replace is a rename) under a
hidden name with TEMP_MARKER, which `checkpoints.atomic.remove_stale_temp_files` recognises. A kill
at any instant leaves the old file or the new one under the final name, never a torn one; once a
writer returned, a crash of the machine does too (the data and the folder entry are on disk).

Torch-free on purpose: the commands that only look (`status`, `logs`, ...) and the workflow's
markers use it without paying for torch's import. `checkpoints.atomic.atomic_torch_save` shares
these steps (temp_name, sync, replace) around its own serialiser.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

TEMP_MARKER = ".nnslurm-tmp-"


def temp_name(path: Path, kind: str = "") -> Path:
    """A hidden, unique name next to `path` (this process's pid in it) for a file about to become `path`."""
    return path.parent / f".{path.name}{TEMP_MARKER}{kind}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def sync(stream: IO[Any]) -> None:
    """An open file's content to disk: Python's buffer, then the kernel's."""
    stream.flush()
    os.fsync(stream.fileno())


def fsync_file(path: Path) -> None:
    """A closed file's content to disk (a file another library wrote)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """A folder's entries to disk: a rename or an unlink in it survives a crash of the machine."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(temp: Path, path: Path) -> None:
    """`temp` (complete and synced) becomes `path` in one rename, durably."""
    os.replace(temp, path)
    fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_stream(path: Path, mode: Literal["wb", "w"] = "wb") -> Iterator[IO[Any]]:
    """A file to write `path` through ("w": UTF-8 text): it becomes `path` when the block ends
    without an exception; on an exception the temp file goes and `path` keeps its old content (or
    stays absent). The file gets the mode a plain open() gives (0666 minus the umask), as nnU-Net's.
    """
    temp = temp_name(path)
    try:
        with open(temp, mode, encoding=None if mode == "wb" else "utf-8") as stream:
            yield stream
            sync(stream)
        replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """`data` as `path`, atomically and durably."""
    with atomic_stream(path) as stream:
        stream.write(data)


def write_text(path: Path, text: str) -> None:
    """`text` (UTF-8) as `path`, atomically and durably."""
    with atomic_stream(path, "w") as stream:
        stream.write(text)


def write_json(
    path: Path,
    content: Any,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
    newline: bool = False,
) -> None:
    """`content` as JSON in `path`, atomically and durably (json.dumps' options; `newline` ends it
    with one). The text is made before the file is opened: content JSON cannot hold leaves nothing."""
    text = json.dumps(content, indent=indent, sort_keys=sort_keys, default=default)
    write_text(path, text + "\n" if newline else text)
