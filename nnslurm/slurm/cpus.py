"""How many CPUs the training process uses: torch threads and nnU-Net's augmentation workers.

Inside a SLURM job the count is what SLURM allocated: SLURM_CPUS_PER_TASK (set with
--cpus-per-task), else the first value of SLURM_JOB_CPUS_PER_NODE ("4", "4(x2)", "4,2"), and the
CPU affinity where that is narrower. The affinity alone is not enough: on a node without CPU
binding (TaskPlugin=task/none, no cgroups) it is the whole node, and two jobs sharing it each
took every core (measured on 2 CPUs: two trainings with 2 threads each ran 0.21 it/s each, the
same pinned to one CPU each 0.86 it/s). Unless the user set nnUNet_n_proc_DA, the augmentation
workers are the allocation minus the main process; 0 is nnU-Net's single-process augmentation
(`get_allowed_n_proc_DA() == 0` -> SingleThreadedAugmenter). Outside SLURM: the affinity, and
nnU-Net's own choice of workers.

NNSLURM_IGNORE_ALLOCATION=1 switches the rule off inside a job too (the affinity and nnU-Net's
workers, as outside SLURM): for a site whose allocation variables are wrong, and for
benchmarks/cpu_sharing.py, which measures what the rule is worth.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from nnslurm.slurm.environment import SlurmEnvironment

WORKERS_ENV = "nnUNet_n_proc_DA"  # nnU-Net's augmentation workers per GPU (0: in the main process)
IGNORE_ENV = "NNSLURM_IGNORE_ALLOCATION"  # "1": take the affinity even inside a SLURM job


@dataclass(frozen=True)
class CpuBudget:
    cpus: int  # CPUs this process may keep busy: torch threads
    source: str  # where the count came from, for the log line
    workers: int | None  # nnUNet_n_proc_DA to set; None: leave it (the user set it, or outside SLURM)


def cpu_budget(environ: Mapping[str, str], affinity: int) -> CpuBudget:
    """The rule of this module's docstring, over the process's variables and the affinity's CPU count."""
    affinity = max(1, affinity)
    job = SlurmEnvironment.from_environ(environ)
    if not job.in_slurm:
        return CpuBudget(affinity, f"CPU affinity {affinity} (not in a SLURM job)", None)
    if environ.get(IGNORE_ENV) == "1":
        return CpuBudget(
            affinity, f"CPU affinity {affinity} ({IGNORE_ENV}=1: the allocation is ignored)", None
        )
    if job.cpus_per_task is not None:
        allocated: int | None = job.cpus_per_task
        given = f"SLURM_CPUS_PER_TASK={job.cpus_per_task}"
    else:
        allocated = _leading_int(job.job_cpus_per_node)
        given = f"SLURM_JOB_CPUS_PER_NODE={job.job_cpus_per_node}"
    if allocated is None:
        source = f"CPU affinity {affinity} (SLURM gave no CPU count)"
        cpus = affinity
    else:
        cpus = min(allocated, affinity)
        source = f"{given}, CPU affinity {affinity}"
    workers = None if environ.get(WORKERS_ENV) is not None else max(0, cpus - 1)
    return CpuBudget(cpus, source, workers)


def read_cpu_budget() -> CpuBudget:
    """`cpu_budget` of this process: its environment and its CPU affinity."""
    return cpu_budget(os.environ, len(os.sched_getaffinity(0)))


def _leading_int(text: str | None) -> int | None:
    """'4' -> 4, '4(x2),2' -> 4 (SLURM_JOB_CPUS_PER_NODE's first node); None if not a count."""
    match = re.match(r"\s*(\d+)", text or "")
    value = int(match.group(1)) if match else 0
    return value if value > 0 else None
