"""What a cluster's SLURM is set to: the text of `scontrol show config`, `scontrol show partition -o`
and `sacctmgr -P -n show qos` in, frozen dataclasses out. Pure: nothing here runs a command.

Read by `nnslurm doctor` (nnslurm.slurm.diagnosis judges it). The values are kept as SLURM prints
them (PreemptMode "SUSPEND,GANG", "cluster" for a QOS that follows the cluster), with seconds
parsed where a judgement compares them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from nnslurm.core.errors import SchedulerError
from nnslurm.core.timeparse import parse_scontrol_time

# "KillWait                = 30 sec": a key, spaces, "=", the value (may be empty or hold spaces).
_CONFIG_LINE = re.compile(r"^(\S+?)\s*=\s?(.*)$")
# "Cgroup Support Configuration:" starts a section of another file's settings (cgroup.conf, ...).
_SECTION = re.compile(r"^([A-Z][A-Za-z ]+ Configuration):?$")
# A key of a one-line record starts a token: letters first (PartitionName=, TRES=cpu=2,mem=...).
_RECORD_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")
_NULL = ("(null)", "", "none", "None", "N/A")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")

MAIN = "main"  # the section of slurm.conf's own settings
CGROUP = "Cgroup Support Configuration"


@dataclass(frozen=True, order=True)
class SlurmVersion:
    """SLURM's release, e.g. 22.05.8 (year.month.patch)."""

    major: int
    minor: int
    patch: int = 0

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor:02d}.{self.patch}"


def parse_version(text: str) -> SlurmVersion | None:
    """`22.05.8`, `slurm-wlm 22.05.8`, `slurm 23.11.4` -> SlurmVersion; None if none is in the text."""
    match = _VERSION.search(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return SlurmVersion(int(major), int(minor), int(patch or 0))


@dataclass(frozen=True)
class ClusterConfig:
    """`scontrol show config`: the settings that decide what happens to a job at its end."""

    name: str | None  # ClusterName
    version: SlurmVersion | None  # SLURM_VERSION
    preempt_type: str  # PreemptType: preempt/none, preempt/partition_prio, preempt/qos
    preempt_mode: str  # PreemptMode: OFF, REQUEUE, CANCEL, SUSPEND,GANG, GANG (cluster-wide default)
    preempt_parameters: tuple[str, ...]  # PreemptParameters (23.02+): send_user_signal, ...
    slurmctld_parameters: tuple[str, ...]  # SlurmctldParameters (22.05: preempt_send_user_signal)
    kill_wait_s: int | None  # KillWait: SIGTERM .. SIGKILL at a job's end
    job_requeue: bool | None  # JobRequeue: whether jobs are requeueable unless they say --no-requeue
    max_batch_requeue: int | None  # MaxBatchRequeue (printed since 23.02)
    proctrack_type: str | None  # ProctrackType: proctrack/cgroup, /linuxproc, /pgid
    scheduler_type: str | None  # SchedulerType: sched/backfill or sched/builtin
    over_time_limit_min: int | None  # OverTimeLimit: minutes a job may run past its limit
    signal_children: bool | None  # cgroup.conf SignalChildrenProcesses (None: not printed)
    sections: Mapping[str, Mapping[str, str]] = field(repr=False, default_factory=dict)  # every key

    @property
    def preemption_enabled(self) -> bool:
        return self.preempt_type not in ("preempt/none", "") and self.preempt_mode.upper() != "OFF"

    @property
    def send_user_signal(self) -> str | None:
        """The setting that makes SLURM send the job's --signal at preemption, as written; None: off."""
        if "send_user_signal" in self.preempt_parameters:
            return "PreemptParameters=send_user_signal"
        if "preempt_send_user_signal" in self.slurmctld_parameters:
            return "SlurmctldParameters=preempt_send_user_signal"
        return None


def parse_config(text: str) -> ClusterConfig:
    """Parse `scontrol show config`; SchedulerError (showing the text) when it is not that output."""
    sections = _config_sections(text)
    main = sections.get(MAIN, {})
    if "SLURM_VERSION" not in main and "KillWait" not in main:
        raise SchedulerError(
            "cannot read the output of `scontrol show config`: no SLURM_VERSION= or KillWait= in it:\n"
            + (text.strip()[:2000] or "(empty output)"),
            hint="nnslurm expects `KEY = VALUE` lines as SLURM 20-25 print them.",
        )
    cgroup = sections.get(CGROUP, {})
    version_text = main.get("SLURM_VERSION", "")
    return ClusterConfig(
        name=_value(main.get("ClusterName")),
        version=parse_version(version_text) if version_text else None,
        preempt_type=_value(main.get("PreemptType")) or "preempt/none",
        preempt_mode=(_value(main.get("PreemptMode")) or "OFF").upper(),
        preempt_parameters=_words(main.get("PreemptParameters")),
        slurmctld_parameters=_words(main.get("SlurmctldParameters")),
        kill_wait_s=_seconds(main.get("KillWait")),
        job_requeue=_flag(main.get("JobRequeue")),
        max_batch_requeue=_integer(main.get("MaxBatchRequeue")),
        proctrack_type=_value(main.get("ProctrackType")),
        scheduler_type=_value(main.get("SchedulerType")),
        over_time_limit_min=_integer((main.get("OverTimeLimit") or "").split(" ")[0]),
        signal_children=_flag(cgroup.get("SignalChildrenProcesses")),
        sections=sections,
    )


def _config_sections(text: str) -> dict[str, dict[str, str]]:
    """The `KEY = VALUE` lines of each section: slurm.conf's (MAIN), then e.g. cgroup.conf's."""
    sections: dict[str, dict[str, str]] = {MAIN: {}}
    current = sections[MAIN]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("Configuration data as of") or line.startswith("Slurmctld("):
            continue
        header = _SECTION.match(line)
        if header and "=" not in line:
            current = sections.setdefault(header.group(1), {})
            continue
        match = _CONFIG_LINE.match(line)
        if match:
            current.setdefault(match.group(1), match.group(2).strip())
    return sections


@dataclass(frozen=True)
class PartitionConfig:
    """One record of `scontrol show partition -o`."""

    name: str  # PartitionName
    default: bool  # Default=YES: jobs without --partition go here
    state: str  # State: UP, DOWN, DRAIN, INACTIVE
    preempt_mode: str | None  # PreemptMode as scontrol prints it (the cluster's unless set here)
    grace_time_s: int | None  # GraceTime: seconds a preempted job keeps before it is ended
    max_time_s: int | None  # MaxTime (None: UNLIMITED)
    priority_tier: int | None  # PriorityTier: with preempt/partition_prio a higher tier preempts
    qos: str | None  # QoS: the partition's QOS (N/A: none)
    fields: Mapping[str, str] = field(repr=False, default_factory=dict)  # every key=value


def parse_partitions(text: str) -> tuple[PartitionConfig, ...]:
    """Every record of `scontrol show partition -o` (one line each), in SLURM's order."""
    partitions = []
    for line in text.splitlines():
        fields = parse_record(line)
        if "PartitionName" not in fields:
            continue
        partitions.append(
            PartitionConfig(
                name=fields["PartitionName"],
                default=fields.get("Default", "NO").upper() == "YES",
                state=fields.get("State", "UP").upper(),
                preempt_mode=(_value(fields.get("PreemptMode")) or "").upper() or None,
                grace_time_s=_integer(fields.get("GraceTime")),
                max_time_s=parse_scontrol_time(fields.get("MaxTime", "UNLIMITED")),
                priority_tier=_integer(fields.get("PriorityTier")),
                qos=_value(fields.get("QoS")),
                fields=fields,
            )
        )
    if not partitions and text.strip() and "No partitions" not in text:
        raise SchedulerError(
            "cannot read the output of `scontrol show partition -o`: no PartitionName= in it:\n"
            + text.strip()[:2000]
        )
    return tuple(partitions)


@dataclass(frozen=True)
class QosConfig:
    """One QOS from `sacctmgr -P -n show qos NAME format=Name,PreemptMode,GraceTime`."""

    name: str  # Name
    preempt_mode: str | None  # PreemptMode; None: "cluster" (the cluster's PreemptMode applies)
    grace_time_s: int | None  # GraceTime (with preempt/qos the QOS's, not the partition's, applies)


QOS_FORMAT = "format=Name,PreemptMode,GraceTime"


def parse_qos(text: str, name: str) -> QosConfig | None:
    """The QOS `name` in `sacctmgr -P -n show qos ... QOS_FORMAT` output; None when it is not there."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[0] == name:
            mode = parts[1].strip().upper()
            return QosConfig(
                name=name,
                preempt_mode=None if mode in ("", "CLUSTER") else mode,
                grace_time_s=parse_scontrol_time(parts[2]) if parts[2].strip() else None,
            )
    return None


def parse_record(line: str) -> dict[str, str]:
    """The key=value pairs of one `scontrol show ... -o` line (values may hold spaces and '=')."""
    fields: dict[str, str] = {}
    matches = list(_RECORD_KEY.finditer(line))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(line)
        fields.setdefault(match.group(1), line[match.end() : end].strip())
    return fields


def _value(text: str | None) -> str | None:
    return None if text is None or text.strip() in _NULL else text.strip()


def _words(text: str | None) -> tuple[str, ...]:
    value = _value(text)
    return tuple(word.strip() for word in value.split(",") if word.strip()) if value else ()


def _integer(text: str | None) -> int | None:
    value = _value(text)
    return int(value) if value is not None and value.isdigit() else None


def _seconds(text: str | None) -> int | None:
    """ "30 sec" -> 30."""
    value = _value(text)
    return _integer(value.split(" ")[0]) if value else None


def _flag(text: str | None) -> bool | None:
    value = (_value(text) or "").lower()
    if value in ("1", "yes", "true"):
        return True
    if value in ("0", "no", "false"):
        return False
    return None
