"""Torch threads and augmentation workers follow the job's allocation (nnslurm.slurm.cpus): the rule as a
pure function over the job's environment variables and the CPU affinity."""

from __future__ import annotations

import pytest

from nnslurm.slurm.cpus import CpuBudget, cpu_budget

IN_JOB = {"SLURM_JOB_ID": "42"}


@pytest.mark.parametrize(
    ("environ", "affinity", "cpus", "workers"),
    [
        # --cpus-per-task on a node without CPU binding: the affinity is the whole node
        ({**IN_JOB, "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_CPUS_PER_NODE": "1"}, 2, 1, 0),
        ({**IN_JOB, "SLURM_CPUS_PER_TASK": "4", "SLURM_JOB_CPUS_PER_NODE": "8"}, 64, 4, 3),
        # no --cpus-per-task: the first node's CPUs, in SLURM's compressed form too
        ({**IN_JOB, "SLURM_JOB_CPUS_PER_NODE": "6"}, 64, 6, 5),
        ({**IN_JOB, "SLURM_JOB_CPUS_PER_NODE": "8(x2),4"}, 64, 8, 7),
        # the affinity where it is narrower than the allocation (cgroups, taskset)
        ({**IN_JOB, "SLURM_CPUS_PER_TASK": "8"}, 3, 3, 2),
        # SLURM gave no count: the affinity
        (IN_JOB, 5, 5, 4),
        ({**IN_JOB, "SLURM_CPUS_PER_TASK": "", "SLURM_JOB_CPUS_PER_NODE": "garbage"}, 5, 5, 4),
    ],
)
def test_inside_a_job_the_allocation_decides(
    environ: dict[str, str], affinity: int, cpus: int, workers: int
) -> None:
    budget = cpu_budget(environ, affinity)
    assert (budget.cpus, budget.workers) == (cpus, workers)


def test_one_cpu_means_augmentation_in_the_main_process() -> None:
    """nnU-Net: nnUNet_n_proc_DA=0 is the single-threaded augmenter, never a negative count."""
    assert cpu_budget({**IN_JOB, "SLURM_CPUS_PER_TASK": "1"}, 1).workers == 0


def test_the_users_augmentation_workers_are_kept() -> None:
    environ = {**IN_JOB, "SLURM_CPUS_PER_TASK": "2", "nnUNet_n_proc_DA": "6"}
    assert cpu_budget(environ, 16) == CpuBudget(2, "SLURM_CPUS_PER_TASK=2, CPU affinity 16", None)
    assert cpu_budget({**environ, "nnUNet_n_proc_DA": "0"}, 16).workers is None


def test_outside_slurm_the_affinity_as_before() -> None:
    budget = cpu_budget({"SLURM_CPUS_PER_TASK": "1"}, 12)  # a stale variable without a job
    assert (budget.cpus, budget.workers) == (12, None)
    assert "not in a SLURM job" in budget.source


def test_the_log_line_names_where_the_count_came_from() -> None:
    budget = cpu_budget({**IN_JOB, "SLURM_JOB_CPUS_PER_NODE": "8(x2)"}, 64)
    assert budget.source == "SLURM_JOB_CPUS_PER_NODE=8(x2), CPU affinity 64"


def test_the_rule_can_be_switched_off() -> None:
    """NNSLURM_IGNORE_ALLOCATION=1: inside a job as outside SLURM (benchmarks/cpu_sharing.py's other arm)."""
    environ = {**IN_JOB, "SLURM_CPUS_PER_TASK": "1", "NNSLURM_IGNORE_ALLOCATION": "1"}
    budget = cpu_budget(environ, 2)
    assert (budget.cpus, budget.workers) == (2, None)
    assert budget.source == "CPU affinity 2 (NNSLURM_IGNORE_ALLOCATION=1: the allocation is ignored)"
    assert cpu_budget({**environ, "NNSLURM_IGNORE_ALLOCATION": "0"}, 2).cpus == 1
