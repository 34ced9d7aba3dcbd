"""Every benchmark runs end to end with --quick (tiny sizes, one repetition) and prints its goal table
with numbers that make sense: each ratio a finite positive number, each "met" what its value and
goal say.

A smoke test, not a measurement: whether a --quick run meets a goal means nothing (docs/benchmarks.md
has the real numbers), but a benchmark whose arm did not run (a ratio of 0 or of infinity) or whose
table says "met" against its own numbers is broken. One after the other: each is mostly start-up,
about two minutes for all ten.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, NnunetEnv, patience

pytestmark = pytest.mark.nnunet

# benchmark -> (its goal table's title, the column holding the measured value)
BENCHMARKS = {
    "write_throughput": ("ratio", "value"),
    "checkpoint_stall": ("ratio", "value"),
    "signal_latency": ("signal -> durable (seconds)", "outside (sent -> durable)"),
    "resume_startup": ("ratio", "value"),
    "interruptions": ("goals", "nnslurm"),
    "throughput": ("ratio", "value"),
    "cpu_sharing": ("ratio", "value"),
    "status_speed": ("goal", "value"),
    "agreement_cost": ("goal", "value"),
    "rank_signal_latency": ("goal", "value"),
}


def tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables benchmarks/common.py print_table wrote: title -> rows (column -> cell)."""
    found = {}
    for section in stdout.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        lines = [line.strip() for line in body.splitlines() if line.startswith("|")]
        header, rows = cells(lines[0]), lines[2:]
        assert set(lines[1]) <= {"|", "-"}, lines[1]
        found[title.strip()] = [dict(zip(header, cells(row), strict=True)) for row in rows]
    return found


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def holds(value: float, goal: str) -> bool | None:
    """Whether `value` meets "<= X" / ">= X"; None at the bound (the table rounds to 4 digits)."""
    operator, bound_text = goal.split()
    bound = float(bound_text)
    if math.isclose(value, bound, rel_tol=1e-3):
        return None
    return value <= bound if operator == "<=" else value >= bound


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_quick(name: str, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--quick", "--workdir", str(tmp_path)],
        env=nnunet_env.env(),
        capture_output=True,
        text=True,
        timeout=patience(100),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    title, value_column = BENCHMARKS[name]
    found = tables(result.stdout)
    assert found.get(title), f"no {title!r} table in:\n{result.stdout[-3000:]}"
    met_column = list(found[title][0])[-1]  # "met" / "nnslurm met": the last column
    judged = 0
    for row in found[title]:
        goal = row.get("goal") or row.get("bound: iteration + save")
        if not goal:
            continue  # a row for reading only (paired ratios, per-CPU rates)
        value = float(row[value_column])
        assert math.isfinite(value) and value >= 0, row
        if " / " in row.get("measure", ""):  # a ratio: both arms ran and were measured
            assert 0 < value < 100, row
        if name == "signal_latency":  # met: both the event's and the sender's latency within the bound
            goal = f"<= {goal}"
            value = max(value, float(row["inside (event)"]))
        verdict = holds(value, goal)
        assert row[met_column] in ("True", "False"), row
        assert verdict is None or row[met_column] == str(verdict), f"{row}: says {row[met_column]}"
        judged += 1
    assert judged, f"the {title!r} table holds no row with a goal:\n{result.stdout[-3000:]}"
    if name == "signal_latency":
        every = all(row[met_column] == "True" for row in found[title])
        assert f"goal signal -> durable <= one iteration + one save: {'met' if every else 'NOT met'}" in (
            result.stdout
        )
