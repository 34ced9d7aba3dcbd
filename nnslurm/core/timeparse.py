"""SLURM time strings (`--time`) to seconds and back.

SLURM's formats (sbatch(1), --time): "minutes", "minutes:seconds", "hours:minutes:seconds",
"days-hours", "days-hours:minutes", "days-hours:minutes:seconds". So `90` is 90 minutes and
`0:45` is 45 seconds. SLURM itself rounds a limit up to whole minutes; the local executor honours
seconds.
"""

from __future__ import annotations

import math
import re

from nnslurm.core.errors import UsageError

_FORMATS = (
    "MINUTES (90), MINUTES:SECONDS (0:45), HOURS:MINUTES:SECONDS (1:30:00), "
    "DAYS-HOURS (2-00), DAYS-HOURS:MINUTES (2-00:30) or DAYS-HOURS:MINUTES:SECONDS (2-00:00:00)"
)
_NUMBER = r"(\d+)"
_WITH_DAYS = re.compile(rf"^{_NUMBER}-{_NUMBER}(?::{_NUMBER})?(?::{_NUMBER})?$")
_WITHOUT_DAYS = re.compile(rf"^{_NUMBER}(?::{_NUMBER})?(?::{_NUMBER})?$")
UNLIMITED = ("infinite", "unlimited")


def parse_time(text: str, flag: str = "--time") -> int:
    """A SLURM time string -> seconds (> 0). Raises UsageError naming the accepted formats."""
    value = text.strip()
    seconds = _parse(value)
    if seconds is None:
        raise UsageError(f"{flag} {text!r} is not a SLURM time.", hint=f"use {_FORMATS}.")
    if seconds <= 0:
        raise UsageError(f"{flag} {text!r} is zero; a job needs some time.", hint=f"use {_FORMATS}.")
    return seconds


def parse_scontrol_time(text: str) -> int | None:
    """`TimeLimit=`/`RunTime=` as scontrol prints them ([D-]HH:MM:SS); None for UNLIMITED/unknown."""
    value = text.strip()
    if value.lower() in UNLIMITED or value in ("", "N/A", "NONE", "Partition_Limit"):
        return None
    match = _WITH_DAYS.match(value)
    if match:
        return _parse(value)
    parts = value.split(":")
    if len(parts) == 3 and all(part.isdigit() for part in parts):  # H:MM:SS, not MM:SS
        hours, minutes, seconds = (int(part) for part in parts)
        return hours * 3600 + minutes * 60 + seconds
    if len(parts) == 2 and all(part.isdigit() for part in parts):  # scontrol prints MM:SS
        return int(parts[0]) * 60 + int(parts[1])
    return None


def _parse(value: str) -> int | None:
    match = _WITH_DAYS.match(value)
    if match:
        days, hours, minutes, seconds = (int(group) if group else 0 for group in match.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    match = _WITHOUT_DAYS.match(value)
    if match:
        numbers = [int(group) for group in match.groups() if group is not None]
        if len(numbers) == 1:  # minutes
            return numbers[0] * 60
        if len(numbers) == 2:  # minutes:seconds
            return numbers[0] * 60 + numbers[1]
        hours, minutes, seconds = numbers
        return (hours * 60 + minutes) * 60 + seconds
    return None


def format_time(seconds: int) -> str:
    """Seconds -> SLURM's "[D-]HH:MM:SS" (exact; SLURM rounds the job's limit up to minutes)."""
    if seconds < 0:
        raise ValueError(f"negative duration {seconds}")
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def slurm_minutes(seconds: int) -> int:
    """The whole minutes SLURM will grant for a limit of `seconds` (it rounds up)."""
    return max(1, math.ceil(seconds / 60))


def describe(seconds: float | None) -> str:
    """The project's one human duration: 3s, 4m 05s, 2h 07m (up to 48 h), 3d 04h; "-" for None."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
