"""The real single-node SLURM cluster: skip without one (fail when NNSLURM_REQUIRE_SLURM=1, as in CI).

Start it with `scripts/slurm-dev-cluster up` (root, Debian/Ubuntu). Every test here is marked
`slurm`; each runs the real nnU-Net tiny training inside real SLURM jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_unless_required

from nnslurm.slurm import commands as slurm

from .tools import Cluster, stop_background

HERE = Path(__file__).parent
HOW = "start it with `scripts/slurm-dev-cluster up` (root), then rerun `pytest -m slurm`"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slurm)


def _reachable() -> str | None:
    """None when a controller answers, else why not."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo is not on the PATH)"
    if not slurm.available():
        return "no SLURM cluster reachable (sinfo failed)"
    return None


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    problem = _reachable()
    if problem is not None:
        skip_unless_required(f"{problem}: {HOW}")
    yield Cluster.discover()


@pytest.fixture
def idle_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """Wait for other jobs to leave the node; cancel what this test submitted, afterwards."""
    cluster.wait_idle(timeout=180)
    before = time.time()
    try:
        yield cluster
    finally:
        stop_background()
        cluster.cancel_own(since=before)


@pytest.fixture
def user_signal_preemption(cluster: Cluster) -> Iterator[None]:
    """preempt_send_user_signal on for one test (scripts/slurm-dev-cluster switches it), then off."""
    script = HERE.parents[1] / "scripts" / "slurm-dev-cluster"
    if os.geteuid() != 0 or not script.is_file():
        skip_unless_required("switching preempt_send_user_signal needs root and scripts/slurm-dev-cluster")
    subprocess.run(
        [str(script), "set-preempt-user-signal", "on"], check=True, capture_output=True, timeout=60
    )
    try:
        yield
    finally:
        subprocess.run(
            [str(script), "set-preempt-user-signal", "off"], check=True, capture_output=True, timeout=60
        )
