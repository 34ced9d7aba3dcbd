"""`nnslurm submit -pretrained_weights PATH` checks the file at submission: a missing, wrong or torn
file is refused (exit 2, the reason, no traceback) before anything is queued or written, instead
of failing the job at its start hours later. template checks the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import folder_digests

from nnslurm import cli

RUN = ["-d", "501", "-f", "0"]


pytestmark = pytest.mark.usefixtures("no_cluster")


def weights(path: Path, **content: object) -> Path:
    torch.save(content or {"network_weights": {"conv.weight": torch.zeros(2, 2)}, "current_epoch": 5}, path)
    return path


def truncated(path: Path) -> Path:
    data = weights(path.with_suffix(".full")).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD = [
    ("missing", lambda d: d / "nope.pth", "no such file"),
    ("a folder", lambda d: d, "not a file"),
    ("truncated", lambda d: truncated(d / "torn.pth"), "not a complete zip archive: truncated?"),
    (
        "not a torch file",
        lambda d: (d / "w.txt").write_text("weights") and d / "w.txt",
        "not a torch checkpoint",
    ),
    ("no network weights", lambda d: weights(d / "o.pth", state_dict={}), "not nnU-Net weights"),
]


@pytest.mark.parametrize("command", [["submit", "--executor", "local"], ["template", "train"]])
@pytest.mark.parametrize(("name", "make", "words"), BAD, ids=[case[0] for case in BAD])
def test_a_bad_file_is_refused_before_anything_is_queued(
    command: list[str],
    name: str,
    make: object,
    words: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    given = tmp_path / "given"
    given.mkdir()
    path = make(given)  # type: ignore[operator]
    before = folder_digests(tmp_path)
    assert cli.main([*command, *RUN, "-pretrained_weights", str(path)]) == 2  # not --dry-run: for real
    assert f"-pretrained_weights {path}" in caplog.text and words in caplog.text
    assert "HINT: pass the checkpoint of an nnU-Net training" in caplog.text
    assert "Traceback" not in caplog.text and "#!/bin/bash" not in capsys.readouterr().out
    assert folder_digests(tmp_path) == before  # no log folder, no run folder, no script
    assert not (tmp_path / "results").exists()


def test_nnunet_weights_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = weights(tmp_path / "checkpoint_final.pth")
    assert cli.main(["submit", *RUN, "--dry-run", "-pretrained_weights", str(path)]) == 0
    assert cli.main(["template", "train", *RUN, "-pretrained_weights", str(path)]) == 0
    assert f"-pretrained_weights {path}" in capsys.readouterr().out  # passed on to the job
