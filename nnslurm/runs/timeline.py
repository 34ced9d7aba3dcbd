"""A run's story against wall-clock time: a text summary and a timeline picture (matplotlib).

The picture: progress (epoch + iteration / iterations per epoch) as a line, one shaded band per
start of a job, hatched bands where nothing trained (queued, requeued, waiting), a marker per
interruption by kind, checkpoint ticks along the bottom, and nnU-Net's pseudo-Dice (EMA) from the
newest checkpoint's logger on a second axis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nnslurm.core.errors import NnslurmError
from nnslurm.core.files import atomic_stream
from nnslurm.core.timeparse import describe
from nnslurm.runs.history import History, Outcome, Point, read_history
from nnslurm.runs.interruptions import KINDS, Interruption, Kind, interruptions, iterations_redone
from nnslurm.runs.state import RunState
from nnslurm.runs.status import RunStatus, iso_time

logger = logging.getLogger(__name__)

SCHEMA = "nnslurm.runs.timeline/1"
FIGSIZE = (12.0, 6.5)  # inches
DPI = 120  # FIGSIZE x DPI = 1440 x 780 pixels
CHECKPOINT_FILES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
KIND_STYLE: dict[str, tuple[str, str, str]] = {  # marker, colour, what it means
    Kind.WALLTIME: ("v", "#e67e00", "walltime"),
    Kind.PREEMPTION: ("X", "#d62728", "preemption"),
    Kind.REQUEUE: ("P", "#9467bd", "requeue from outside"),
    Kind.CANCEL: ("s", "#444444", "cancel"),
    Kind.KILL: ("*", "#8c1c13", "kill without a signal"),
    Kind.SIGNAL: ("D", "#1f77b4", "stop signal, no scheduler"),
    Kind.FAILURE: ("x", "#c00000", "failure"),
}
HEADROOM = 1.12  # room above the last epoch for the band labels
JOB_COLOURS = ("#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#c44e52", "#937860")


class ReportError(NnslurmError):
    """The run has nothing to report, or the picture cannot be written."""


@dataclass(frozen=True)
class Summary:
    """The numbers of `nnslurm report`, all from the event log."""

    start: float  # first record
    end: float  # last record
    compute_s: float  # summed over starts: first to last record of each training process
    queue_s: float  # from the first record (submission) to the first start
    idle_s: float  # between starts: requeue waits, queueing again, restarts
    starts: int
    interruptions: tuple[Interruption, ...]
    iterations_redone: int
    state: str
    position: Point | None
    num_epochs: int | None
    iterations_per_epoch: int | None
    kinds: dict[str, int] = field(default_factory=dict)
    running: bool = False  # the last segment is training now: it reaches until `end`

    @property
    def wall_s(self) -> float:
        return self.end - self.start


def summarize(status: RunStatus, now: float | None = None) -> Summary:
    """Where the time went. While a process trains, its segment (and the run) reach until `now`."""
    history = status.history or read_history(status.folder)
    if not history.records:
        raise ReportError(
            f"{status.folder} has no event records: nothing to report.",
            hint="pass a run folder that nnslurm trained in (it holds nnslurm_events.jsonl).",
        )
    found = tuple(interruptions(history, last_is_running=status.state == RunState.RUNNING))
    segments = history.segments
    start, end = float(history.first_time or 0), float(history.last_time or 0)
    compute = sum(segment.end - segment.start for segment in segments)
    running = status.state == RunState.RUNNING and bool(segments) and segments[-1].outcome == Outcome.OPEN
    if running:
        now = time.time() if now is None else now
        compute += max(0.0, now - segments[-1].end)
        end = max(end, now)
    queue = (segments[0].start - start) if segments else end - start
    return Summary(
        start=start,
        end=end,
        compute_s=compute,
        queue_s=queue,
        idle_s=max(0.0, (end - start) - compute - queue),
        starts=len(segments),
        interruptions=found,
        iterations_redone=iterations_redone(history, found),
        state=status.state,
        position=history.position(),
        num_epochs=history.num_epochs,
        iterations_per_epoch=history.iterations_per_epoch,
        kinds=kinds_in(found),
        running=running,
    )


def summary_lines(status: RunStatus, summary: Summary) -> list[str]:
    d = describe
    name = status.name
    lines = [
        f"run:               {status.folder}",
        f"                   {name.dataset}, {name.trainer}__{name.plans}__{name.configuration}, "
        f"fold {name.fold}",
        f"state:             {status.state}" + (f" ({status.detail})" if status.detail else ""),
        f"wall time:         {d(summary.wall_s)}  ({_clock(summary.start)} -> {_clock(summary.end)})",
        f"compute time:      {d(summary.compute_s)} over {summary.starts} start(s)",
        f"queued / idle:     {d(summary.queue_s + summary.idle_s)}  (before the first start "
        f"{d(summary.queue_s)}, between starts {d(summary.idle_s)})",
    ]
    if summary.position is not None:
        lines.append(
            f"progress:          epoch {summary.position.epoch}/{summary.num_epochs or '?'}, iteration "
            f"{summary.position.iteration}/{summary.iterations_per_epoch or '?'}"
        )
    counted = ", ".join(f"{kind} {count}" for kind, count in summary.kinds.items() if count) or "none"
    lines.append(f"interruptions:     {len(summary.interruptions)} ({counted})")
    lines.append(f"iterations redone: {summary.iterations_redone}")
    for interruption in summary.interruptions:
        where = _where(interruption.furthest)
        resumed = f" -> resumed at {_where(interruption.resumed_at)}" if interruption.resumed_at else ""
        job = f" job {interruption.job_id}" if interruption.job_id else ""
        lines.append(f"  {_clock(interruption.time)} {interruption.kind:<10}{job} at {where}{resumed}")
        lines.append(f"      {interruption.reason}")
    if any(item.kind == Kind.KILL for item in summary.interruptions):
        lines.append("  (a kill leaves no record of where it struck: its position is its last record's)")
    return lines


def summary_json(status: RunStatus, summary: Summary) -> dict[str, Any]:
    def point(value: Point | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {"epoch": value.epoch, "iteration": value.iteration, "time": iso_time(value.time)}

    return {
        "schema": SCHEMA,
        "folder": str(status.folder),
        "state": status.state,
        "start": iso_time(summary.start),
        "end": iso_time(summary.end),
        "wall_s": round(summary.wall_s, 3),
        "compute_s": round(summary.compute_s, 3),
        "queue_s": round(summary.queue_s, 3),
        "idle_s": round(summary.idle_s, 3),
        "starts": summary.starts,
        "interruptions": summary.kinds,
        "iterations_redone": summary.iterations_redone,
        "position": point(summary.position),
        "events": [
            {
                "kind": item.kind,
                "time": iso_time(item.time),
                "job_id": item.job_id,
                "signal": item.signal,
                "at": point(item.furthest),
                "resumed_at": point(item.resumed_at),
                "reason": item.reason,
            }
            for item in summary.interruptions
        ],
    }


# --- pseudo-Dice from nnU-Net's logger -----------------------------------------------------------


@dataclass(frozen=True)
class DiceSeries:
    times: tuple[float, ...]  # nnU-Net's epoch_end_timestamps
    ema: tuple[float, ...]  # ema_fg_dice
    source: str  # the checkpoint file it came from


def read_dice(folder: Path) -> DiceSeries | None:
    """The longest logger history among final/latest/best (files that do not load are skipped)."""
    from nnslurm.checkpoints import safe_load

    best: DiceSeries | None = None
    for name in CHECKPOINT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            logging_state = safe_load(path).get("logging") or {}
            ema = [float(value) for value in logging_state.get("ema_fg_dice", [])]
            ends = [float(value) for value in logging_state.get("epoch_end_timestamps", [])]
        except Exception as error:  # a torn or foreign file: the picture goes without it
            logger.warning("cannot read the pseudo-Dice from %s: %s", path, error)
            continue
        count = min(len(ema), len(ends))
        if count and (best is None or count > len(best.times)):
            best = DiceSeries(tuple(ends[:count]), tuple(ema[:count]), name)
    return best


# --- the picture -----------------------------------------------------------------------------------


def draw_timeline(status: RunStatus, summary: Summary, dice: DiceSeries | None, output: Path) -> Path:
    """Write the timeline PNG (FIGSIZE x DPI pixels) atomically; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = status.history or read_history(status.folder)
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    handles: list[Any] = []
    handles += _draw_segments(axes, history, summary)
    handles += _draw_progress(axes, history)
    handles += _draw_interruptions(axes, history, summary)
    handles += _draw_checkpoints(axes, history)
    _style_axes(axes, history, summary)
    if dice is not None:
        handles += _draw_dice(axes, dice)
        axes.set_zorder(2)  # markers and progress above the pseudo-Dice line; the bands are translucent
        axes.patch.set_visible(False)
    name = status.name
    figure.suptitle(
        f"{name.dataset}  ·  {name.trainer}__{name.plans}__{name.configuration}  ·  fold {name.fold}",
        fontsize=13,
        fontweight="bold",
    )
    axes.set_title(_one_line(summary, status), fontsize=9.5, color="#333333")
    figure.legend(
        handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8.5, frameon=False
    )
    return _save(figure, output)


def _draw_segments(axes: Any, history: History, summary: Summary) -> list[Any]:
    """A shaded band per start; hatched bands where nothing trained (cross-hatched after a kill)."""
    from matplotlib.patches import Patch

    span = max(summary.end - summary.start, 1.0)
    colours = {job: JOB_COLOURS[i % len(JOB_COLOURS)] for i, job in enumerate(history.job_ids)}
    killed = {item.segment for item in summary.interruptions if item.kind == Kind.KILL}
    previous_end, after_kill, handles = summary.start, False, {}
    for index, segment in enumerate(history.segments):
        if segment.start - previous_end > span * 0.001:
            hatch, edge = ("xxx", "#c98a84") if after_kill else ("////", "#9a9a9a")
            axes.axvspan(
                _dt(previous_end),
                _dt(segment.start),
                facecolor="none",
                edgecolor=edge,
                hatch=hatch,
                linewidth=0,
                zorder=0,
            )
            label = (
                "unrecorded after a kill (lost work, then waiting)"
                if after_kill
                else ("not training (queued, start-up)")
            )
            handles[label] = Patch(facecolor="none", edgecolor=edge, hatch=hatch, label=label)
        colour = colours.get(segment.job_id or "", JOB_COLOURS[0])
        until = summary.end if summary.running and index == len(history.segments) - 1 else segment.end
        axes.axvspan(
            _dt(segment.start),
            _dt(max(until, segment.start + span * 0.002)),
            color=colour,
            alpha=0.16 if index % 2 else 0.26,
            linewidth=0,
            zorder=0,
        )
        if until - segment.start > span * 0.06:
            label = f"start {index + 1}" + (f"\njob {segment.job_id}" if segment.job_id else "")
            label += "\n(training now)" if until != segment.end else ""
            axes.text(
                _dt((segment.start + until) / 2),
                0.985,
                label,
                transform=axes.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color="#333333",
            )
        previous_end, after_kill = max(previous_end, until), index in killed
    training = Patch(facecolor=JOB_COLOURS[0], alpha=0.3, label="training (a band per start)")
    return [training, *handles.values()]


def _draw_progress(axes: Any, history: History) -> list[Any]:
    """Progress per start, and a dotted jump from one start to the next (a drop: iterations redone)."""
    from matplotlib.lines import Line2D

    last: Point | None = None
    for segment in history.segments:
        points = sorted(segment.points, key=lambda point: point.time)
        if not points:
            continue
        if last is not None:
            axes.plot(
                [_dt(last.time), _dt(points[0].time)],
                [history.epochs(last), history.epochs(points[0])],
                linestyle=":",
                color="#555555",
                linewidth=1.2,
                zorder=3,
            )
        axes.plot(
            [_dt(point.time) for point in points],
            [history.epochs(point) for point in points],
            color="black",
            linewidth=2.0,
            marker="o",
            markersize=2.5,
            zorder=4,
        )
        last = points[-1]
    return [
        Line2D([], [], color="black", linewidth=2.0, label="progress (epoch + iteration)"),
        Line2D([], [], color="#555555", linestyle=":", label="restart (a drop: work redone)"),
    ]


def _draw_interruptions(axes: Any, history: History, summary: Summary) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = []
    for kind, count in summary.kinds.items():
        if not count:
            continue
        marker, colour, words = KIND_STYLE[kind]
        items = [item for item in summary.interruptions if item.kind == kind]
        for item in items:
            axes.axvline(_dt(item.time), color=colour, linestyle="--", linewidth=1.0, alpha=0.8, zorder=2)
        axes.scatter(
            [_dt(item.time) for item in items],
            [history.epochs(item.furthest) if item.furthest else 0.0 for item in items],
            marker=marker,
            s=260 if marker == "*" else 110,
            color=colour,
            edgecolor="white",
            linewidth=0.8,
            zorder=6,
        )
        handles.append(
            Line2D(
                [],
                [],
                color=colour,
                marker=marker,
                markersize=9,
                linestyle="--",
                linewidth=1.0,
                label=f"{words} ({count})",
            )
        )
    return handles


def _draw_checkpoints(axes: Any, history: History) -> list[Any]:
    """Ticks along the bottom: blue for periodic/best/final, red (taller) for the save at a stop."""
    from matplotlib.lines import Line2D

    handles = []
    for stop, colour, size, width, label in (
        (False, "#2b6a99", 14, 1.6, "checkpoint"),
        (True, "#d62728", 20, 2.4, "checkpoint at a stop"),
    ):
        chosen = [item for item in history.checkpoints if (item.reason == "stop") == stop]
        if not chosen:
            continue
        axes.plot(
            [_dt(item.time) for item in chosen],
            [0.02] * len(chosen),
            linestyle="none",
            marker="|",
            markersize=size,
            markeredgewidth=width,
            color=colour,
            transform=axes.get_xaxis_transform(),
            zorder=5,
        )
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="|",
                markersize=12,
                markeredgewidth=width,
                color=colour,
                label=label,
            )
        )
    return handles


def _draw_dice(axes: Any, dice: DiceSeries) -> list[Any]:
    from matplotlib.lines import Line2D

    colour = "#2ca02c"
    second = axes.twinx()
    second.plot([_dt(t) for t in dice.times], dice.ema, color=colour, linewidth=1.6, marker="o", markersize=3)
    second.set_ylim(0, HEADROOM)  # Dice 1.0 level with the last epoch on the left axis
    second.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    second.set_ylabel("pseudo-Dice (EMA)", color=colour)
    second.tick_params(axis="y", colors=colour)
    return [Line2D([], [], color=colour, marker="o", markersize=4, label="pseudo-Dice (EMA)")]


def _style_axes(axes: Any, history: History, summary: Summary) -> None:
    import matplotlib.dates as mdates

    reached = max((history.epochs(p) for s in history.segments for p in s.points), default=1.0)
    top = float(history.num_epochs or reached or 1.0)
    if history.num_epochs:
        axes.axhline(top, color="#888888", linewidth=0.8, linestyle="-.", zorder=1)
    axes.set_ylim(0, top * HEADROOM)
    axes.set_ylabel("progress (epochs)")
    pad = max(summary.end - summary.start, 1.0) * 0.02
    axes.set_xlim(_dt(summary.start - pad), _dt(summary.end + pad))
    locator = mdates.AutoDateLocator(minticks=5, maxticks=12)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.set_xlabel("wall-clock time")
    axes.grid(axis="y", color="#dddddd", linewidth=0.6)


def _one_line(summary: Summary, status: RunStatus) -> str:
    d = describe
    kinds = ", ".join(f"{count} {kind}" for kind, count in summary.kinds.items() if count) or "none"
    return (
        f"{status.state}  ·  wall {d(summary.wall_s)}  ·  compute {d(summary.compute_s)}  ·  queued/idle "
        f"{d(summary.queue_s + summary.idle_s)}  ·  {summary.starts} starts  ·  interruptions: {kinds}  ·  "
        f"{summary.iterations_redone} iterations redone"
    )


def _save(figure: Any, output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_stream(output) as stream:
            figure.savefig(stream, format="png", dpi=DPI)
    except OSError as error:
        raise ReportError(f"cannot write {output}: {error.strerror or error}") from error
    return output


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds)


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _where(point: Point | None) -> str:
    return "?" if point is None else f"epoch {point.epoch} iteration {point.iteration}"


def kinds_in(items: Sequence[Interruption]) -> dict[str, int]:
    counts: dict[str, int] = {kind: 0 for kind in KINDS}
    for item in items:
        counts[item.kind] += 1
    return counts
