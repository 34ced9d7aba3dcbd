"""`nnslurm doctor [--partition P] [--qos Q] [RUN_FOLDER] [--json]`: what nnslurm will do on this
cluster, partition by partition, and what in its configuration could lose work, with a fix for each.

It only reads: `scontrol show config`, `scontrol show partition -o` and, with --qos,
`sacctmgr -P -n show qos Q`; it submits nothing and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from nnslurm.core.errors import CommandError, NnslurmError, SchedulerError, UsageError
from nnslurm.runs.events import Event, read_events
from nnslurm.slurm.cluster_config import (
    QOS_FORMAT,
    ClusterConfig,
    QosConfig,
    parse_config,
    parse_partitions,
    parse_qos,
    parse_version,
)
from nnslurm.slurm.commands import run_command
from nnslurm.slurm.diagnosis import (
    ESTIMATE,
    ESTIMATED_ITERATION_S,
    Diagnosis,
    Evidence,
    Finding,
    Severity,
    StopNeed,
    diagnose,
    topics_help,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The recent stops (or checkpoint writes) of a run that its stop time is taken from: the slowest.
RECENT = 5
WIDTH = 100

EPILOG = f"""\
What it reads (read-only; nothing is submitted or changed; any user who can run scontrol can run it):
  scontrol show config           the cluster's settings (and SLURM_VERSION; cgroup.conf's section)
  scontrol show partition -o     each partition's PreemptMode, GraceTime, MaxTime, PriorityTier
  sacctmgr -P -n show qos Q      with --qos: the QOS's PreemptMode and GraceTime
  RUN_FOLDER/nnslurm_events.jsonl  with a run folder: how long its stops took (signal to durable
                                 checkpoint); without one, a stop is estimated (said so in the output)

What it judges (the topic of each finding), for nnslurm's defaults (--signal=USR1@120,
--time 24:00:00, --requeue):
{topics_help()}

Each finding is ok, info (worth knowing, nothing lost) or loses-work (a job can be killed before
its stop checkpoint is durable), with what nnslurm does there and, where something helps, a fix.

exit status: 0 nothing found that can lose work; 1 something can (each listed with its fix);
2 SLURM not reachable from here (scontrol missing or failing), or bad input.

--json prints one document with these keys:
  cluster     name, slurm_version, preempt_type, preempt_mode, kill_wait_s, job_requeue,
              send_user_signal (the setting, or null)
  stop        seconds, measured (true: from RUN_FOLDER's events), detail
  findings    the cluster-wide findings
  partitions  [name, default, preempt_mode, preemption, preempted, grace_time_s, max_time_s,
              findings]
  loses_work  [partition (null: cluster-wide), topic, fix]
  exit_status 0 or 1, as the command's
  (a finding: topic, severity, setting, nnslurm, fix)
"""


class SlurmUnreachable(NnslurmError):
    """SLURM's controller could not be asked (or answered what nnslurm cannot read)."""

    exit_code = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="what nnslurm will do on this cluster, per partition, and what could lose work (read-only)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_folder",
        metavar="RUN_FOLDER",
        nargs="?",
        type=Path,
        help="a run folder: judge with its own measured stop times instead of an estimate",
    )
    parser.add_argument(
        "--partition",
        "-p",
        action="append",
        metavar="P",
        help="judge this partition only (repeat, or P1,P2; default: every partition)",
    )
    parser.add_argument(
        "--qos", metavar="Q", help="also read this QOS (it decides preemption with preempt/qos)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document (keys below)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    stop = measured_stop(args.run_folder) if args.run_folder is not None else ESTIMATE
    config = read_config()
    partitions = _read(["scontrol", "show", "partition", "-o"], parse_partitions)
    only = tuple(name.strip() for value in args.partition or () for name in value.split(",") if name.strip())
    unknown = [name for name in only if name not in {p.name for p in partitions}]
    if unknown:
        raise UsageError(
            f"no partition {', '.join(unknown)} on this cluster.",
            hint=f"its partitions: {', '.join(p.name for p in partitions) or 'none'}.",
        )
    qos, problem = read_qos(args.qos) if args.qos else (None, None)
    evidence = Evidence(
        config=config,
        partitions=partitions,
        stop=stop,
        only=only,
        qos=qos,
        qos_name=args.qos,
        qos_problem=problem,
    )
    diagnosis = diagnose(evidence)
    print(json.dumps(document(diagnosis, config), indent=2) if args.json else render(diagnosis))
    return diagnosis.exit_status


# --- reading --------------------------------------------------------------------------------------


def read_config() -> ClusterConfig:
    config = _read(["scontrol", "show", "config"], parse_config)
    if config.version is None:  # an old or trimmed output: the client knows its release
        try:
            version = parse_version(run_command(["scontrol", "--version"]).stdout)
        except CommandError:
            version = None
        config = replace(config, version=version)
    return config


def read_qos(name: str) -> tuple[QosConfig | None, str | None]:
    """The QOS `name`, or (None, why not)."""
    try:
        text = run_command(["sacctmgr", "-P", "-n", "show", "qos", name, QOS_FORMAT]).stdout
    except CommandError as error:
        return None, f"sacctmgr could not be asked: {error}"
    qos = parse_qos(text, name)
    return (qos, None) if qos is not None else (None, f"sacctmgr does not know a QOS {name!r}")


def measured_stop(folder: Path) -> StopNeed:
    """What a stop needs by RUN_FOLDER's events: the slowest recent stop (signal to durable
    checkpoint); else the slowest recent checkpoint write plus an estimated iteration."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder.", hint="give a run folder (nnslurm status lists them).")
    records = read_events(folder)
    stops = [
        float(record["signal_to_durable_s"])
        for record in records
        if record.get("event") == Event.STOPPED and _number(record.get("signal_to_durable_s"))
    ][-RECENT:]
    if stops:
        return StopNeed(
            max(stops),
            measured=True,
            detail=f"{_slowest(len(stops), 'stop')} of {folder} (signal to durable checkpoint)",
        )
    writes = [
        float(record["seconds"])
        for record in records
        if record.get("event") == Event.CHECKPOINT and _number(record.get("seconds"))
    ][-RECENT:]
    if writes:
        return StopNeed(
            max(writes) + ESTIMATED_ITERATION_S,
            measured=True,
            detail=f"{_slowest(len(writes), 'checkpoint write')} of {folder} "
            f"({max(writes):.1f} s) + one iteration (estimated {ESTIMATED_ITERATION_S:g} s)",
        )
    return replace(ESTIMATE, detail=f"{folder} has recorded no stop or checkpoint yet: " + ESTIMATE.detail)


def _read(argv: list[str], parse: Callable[[str], T]) -> T:
    """Ask SLURM and parse the answer; SlurmUnreachable when it does not answer, or not legibly."""
    try:
        return parse(run_command(argv).stdout)
    except CommandError as error:
        raise SlurmUnreachable(
            f"SLURM is not reachable from here: {error}",
            hint="run `nnslurm doctor` where sbatch works (a login node of the cluster); "
            "`scontrol ping` says whether slurmctld answers.",
        ) from error
    except SchedulerError as error:
        raise SlurmUnreachable(error.args[0], hint=error.hint) from error


def _slowest(count: int, what: str) -> str:
    return f"the one recorded {what}" if count == 1 else f"the slowest of the {count} most recent {what}s"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- printing -------------------------------------------------------------------------------------


def render(diagnosis: Diagnosis) -> str:
    """The report as a person reads it."""
    version = f"SLURM {diagnosis.version}" if diagnosis.version else "SLURM (version unknown)"
    name = f", cluster {diagnosis.cluster_name}" if diagnosis.cluster_name else ""
    stop = diagnosis.stop
    lines = [
        f"{version}{name}: what nnslurm does here, and what could lose work.",
        *_wrap(f"A stop (signal to durable checkpoint) needs {stop.seconds:.1f} s: {stop.detail}.", ""),
        "",
        "cluster",
    ]
    for finding in diagnosis.findings:
        lines += _finding(finding)
    for partition in diagnosis.partitions:
        default = " (default)" if partition.default else ""
        lines += ["", f"partition {partition.name}{default}: {partition.preemption.setting}"]
        for finding in partition.findings:
            lines += _finding(finding)
    losing = diagnosis.losing
    lines.append("")
    if not losing:
        lines.append("Nothing found that can lose work (exit status 0).")
    else:
        lines.append(f"{len(losing)} finding(s) can lose work (exit status 1):")
        for where, finding in losing:
            place = f"partition {where}" if where else "cluster"
            lines += _wrap(f"- {place}, {finding.topic}: {finding.fix}", "  ")
    return "\n".join(lines)


def _finding(finding: Finding) -> list[str]:
    head = f"  {finding.severity.value:<11}{finding.topic:<18} {finding.setting}"
    indent = " " * 13
    lines = _wrap(head, indent + " " * 19)
    lines += _wrap(indent + finding.nnslurm, indent)
    if finding.fix:
        lines += _wrap(f"{indent}fix: {finding.fix}", indent + "     ")
    return lines


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False) or [""]


def document(diagnosis: Diagnosis, config: ClusterConfig) -> dict[str, Any]:
    """The --json document (keys in EPILOG; keep them stable)."""
    return {
        "cluster": {
            "name": diagnosis.cluster_name,
            "slurm_version": str(diagnosis.version) if diagnosis.version else None,
            "preempt_type": config.preempt_type,
            "preempt_mode": config.preempt_mode,
            "kill_wait_s": config.kill_wait_s,
            "job_requeue": config.job_requeue,
            "send_user_signal": config.send_user_signal,
        },
        "stop": {
            "seconds": round(diagnosis.stop.seconds, 3),
            "measured": diagnosis.stop.measured,
            "detail": diagnosis.stop.detail,
        },
        "findings": [_finding_document(finding) for finding in diagnosis.findings],
        "partitions": [
            {
                "name": partition.name,
                "default": partition.default,
                "preempt_mode": partition.preemption.mode,
                "preemption": partition.preemption.setting,
                "preempted": partition.preemption.preempted,
                "grace_time_s": partition.preemption.grace_s,
                "max_time_s": partition.max_time_s,
                "findings": [_finding_document(finding) for finding in partition.findings],
            }
            for partition in diagnosis.partitions
        ],
        "loses_work": [
            {"partition": where, "topic": finding.topic, "fix": finding.fix}
            for where, finding in diagnosis.losing
        ],
        "exit_status": diagnosis.exit_status,
    }


def _finding_document(finding: Finding) -> dict[str, Any]:
    return {
        "topic": finding.topic,
        "severity": str(Severity(finding.severity)),
        "setting": finding.setting,
        "nnslurm": finding.nnslurm,
        "fix": finding.fix,
    }
