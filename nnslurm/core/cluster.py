"""Cluster settings: defaults < a TOML profile < command-line flags.

Profiles live in `./nnslurm.toml`, then `~/.config/nnslurm/config.toml` ($XDG_CONFIG_HOME is
honoured); the first file that defines the profile wins:

    [profiles.gpu]
    partition = "gpu"
    account = "my-lab"
    time = "2-00:00:00"
    time_min = "4:00:00"       # optional: SLURM may start the job sooner with a limit down to this
    gpus = 1
    cpus_per_task = 8
    mem = "64G"
    setup = ["module load cuda/12.1", "source ~/venvs/nnunet/bin/activate"]
    sbatch_args = { mail-type = "END,FAIL" }

A profile named `default` is used when `--profile` is not given.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nnslurm.core.config import parse_signal
from nnslurm.core.directives import check_log_folder, check_value
from nnslurm.core.errors import UsageError
from nnslurm.core.timeparse import describe, format_time, parse_time

DEFAULT_TIME_S = 24 * 3600
DEFAULT_SIGNAL = "USR1"
DEFAULT_SIGNAL_DELAY_S = 120
DEFAULT_PROFILE = "default"

_OPTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # what sbatch's long options look like

# sbatch options nnslurm sets itself, or that have their own flag: --sbatch-arg may not set them.
_RESERVED = {
    "signal": "--signal and --signal-delay",
    "requeue": "nothing: nnslurm always passes --requeue",
    "no-requeue": "nothing: nnslurm needs --requeue",
    "open-mode": "nothing: nnslurm uses append",
    "output": "--log-dir",
    "error": "--log-dir",
    "array": "several --fold/--configuration values",
    "time": "--time",
    "t": "--time",
    "time-min": "--time-min",
    "partition": "--partition",
    "p": "--partition",
    "account": "--account",
    "A": "--account",
    "qos": "--qos",
    "gpus-per-node": "--gpus",
    "nodes": "--nodes",
    "N": "--nodes",
    "ntasks-per-node": "--nodes (nnslurm runs one task per node, a launcher of its -num_gpus ranks)",
    "cpus-per-task": "--cpus-per-task",
    "c": "--cpus-per-task",
    "mem": "--mem",
    "constraint": "--constraint",
    "C": "--constraint",
    "job-name": "--job-name",
    "J": "--job-name",
}


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how long a job runs. Each field is one sbatch option (or nnslurm's own)."""

    partition: str | None = None  # --partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    time_s: int = DEFAULT_TIME_S  # --time (SLURM rounds up to whole minutes; local: exact)
    time_min_s: int | None = None  # --time-min: backfill may start the job with a limit down to this
    gpus: int | None = None  # --gpus-per-node
    nodes: int = 1  # --nodes: one srun task per node, each launching -num_gpus ranks (training only)
    cpus_per_task: int | None = None  # --cpus-per-task
    mem: str | None = None  # --mem, e.g. "64G"
    constraint: str | None = None  # --constraint
    signal: str = DEFAULT_SIGNAL  # --signal=SIG@DELAY: the walltime warning signal
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S  # --signal=SIG@DELAY: seconds before the limit
    send_signal: bool = True  # False (--no-signal): no --signal line; the end-time rule stops the job
    sbatch_args: tuple[tuple[str, str | None], ...] = ()  # any other #SBATCH --KEY[=VALUE]
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, source venv)
    log_dir: str | None = None  # nnslurm's submitit folder (default $nnUNet_results/.nnslurm/submitit)

    def __post_init__(self) -> None:
        if self.time_s <= 0:
            raise UsageError(f"--time must be positive, got {self.time_s} s.")
        if self.time_min_s is not None and not 0 < self.time_min_s <= self.time_s:
            raise UsageError(
                f"--time-min {format_time(max(0, self.time_min_s))} must be positive and at most --time "
                f"{format_time(self.time_s)}: it is the shortest limit SLURM may start the job with.",
                hint="lower --time-min or raise --time (drop --time-min to always get the whole --time).",
            )
        if self.signal_delay_s < 0:
            raise UsageError(f"--signal-delay must be 0 or more seconds, got {self.signal_delay_s}.")
        if self.send_signal and self.time_s <= self.signal_delay_s:
            raise UsageError(
                f"--time {format_time(self.time_s)} must be longer than --signal-delay "
                f"{self.signal_delay_s} s: the warning would come before the job starts.",
                hint="raise --time or lower --signal-delay (the signal comes that many seconds before the "
                "limit, SLURM may send it up to 60 s earlier).",
            )
        if self.nodes < 1:
            raise UsageError(f"--nodes must be 1 or more, got {self.nodes}.")
        for count, flag in ((self.gpus, "--gpus"), (self.cpus_per_task, "--cpus-per-task")):
            if count is not None and count < (0 if flag == "--gpus" else 1):
                raise UsageError(f"{flag} must be {'0' if flag == '--gpus' else '1'} or more, got {count}.")
        parse_signal(self.signal)
        for flag, text in (
            ("--partition", self.partition),
            ("--account", self.account),
            ("--qos", self.qos),
            ("--mem", self.mem),
            ("--constraint", self.constraint),
        ):
            if text is not None:
                check_value(flag, text)
        for key, value in self.sbatch_args:
            check_sbatch_key(key)
            if value is not None:
                check_value(f"--sbatch-arg {key}", value)
        if self.log_dir is not None:
            check_log_folder("--log-dir", self.log_dir)

    @property
    def signal_name(self) -> str:
        """USR1 (no SIG prefix), as sbatch's --signal and SUBMITIT_PREEMPT_SIGNAL take it."""
        return parse_signal(self.signal).name.removeprefix("SIG")

    def describe(self) -> list[tuple[str, str]]:
        """(setting, value) pairs for `--dry-run`."""
        rows = [
            ("partition", self.partition or "(cluster default)"),
            ("account", self.account or "(cluster default)"),
            ("qos", self.qos or "(cluster default)"),
            ("time", f"{format_time(self.time_s)} ({describe(self.time_s)})"),
            ("nodes", str(self.nodes)),
            ("gpus per node", "none" if not self.gpus else str(self.gpus)),
            ("cpus per task", str(self.cpus_per_task or "(cluster default)")),
            ("mem", self.mem or "(cluster default)"),
            ("constraint", self.constraint or "none"),
            (
                "warning signal",
                f"SIG{self.signal_name} {self.signal_delay_s} s before the time limit"
                if self.send_signal
                else "none (--no-signal): the end-time rule stops the job before the limit",
            ),
        ]
        if self.time_min_s is not None:
            shorter = f"{format_time(self.time_min_s)}: backfill may start the job with a limit down to this"
            rows.insert(4, ("time min", shorter))
        rows += [(f"sbatch --{key}", "(flag)" if value is None else value) for key, value in self.sbatch_args]
        rows += [("setup", line) for line in self.setup]
        return rows


def check_sbatch_key(key: str) -> str:
    name = key.strip().lstrip("-")
    if not _OPTION_NAME.fullmatch(name):
        raise UsageError(
            f"--sbatch-arg key {key!r} is not an sbatch option name.",
            hint="write --sbatch-arg KEY=VALUE, e.g. --sbatch-arg mail-type=END.",
        )
    if name in _RESERVED or name.replace("_", "-") in _RESERVED:
        use = _RESERVED.get(name) or _RESERVED[name.replace("_", "-")]
        raise UsageError(f"--sbatch-arg {name} is set by nnslurm itself.", hint=f"use {use}.")
    return name


def parse_sbatch_arg(text: str) -> tuple[str, str | None]:
    """'mail-type=END' -> ('mail-type', 'END'); 'exclusive' -> ('exclusive', None)."""
    key, sep, value = text.partition("=")
    return check_sbatch_key(key), (value if sep else None)


# --- profiles -----------------------------------------------------------------------------------

# TOML key -> how to turn its value into a ClusterSettings field.
PROFILE_KEYS = (
    "partition",
    "account",
    "qos",
    "time",
    "time_min",
    "gpus",
    "nodes",
    "cpus_per_task",
    "mem",
    "constraint",
    "signal",
    "signal_delay",
    "sbatch_args",
    "setup",
    "log_dir",
)


def profile_files(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if environ is None else environ
    config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return [(cwd or Path.cwd()) / "nnslurm.toml", config_home / "nnslurm" / "config.toml"]


def load_profile(name: str | None, files: Sequence[Path] | None = None) -> tuple[dict[str, Any], Path | None]:
    """The raw table of profile `name` (None: `default` if defined, else nothing) and its file."""
    files = profile_files() if files is None else files
    seen: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            continue
        try:
            document = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise UsageError(f"{path} is not valid TOML: {error}") from error
        profiles = document.get("profiles", {})
        unknown_top = sorted(set(document) - {"profiles"})
        if unknown_top or not isinstance(profiles, dict):
            raise UsageError(
                f"{path}: unknown top-level key(s) {', '.join(unknown_top) or 'profiles'}.",
                hint="put settings in [profiles.NAME] tables.",
            )
        for profile_name, table in profiles.items():
            seen.setdefault(profile_name, path)
            if profile_name == (name or DEFAULT_PROFILE):
                if not isinstance(table, dict):
                    raise UsageError(f"{path}: profiles.{profile_name} must be a table.")
                return _normalise(table, path, profile_name), path
    if name is None:
        return {}, None
    where = ", ".join(str(p) for p in files)
    known = ", ".join(f"{n} ({p})" for n, p in sorted(seen.items())) or "none"
    raise UsageError(
        f"profile {name!r} not found (searched {where}; profiles found: {known}).",
        hint="add a [profiles.NAME] table to ./nnslurm.toml or ~/.config/nnslurm/config.toml.",
    )


def _normalise(table: dict[str, Any], path: Path, profile: str) -> dict[str, Any]:
    normal = {key.replace("-", "_"): value for key, value in table.items()}
    unknown = sorted(set(normal) - set(PROFILE_KEYS))
    if unknown:
        raise UsageError(
            f"{path}: profile {profile!r} has unknown key(s): {', '.join(unknown)}.",
            hint=f"valid keys: {', '.join(PROFILE_KEYS)}.",
        )
    return normal


def profile_values(table: Mapping[str, Any], source: str = "profile") -> dict[str, Any]:
    """A profile's table -> ClusterSettings field values (types checked, the key named in errors)."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        values.update(_convert(key, value, source))
    return values


def _convert(key: str, value: Any, source: str) -> dict[str, Any]:
    def wrong(kind: str) -> UsageError:
        return UsageError(f"{source}: {key} must be {kind}, got {value!r}.")

    if key in ("partition", "account", "qos", "mem", "constraint", "signal", "log_dir"):
        if not isinstance(value, str):
            raise wrong("a string")
        return {key: value}
    if key in ("time", "time_min"):
        field = f"{key}_s"
        if isinstance(value, int) and not isinstance(value, bool):
            return {field: value * 60}  # a bare number is minutes, as for sbatch
        if not isinstance(value, str):
            raise wrong('a SLURM time such as "90" or "1-00:00:00"')
        return {field: parse_time(value, flag=f"{source}: {key}")}
    if key in ("gpus", "nodes", "cpus_per_task", "signal_delay"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("a whole number")
        return {"signal_delay_s" if key == "signal_delay" else key: value}
    if key == "setup":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
            raise wrong("a list of shell lines")
        return {"setup": tuple(value)}
    if key == "sbatch_args":
        pairs: list[tuple[str, str | None]] = []
        if isinstance(value, dict):
            for name, item in value.items():
                pairs.append((check_sbatch_key(name), None if item is True else str(item)))
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            pairs = [parse_sbatch_arg(item) for item in value]
        else:
            raise wrong('a table (mail-type = "END") or a list of "KEY=VALUE" strings')
        return {"sbatch_args": tuple(pairs)}
    raise UsageError(f"{source}: unknown key {key!r}.", hint=f"valid keys: {', '.join(PROFILE_KEYS)}.")


def resolve(
    profile: str | None, overrides: Mapping[str, Any], files: Sequence[Path] | None = None
) -> tuple[ClusterSettings, Path | None]:
    """Defaults < profile < overrides (ClusterSettings field names; None = not given)."""
    table, path = load_profile(profile, files)
    source = f"{path} [profiles.{profile or DEFAULT_PROFILE}]" if path else "profile"
    values = profile_values(table, source)
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - {f.name for f in fields(ClusterSettings)})
    if unknown:
        raise ValueError(f"not ClusterSettings fields: {unknown}")
    if "sbatch_args" in given:  # a key given on the command line replaces the profile's
        keys = {key for key, _ in given["sbatch_args"]}
        kept = tuple(pair for pair in values.get("sbatch_args", ()) if pair[0] not in keys)
        given["sbatch_args"] = kept + tuple(given["sbatch_args"])
    if "setup" in given:  # command-line setup lines run after the profile's
        given["setup"] = tuple(values.get("setup", ())) + tuple(given["setup"])
    return ClusterSettings(**{**values, **given}), path
