"""`nnslurm report`: the timeline picture and the summary numbers, checked against the event log."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from support import NnunetEnv, nnslurm, read_events, started, stop, write_log

from nnslurm import cli
from nnslurm.core.timeparse import describe
from nnslurm.runs.timeline import DPI, FIGSIZE

WIDTH, HEIGHT = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)


def segments_by_process(events: list[dict]) -> list[list[dict]]:
    """The test's own reading of the log: consecutive records of one training process."""
    groups: list[list[dict]] = []
    for event in events:
        if event["event"] in ("submitted", "cancel_requested"):
            continue
        new_start = event["event"] == "resumed" or (
            event["event"] == "started" and not (groups and groups[-1][-1]["event"] == "resumed")
        )
        if not groups or new_start or event["pid"] != groups[-1][-1]["pid"]:
            groups.append([])
        groups[-1].append(event)
    return groups


def plot_area_colours(png: Path) -> int:
    pixels = imread(png)
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    area = pixels[int(HEIGHT * 0.15) : int(HEIGHT * 0.8), int(WIDTH * 0.08) : int(WIDTH * 0.9), :3]
    return len(np.unique((area * 255).astype(np.uint8).reshape(-1, 3), axis=0))


@pytest.mark.nnunet
def test_report_of_an_interrupted_run(interrupted_run: tuple[NnunetEnv, Path], tmp_path: Path) -> None:
    env, folder = interrupted_run
    png = tmp_path / "timeline.png"
    result = nnslurm(["report", str(folder), "-o", str(png), "--json"], env.env())
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["picture"] == str(png) and png.is_file()
    assert plot_area_colours(png) > 20  # shading, hatching, line, markers, ticks, Dice: many colours

    events = read_events(folder)
    groups = segments_by_process(events)
    assert summary["starts"] == len(groups) == 3
    assert summary["wall_s"] == pytest.approx(events[-1]["time"] - events[0]["time"], abs=0.01)
    compute = sum(group[-1]["time"] - group[0]["time"] for group in groups)
    assert summary["compute_s"] == pytest.approx(compute, abs=0.01)
    assert summary["queue_s"] + summary["idle_s"] == pytest.approx(summary["wall_s"] - compute, abs=0.02)
    closing = [group[-1]["event"] for group in groups]
    assert closing == ["stopped", "checkpoint", "finished"]
    assert {k: v for k, v in summary["interruptions"].items() if v} == {"signal": 1, "kill": 1}
    assert [item["kind"] for item in summary["events"]] == ["signal", "kill"]

    per_epoch = 5
    redone = 0
    for before, after in itertools.pairwise(groups):
        furthest = max(e["epoch"] * per_epoch + e["iteration"] for e in before if "epoch" in e)
        redone += max(0, furthest - (after[0]["epoch"] * per_epoch + after[0]["iteration"]))
    assert summary["iterations_redone"] == redone
    assert summary["position"]["epoch"] == 3 and summary["state"] == "finished"

    text = nnslurm(["report", str(folder), "--no-picture"], env.env())
    assert text.returncode == 0, text.stderr
    assert "interruptions:     2 (kill 1, signal 1)" in text.stdout
    assert f"compute time:      {describe(compute)} over 3 start(s)" in text.stdout
    assert not (folder / "nnslurm_timeline.png").exists()


def test_redone_iterations_and_a_picture_without_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A preemption whose stop missed its deadline: resumed 30 iterations before where it was."""
    folder = tmp_path / "Dataset501_X" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1"
    write_log(
        folder,
        [
            {"event": "submitted", "time": -900, "job_id": "77", "executor": "slurm"},
            *started("77", -800),
            {
                "event": "checkpoint",
                "time": -700,
                "job_id": "77",
                "path": "checkpoint_latest.pth",
                "epoch": 1,
                "iteration": 0,
                "reason": "periodic",
            },
            {"event": "signal", "time": -650, "job_id": "77", "epoch": 1, "iteration": 30, "signal": "USR1"},
            {
                "event": "stopped",
                "time": -640,
                "job_id": "77",
                "epoch": 1,
                "iteration": 0,
                "reason": "deadline",
            },
            {
                "event": "decision",
                "time": -640,
                "job_id": "77",
                "kind": "preemption",
                "epoch": 1,
                "iteration": 0,
            },
            *started("77", -300, 1, 0, pid=101),
            {"event": "finished", "time": -100, "job_id": "77", "pid": 101, "epoch": 10, "iteration": 0},
        ],
    )
    png = tmp_path / "out" / "t.png"
    assert cli.main(["report", str(folder), "-o", str(png), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations_redone"] == 30
    assert summary["interruptions"]["preemption"] == 1
    assert (summary["queue_s"], summary["idle_s"]) == (
        pytest.approx(100, abs=0.1),
        pytest.approx(340, abs=0.1),
    )
    assert summary["compute_s"] == pytest.approx(160 + 200, abs=0.1)
    assert plot_area_colours(png) > 5


def test_report_of_a_folder_without_events(tmp_path: Path) -> None:
    assert cli.main(["report", str(tmp_path)]) == 1


def test_report_by_job_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    results = tmp_path / "results"
    folder = results / "Dataset501_X" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
    write_log(folder, [*started("4242", -100), *stop("4242", -50, 0, 20, "walltime")])
    monkeypatch.setenv("nnUNet_results", str(results))
    assert cli.main(["report", "4242", "--no-picture", "--no-scheduler"]) == 0
    out = capsys.readouterr().out
    assert "interruptions:     1 (walltime 1)" in out and "job 4242 at epoch 0 iteration 20" in out
    assert cli.main(["report", "999", "--no-picture"]) == 1
