"""SLURM's --time formats, and their errors."""

from __future__ import annotations

import pytest

from nnslurm.core.errors import UsageError
from nnslurm.core.timeparse import describe, format_time, parse_scontrol_time, parse_time, slurm_minutes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90 * 60),  # minutes
        ("0:45", 45),  # minutes:seconds
        ("1:30", 90),
        ("1:30:00", 5400),  # hours:minutes:seconds
        ("2-00", 2 * 86400),  # days-hours
        ("2-03:30", 2 * 86400 + 3 * 3600 + 30 * 60),  # days-hours:minutes
        ("1-00:00:10", 86410),  # days-hours:minutes:seconds
        (" 5 ", 300),
    ],
)
def test_slurm_formats(text: str, seconds: int) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "-5", "1-", "1.5", "1h", "2-1:2:3:4", "0", "0:00"])
def test_bad_times_say_which_formats_work(text: str) -> None:
    with pytest.raises(UsageError) as error:
        parse_time(text)
    assert "--time" in str(error.value)
    assert "MINUTES:SECONDS (0:45)" in str(error.value)


def test_format_round_trips() -> None:
    for seconds in (45, 3600, 86400 + 1, 3 * 86400 + 7322):
        assert parse_time(format_time(seconds)) == seconds
    assert format_time(90) == "00:01:30"
    assert format_time(86400 + 3661) == "1-01:01:01"


def test_slurm_rounds_up_to_minutes() -> None:
    assert slurm_minutes(45) == 1
    assert slurm_minutes(60) == 1
    assert slurm_minutes(61) == 2


def test_scontrol_times() -> None:
    assert parse_scontrol_time("00:01:00") == 60
    assert parse_scontrol_time("1-00:00:05") == 86405
    assert parse_scontrol_time("05:00") == 300
    assert parse_scontrol_time("UNLIMITED") is None
    assert parse_scontrol_time("INVALID") is None


def test_describe() -> None:
    assert describe(45) == "45s"
    assert describe(750) == "12m 30s"
    assert describe(720) == "12m 00s"
    assert describe(7500) == "2h 05m"
    assert describe(47 * 3600 + 59 * 60) == "47h 59m"  # hours up to two days: ETAs stay comparable
    assert describe(3 * 86400 + 4 * 3600) == "3d 04h"
    assert describe(-3) == "0s" and describe(None) == "-"
