"""The per-epoch ETA line: days, not a clock that wraps after 24 h (1000 epochs run for days)."""

from __future__ import annotations

import pytest

from nnslurm.training.trainer import eta_text


@pytest.mark.parametrize(
    ("remaining", "seconds", "text"),
    [
        (0, 120.0, "00:00:00"),
        (10, 65.4, "00:10:54"),
        (999, 200.0, "2-07:30:00"),  # 199 800 s: was shown as 07:30:00
        (24, 3600.0, "1-00:00:00"),
        (5, -1.0, "00:00:00"),
    ],
)
def test_eta(remaining: int, seconds: float, text: str) -> None:
    assert eta_text(remaining, seconds) == text
