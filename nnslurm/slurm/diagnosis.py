"""What nnslurm will do on a cluster, and what there could lose work: `diagnose(evidence)`.

Pure: evidence in (the cluster's settings from nnslurm.slurm.cluster_config, what a stop needs),
findings out; `nnslurm doctor` reads the evidence and prints the findings.

SLURM's behaviour the judgement rests on (measured on the dev cluster, SLURM 22.05.8, see
docs/slurm-dev-cluster.md, or as SLURM documents it):

- Walltime: the job's --signal (nnslurm: USR1 120 s before the limit) to its steps, or with `B:`
  to the batch shell; at the limit SIGTERM, SIGKILL KillWait later.
- Preemption (REQUEUE, CANCEL) with a GraceTime: the job's steps get SIGTERM at once (its --signal
  instead where send_user_signal is set), the batch shell gets nothing until the grace is over
  unless send_user_signal is set; at the end of the grace SIGTERM to all, SIGKILL KillWait later.
  So a job of `nnslurm submit` (training in an srun step) has GraceTime + KillWait to stop; a job
  of nnslurm's sbatch templates (`exec nnslurm train` in the batch shell) has that with
  send_user_signal, else only KillWait.
- SUSPEND/GANG: the job is stopped and resumed later; its time limit does not run meanwhile.
- proctrack/cgroup from 23.11 signals a step's main process only, unless cgroup.conf says
  SignalChildrenProcesses=yes; other trackers signal every process of the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from nnslurm.core.cluster import DEFAULT_SIGNAL, DEFAULT_SIGNAL_DELAY_S, DEFAULT_TIME_S
from nnslurm.core.config import TrainingOptions
from nnslurm.core.timeparse import describe, format_time
from nnslurm.slurm.cluster_config import ClusterConfig, PartitionConfig, QosConfig, SlurmVersion

# Without a run's own measurements, a stop of a real nnU-Net training is estimated as one
# iteration (a 3d_fullres iteration takes 1-2 s on a GPU) plus writing its ~250 MB checkpoint to a
# shared filesystem at ~30 MB/s. The dev cluster's tiny model stops in under a second.
ESTIMATED_ITERATION_S = 2.0
ESTIMATED_CHECKPOINT_S = 8.0
ESTIMATED_STOP_S = ESTIMATED_ITERATION_S + ESTIMATED_CHECKPOINT_S
# Asked of a fix on top of what a stop needs (a stop varies: a slow iteration, a busy filesystem).
FIX_SPARE_S = 10


class Severity(StrEnum):
    """How much a finding matters; `loses-work` makes `nnslurm doctor` exit 1."""

    OK = "ok"  # nnslurm works as intended here
    INFO = "info"  # worth knowing (queue time, a limit to respect), nothing lost
    LOSES_WORK = "loses-work"  # a job can be killed before its stop checkpoint is durable


@dataclass(frozen=True)
class Finding:
    """One thing the cluster's settings mean for nnslurm."""

    topic: str  # a stable key: preemption, preemption-time, walltime-signal, ... (FINDING_TOPICS)
    severity: Severity
    setting: str  # what SLURM is set to, as slurm.conf spells it
    nnslurm: str  # what nnslurm does there, and what happens to the job
    fix: str | None = None  # what to change; always set for loses-work


FINDING_TOPICS = {
    "end-time": "whether jobs get SLURM_JOB_END_TIME; how nnslurm knows a job's end",
    "backfill": "SchedulerType: whether a job can start early in a hole of the schedule",
    "requeue": "JobRequeue: whether jobs are requeueable by default",
    "max-batch-requeue": "MaxBatchRequeue: SLURM's own requeues before it holds a job",
    "process-tracking": "ProctrackType and SignalChildrenProcesses: which processes hear a signal",
    "qos": "the --qos asked about: its PreemptMode and GraceTime",
    "walltime-signal": "the warning signal before the time limit, against what a stop needs",
    "max-time": "the partition's MaxTime against nnslurm's default --time",
    "preemption": "PreemptMode (the partition's, the QOS's or the cluster's): what SLURM does",
    "preemption-signal": "which signal a preempted job gets, and when (send_user_signal)",
    "preemption-time": "GraceTime + KillWait against what a stop needs",
}


@dataclass(frozen=True)
class StopNeed:
    """How long a stop takes: from the signal to a durable checkpoint."""

    seconds: float
    measured: bool  # True: from a run's own events; False: ESTIMATED_STOP_S
    detail: str  # where the number comes from, in words


ESTIMATE = StopNeed(
    ESTIMATED_STOP_S,
    measured=False,
    detail=f"an estimate: one nnU-Net iteration (~{ESTIMATED_ITERATION_S:g} s) + writing a ~250 MB "
    f"checkpoint (~{ESTIMATED_CHECKPOINT_S:g} s); give a run folder to use its measured stops",
)


@dataclass(frozen=True)
class NnslurmAsks:
    """What nnslurm asks of SLURM by default (nnslurm.core.cluster, nnslurm.core.config)."""

    signal: str = DEFAULT_SIGNAL  # --signal=SIG@DELAY
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    time_s: int = DEFAULT_TIME_S  # --time
    max_requeues: int = TrainingOptions.max_requeues  # --max-requeues (its default)
    end_time_refresh_s: float = TrainingOptions.end_time_refresh_s  # --end-time-refresh


@dataclass(frozen=True)
class Evidence:
    """Everything `diagnose` judges."""

    config: ClusterConfig
    partitions: tuple[PartitionConfig, ...]  # every partition (a higher PriorityTier preempts)
    stop: StopNeed = ESTIMATE
    only: tuple[str, ...] = ()  # --partition: judge these (empty: all)
    qos: QosConfig | None = None  # --qos, as sacctmgr answered
    qos_name: str | None = None  # --qos as asked
    qos_problem: str | None = None  # why the QOS could not be read
    asks: NnslurmAsks = field(default_factory=NnslurmAsks)


@dataclass(frozen=True)
class Preemption:
    """How jobs of one partition are preempted."""

    mode: str  # OFF, REQUEUE, CANCEL, SUSPEND, GANG, or UNKNOWN (preempt/qos without --qos)
    setting: str  # where it comes from, e.g. "PreemptMode=REQUEUE (partition low)"
    grace_s: int  # GraceTime that applies (the partition's, or the QOS's with preempt/qos)
    preempted: bool  # whether anything can preempt these jobs at all


@dataclass(frozen=True)
class PartitionReport:
    name: str
    default: bool
    preemption: Preemption
    max_time_s: int | None
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Diagnosis:
    cluster_name: str | None
    version: SlurmVersion | None
    stop: StopNeed
    findings: tuple[Finding, ...]  # cluster-wide
    partitions: tuple[PartitionReport, ...]

    @property
    def losing(self) -> list[tuple[str | None, Finding]]:
        """(partition or None for the cluster, finding) of every finding that can lose work."""
        found: list[tuple[str | None, Finding]] = [
            (None, f) for f in self.findings if f.severity == Severity.LOSES_WORK
        ]
        for partition in self.partitions:
            found += [(partition.name, f) for f in partition.findings if f.severity == Severity.LOSES_WORK]
        return found

    @property
    def exit_status(self) -> int:
        return 1 if self.losing else 0


def diagnose(evidence: Evidence) -> Diagnosis:
    """Judge the cluster, and each partition (those in `evidence.only`, else all)."""
    config = evidence.config
    chosen = [p for p in evidence.partitions if not evidence.only or p.name in evidence.only]
    findings = [
        _end_time(config, evidence.asks),
        _backfill(config),
        _requeue(config),
        _max_batch_requeue(config, evidence.asks),
        _process_tracking(config),
    ]
    if evidence.qos_name is not None:
        findings.append(_qos(config, evidence))
    reports = []
    for partition in chosen:
        preemption = _preemption(config, partition, evidence)
        reports.append(
            PartitionReport(
                name=partition.name,
                default=partition.default,
                preemption=preemption,
                max_time_s=partition.max_time_s,
                findings=tuple(_partition_findings(config, partition, preemption, evidence)),
            )
        )
    return Diagnosis(config.name, config.version, evidence.stop, tuple(findings), tuple(reports))


# --- the cluster ----------------------------------------------------------------------------------


def _end_time(config: ClusterConfig, asks: NnslurmAsks) -> Finding:
    rule = (
        "nnslurm's end-time rule reads the job's EndTime with `scontrol show job` (at the start, every "
        f"{describe(asks.end_time_refresh_s)} and once more before it acts), which follows a limit "
        "changed later (scontrol update, preemption's grace), and stops before it, signal or not."
    )
    if config.version is None:
        return Finding("end-time", Severity.INFO, "SLURM_VERSION unknown", rule)
    if config.version.at_least(23, 2):
        return Finding(
            "end-time",
            Severity.OK,
            f"SLURM {config.version}: jobs get SLURM_JOB_END_TIME",
            "SLURM tells a job its end at the start; " + rule,
        )
    return Finding(
        "end-time", Severity.OK, f"SLURM {config.version} (< 23.02): no SLURM_JOB_END_TIME in jobs", rule
    )


def _backfill(config: ClusterConfig) -> Finding:
    scheduler = config.scheduler_type or "unknown"
    if scheduler == "sched/backfill":
        return Finding(
            "backfill",
            Severity.OK,
            f"SchedulerType={scheduler}",
            "backfill is on: a job whose --time fits a hole before a reserved job starts early; "
            "sbatch's --time-min lets SLURM shorten the limit to fit, and nnslurm's end-time rule "
            "stops such a job before its granted end.",
        )
    return Finding(
        "backfill",
        Severity.INFO,
        f"SchedulerType={scheduler}",
        "backfill is off: jobs start in priority order only; a shorter --time or --time-min does not "
        "start a job sooner.",
        fix="SchedulerType=sched/backfill starts short jobs in the holes of the schedule.",
    )


def _requeue(config: ClusterConfig) -> Finding:
    if config.job_requeue is False:
        return Finding(
            "requeue",
            Severity.INFO,
            "JobRequeue=0",
            "jobs are not requeueable unless they ask: nnslurm submits with --requeue and its sbatch "
            "templates say `#SBATCH --requeue`, so its jobs are requeued after a preemption and can "
            "requeue themselves before the time limit. A job script of your own needs --requeue too, "
            "or SLURM cancels it on preemption instead of requeueing it.",
        )
    return Finding(
        "requeue",
        Severity.OK,
        "JobRequeue=1" if config.job_requeue else "JobRequeue unknown",
        "jobs are requeueable; nnslurm submits with --requeue in any case.",
    )


def _max_batch_requeue(config: ClusterConfig, asks: NnslurmAsks) -> Finding:
    ours = (
        f"nnslurm's own requeues (`scontrol requeue` before the time limit, at most --max-requeues "
        f"{asks.max_requeues}) do not count toward it"
    )
    if config.max_batch_requeue is None:
        return Finding(
            "max-batch-requeue",
            Severity.OK,
            "MaxBatchRequeue not shown (SLURM < 23.02: a built-in limit)",
            f"SLURM holds a batch job that it requeued itself too often after failed launches or node "
            f"failures; {ours}.",
        )
    return Finding(
        "max-batch-requeue",
        Severity.OK,
        f"MaxBatchRequeue={config.max_batch_requeue}",
        f"after {config.max_batch_requeue} requeues of its own (failed launches, node failures) SLURM "
        f"holds a job (Reason JobHoldMaxRequeue); `scontrol release JOBID` lets it go on from its "
        f"checkpoint; {ours}.",
    )


def _process_tracking(config: ClusterConfig) -> Finding:
    tracker = config.proctrack_type or "unknown"
    parents_only = (
        tracker == "proctrack/cgroup"
        and config.version is not None
        and config.version.at_least(23, 11)
        and config.signal_children is not True
    )
    children = {True: "yes", False: "no", None: "not set (no)"}[config.signal_children]
    setting = f"ProctrackType={tracker}"
    if tracker == "proctrack/cgroup":
        setting += f", SignalChildrenProcesses={children}"
    multi_gpu = (
        "Several GPUs (-num_gpus): the ranks are the training process's children; nnslurm "
        "passes the stop on to them itself."
    )
    if parents_only:
        what = (
            "SLURM signals only a step's main process: that is nnslurm's training process (one per "
            "job), so it hears the signal; its data-loader workers do not, as intended. " + multi_gpu
        )
    else:
        what = (
            "SLURM signals every process of a step: the training process acts on it; its data-loader "
            "workers ignore it (they are guarded by the owner's pid). " + multi_gpu
        )
    if tracker == "proctrack/pgid":
        what += " A process that leaves its process group is not tracked (nor killed at the job's end)."
    return Finding("process-tracking", Severity.OK, setting, what)


def _qos(config: ClusterConfig, evidence: Evidence) -> Finding:
    name = evidence.qos_name
    if evidence.qos is None:
        why = evidence.qos_problem or f"sacctmgr does not know a QOS {name!r}"
        return Finding(
            "qos",
            Severity.INFO,
            f"QOS {name}: could not be read",
            f"{why}. "
            + (
                "With PreemptType=preempt/qos its PreemptMode and GraceTime decide preemption; "
                "they are not judged here."
                if config.preempt_type == "preempt/qos"
                else "It matters for preemption only with PreemptType=preempt/qos "
                f"({config.preempt_type} here)."
            ),
            fix="ask the admins for the QOS's PreemptMode and GraceTime (`sacctmgr show qos NAME`).",
        )
    qos = evidence.qos
    mode = qos.preempt_mode or f"cluster ({config.preempt_mode})"
    grace = "-" if qos.grace_time_s is None else f"{qos.grace_time_s} s"
    applies = (
        "they decide how its jobs are preempted (PreemptType=preempt/qos): see each partition."
        if config.preempt_type == "preempt/qos"
        else f"they do not apply here: PreemptType={config.preempt_type} takes the partition's."
    )
    return Finding("qos", Severity.OK, f"QOS {qos.name}: PreemptMode={mode} GraceTime={grace}", applies)


# --- one partition --------------------------------------------------------------------------------


def base_mode(mode: str) -> str:
    """The preemption of a PreemptMode value: "SUSPEND,GANG" -> SUSPEND, "GANG" -> GANG."""
    words = [word.strip().upper() for word in mode.split(",")]
    for base in ("OFF", "CANCEL", "REQUEUE", "SUSPEND", "GANG"):
        if base in words:
            return base
    return mode.upper() or "OFF"


def _preemption(config: ClusterConfig, partition: PartitionConfig, evidence: Evidence) -> Preemption:
    if config.preempt_type in ("preempt/none", ""):
        return Preemption("OFF", f"PreemptType={config.preempt_type}", 0, preempted=False)
    if config.preempt_type == "preempt/qos":
        qos = evidence.qos
        if qos is None:
            return Preemption(
                "UNKNOWN", "PreemptType=preempt/qos (the QOS decides; give --qos)", 0, preempted=True
            )
        mode = qos.preempt_mode or config.preempt_mode
        where = f"QOS {qos.name}" if qos.preempt_mode else f"the cluster's, for QOS {qos.name}"
        base = base_mode(mode)
        return Preemption(base, f"PreemptMode={mode} ({where})", qos.grace_time_s or 0, base != "OFF")
    mode = partition.preempt_mode or config.preempt_mode
    base = base_mode(mode)
    setting = f"PreemptMode={mode}"
    tier = partition.priority_tier or 0
    # A higher PriorityTier preempts (whether the partitions share nodes is not checked: the
    # judgement errs towards "preempted").
    higher = [p.name for p in evidence.partitions if (p.priority_tier or 0) > tier]
    if base != "OFF" and config.preempt_type == "preempt/partition_prio" and not higher:
        setting += f", no partition with a PriorityTier above {tier}"
        return Preemption(base, setting, partition.grace_time_s or 0, preempted=False)
    if higher and base != "OFF":
        setting += f" (preempted by {', '.join(higher)})"
    return Preemption(base, setting, partition.grace_time_s or 0, preempted=base != "OFF")


def _partition_findings(
    config: ClusterConfig, partition: PartitionConfig, preemption: Preemption, evidence: Evidence
) -> list[Finding]:
    findings = [_walltime_signal(config, evidence), _max_time(partition, evidence.asks), _mode(preemption)]
    if preemption.preempted and preemption.mode in ("REQUEUE", "CANCEL"):
        findings.append(_preemption_signal(config, preemption, evidence.asks))
        findings.append(_preemption_time(config, partition, preemption, evidence))
    return findings


def _walltime_signal(config: ClusterConfig, evidence: Evidence) -> Finding:
    asks, stop = evidence.asks, evidence.stop
    setting = f"--signal={asks.signal}@{asks.signal_delay_s} (nnslurm's default)"
    what = (
        f"SIG{asks.signal} {asks.signal_delay_s} s before the time limit (SLURM may send it up to 60 s "
        "early): nnslurm stops at the next iteration boundary, writes a checkpoint and requeues the job "
        f"(at most {asks.max_requeues} times); the next start resumes there. Without the signal the "
        "end-time rule stops it before EndTime."
    )
    if config.over_time_limit_min:
        what += (
            f" OverTimeLimit={config.over_time_limit_min} min: SLURM would even let it run on past its limit."
        )
    if stop.seconds > asks.signal_delay_s:
        return Finding(
            "walltime-signal",
            Severity.INFO,
            setting,
            what + f" A stop needs {_seconds(stop.seconds)}, more than the signal's lead: the end-time "
            "rule, which counts the measured stop, stops the job in time.",
            fix=f"submit with --signal-delay {_round_up(stop.seconds + FIX_SPARE_S)} to stop on the signal.",
        )
    return Finding("walltime-signal", Severity.OK, setting, what)


def _max_time(partition: PartitionConfig, asks: NnslurmAsks) -> Finding:
    if partition.max_time_s is None:
        return Finding(
            "max-time",
            Severity.OK,
            "MaxTime=UNLIMITED",
            f"nnslurm asks --time {format_time(asks.time_s)} unless told otherwise.",
        )
    limit = format_time(partition.max_time_s)
    if partition.max_time_s < asks.time_s:
        return Finding(
            "max-time",
            Severity.INFO,
            f"MaxTime={limit}",
            f"shorter than nnslurm's default --time {format_time(asks.time_s)}: SLURM refuses such a job "
            "or keeps it pending (Reason PartitionTimeLimit).",
            fix=f'submit with --time {limit} or less (or `time = "{limit}"` in the nnslurm.toml profile); '
            "a run longer than that goes on over several starts, one requeue each.",
        )
    return Finding(
        "max-time",
        Severity.OK,
        f"MaxTime={limit}",
        f"nnslurm's default --time {format_time(asks.time_s)} fits; a longer run goes on over several "
        "starts.",
    )


def _mode(preemption: Preemption) -> Finding:
    mode, setting = preemption.mode, preemption.setting
    if mode == "UNKNOWN":
        return Finding(
            "preemption",
            Severity.INFO,
            setting,
            "preemption is by QOS: its PreemptMode and GraceTime decide what happens; not judged here.",
            fix="run `nnslurm doctor --qos QOS` with the QOS your jobs use (`sacctmgr show assoc "
            "user=$USER format=QOS,DefaultQOS`).",
        )
    if not preemption.preempted:
        return Finding("preemption", Severity.OK, setting, "jobs here are not preempted.")
    if mode == "REQUEUE":
        return Finding(
            "preemption",
            Severity.OK,
            setting,
            "SLURM requeues a preempted job: nnslurm stops at the next iteration boundary, writes a "
            "checkpoint and exits without requeueing it a second time; the next start resumes there.",
        )
    if mode == "CANCEL":
        return Finding(
            "preemption",
            Severity.INFO,
            setting,
            "SLURM cancels a preempted job: nnslurm stops, writes a checkpoint and submits the run again "
            "(a new job, after the old one; capped by --max-requeues), which resumes there. Nothing is "
            "lost but the new job's wait in the queue.",
        )
    # SUSPEND, GANG: the job is stopped where it is, and continued later.
    return Finding(
        "preemption",
        Severity.INFO,
        setting,
        "a preempted job is suspended, not told to stop: no signal, no checkpoint; it resumes later "
        "where it was and nothing is lost but the time. Its time limit does not run while it is "
        "suspended, and nnslurm re-reads EndTime before it acts, so it does not stop early after the "
        "resume. Its GPU memory stays allocated while it is suspended.",
    )


def _preemption_signal(config: ClusterConfig, preemption: Preemption, asks: NnslurmAsks) -> Finding:
    spelling = config.send_user_signal
    if spelling is not None:
        note = ""
        if spelling.startswith("Slurmctld") and config.version is not None and config.version.at_least(23, 2):
            note = " (the 22.05 spelling; SLURM 23.02+ documents PreemptParameters=send_user_signal)"
        return Finding(
            "preemption-signal",
            Severity.OK,
            spelling + note,
            f"a preempted job gets SIG{asks.signal} at once, in its steps (nnslurm submit) and in its "
            "batch shell (nnslurm's sbatch templates) alike; SIGTERM at the end of the "
            f"{preemption.grace_s} s grace; nnslurm stops on the first signal.",
        )
    turn_on = _send_user_signal_fix(config)
    return Finding(
        "preemption-signal",
        Severity.OK,
        "send_user_signal off",
        "a preempted job's steps get SIGTERM at once (`nnslurm submit` trains in a step: it stops on "
        f"it); the batch shell gets nothing until the {preemption.grace_s} s grace is over, then SIGTERM "
        "(nnslurm's sbatch templates run `exec nnslurm train` there: they stop only then).",
        fix=f"{turn_on} gives template jobs the whole grace too.",
    )


def _preemption_time(
    config: ClusterConfig, partition: PartitionConfig, preemption: Preemption, evidence: Evidence
) -> Finding:
    stop = evidence.stop
    grace, kill_wait = preemption.grace_s, config.kill_wait_s
    if kill_wait is None:
        return Finding(
            "preemption-time",
            Severity.INFO,
            f"GraceTime={grace}, KillWait unknown",
            "cannot say how long a preempted job has to stop.",
        )
    setting = f"GraceTime={grace} + KillWait={kill_wait}"
    submit_s = grace + kill_wait
    template_s = submit_s if config.send_user_signal else kill_wait
    need = _seconds(stop.seconds)
    lost = (
        "SIGKILL would come before the stop checkpoint is durable, losing the work since the last "
        "periodic checkpoint (one is written every epoch and every 15 minutes by default)"
    )
    if stop.seconds > submit_s:
        where = "the QOS's" if config.preempt_type == "preempt/qos" else f"partition {partition.name}'s"
        grace_needed = _round_up(stop.seconds + FIX_SPARE_S - kill_wait)
        return Finding(
            "preemption-time",
            Severity.LOSES_WORK,
            setting,
            f"a preempted job has {submit_s} s from the signal to SIGKILL, a stop needs {need}. {lost}.",
            fix=f"raise {where} GraceTime to {grace_needed} s or more"
            + (
                f" (slurm.conf: PartitionName={partition.name} ... GraceTime={grace_needed}, then "
                "`scontrol reconfigure`)"
                if config.preempt_type != "preempt/qos"
                else f" (`sacctmgr modify qos NAME set GraceTime={grace_needed}`)"
            )
            + f", or KillWait to {_round_up(stop.seconds + FIX_SPARE_S - grace)}."
            + (
                ""
                if config.send_user_signal
                else f" Jobs of nnslurm's sbatch templates also need {_send_user_signal_fix(config)} "
                f"or KillWait={_round_up(stop.seconds + FIX_SPARE_S)}."
            ),
        )
    if stop.seconds > template_s:
        return Finding(
            "preemption-time",
            Severity.LOSES_WORK,
            setting + ", send_user_signal off",
            f"a preempted `nnslurm submit` job has {submit_s} s, enough for a stop ({need}); a job of "
            f"nnslurm's sbatch templates hears SIGTERM only when the grace is over and has KillWait "
            f"= {kill_wait} s. {lost}.",
            fix=f"{_send_user_signal_fix(config)}, so that template jobs have {submit_s} s too; or "
            f"KillWait={_round_up(stop.seconds + FIX_SPARE_S)}; or `nnslurm submit` instead of the "
            "templates.",
        )
    return Finding(
        "preemption-time",
        Severity.OK,
        setting,
        f"a preempted job has {submit_s} s from the signal to SIGKILL"
        + (
            ""
            if template_s == submit_s
            else f" ({template_s} s for a job of nnslurm's sbatch templates, which hears SIGTERM when "
            "the grace is over)"
        )
        + f"; a stop needs {need}.",
    )


def _send_user_signal_fix(config: ClusterConfig) -> str:
    if config.version is not None and not config.version.at_least(23, 2):
        return "SlurmctldParameters=preempt_send_user_signal (then `scontrol reconfigure`)"
    return "PreemptParameters=send_user_signal (then `scontrol reconfigure`)"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _round_up(seconds: float, step: int = 10) -> int:
    return max(step, math.ceil(seconds / step) * step)


def topics_help(topics: Sequence[str] | None = None) -> str:
    """`topic: what it judges` lines for --help."""
    return "\n".join(f"  {name:<18} {FINDING_TOPICS[name]}" for name in (topics or FINDING_TOPICS))
