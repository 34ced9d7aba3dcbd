"""Output files that are never torn: written under a staging folder, moved into place when complete.

nnU-Net's writers (SimpleITK, nibabel, numpy's savez) write a file in place, a piece at a time, so
a job killed mid-write leaves a half file under its final name, which `--continue_prediction` then
keeps as done. Here every writer writes into a fresh folder under `<output>/.nnslurm/staging/`
(the same filesystem as the output, so os.replace is a rename): once it returned, each file is
fsynced and renamed to its final name, the segmentation last (it is what marks a case as done),
and the folder is fsynced. A kill at any instant leaves a complete file or none under a final
name; what it leaves in staging is removed at the next start (`Staging.clear`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nnslurm.core.files import fsync_file, fsync_folder
from nnslurm.core.locations import staging_folder

logger = logging.getLogger(__name__)


class Staging:
    """`<output>/.nnslurm/staging`: one fresh folder per unit of work, published or discarded."""

    def __init__(self, output_dir: Path) -> None:
        self.root = staging_folder(output_dir)

    def clear(self) -> int:
        """Remove what killed writes left; only while holding the output's lock. Returns the count."""
        if not self.root.is_dir():
            return 0
        leftovers = list(self.root.iterdir())
        for leftover in leftovers:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        if leftovers:
            logger.info("removed %d unfinished write(s) in %s", len(leftovers), self.root)
        return len(leftovers)

    @contextlib.contextmanager
    def folder(self, name: str) -> Iterator[Path]:
        """A fresh, empty folder for one unit's files; removed afterwards, published or not."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / f"{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def publish(moves: Sequence[tuple[Path, Path]]) -> None:
    """Move complete files to their final names, in order (put the file that marks "done" last).

    Each file is fsynced before its rename and each target folder after, so that after a crash
    of the machine too a final name holds the complete content or nothing (nnslurm.core.files'
    steps; the folders once each, after all the renames)."""
    for staged, _ in moves:
        fsync_file(staged)
    folders: list[Path] = []
    for staged, final in moves:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        if final.parent not in folders:
            folders.append(final.parent)
    for folder in folders:
        fsync_folder(folder)


def write_json_atomically(path: Path, content: Any, staging: Staging, sort_keys: bool = True) -> None:
    """A JSON side file as nnU-Net's save_json writes it (indent 4), through staging."""
    with staging.folder(path.name) as folder:
        staged = folder / path.name
        staged.write_text(json.dumps(content, sort_keys=sort_keys, indent=4))
        publish([(staged, path)])
