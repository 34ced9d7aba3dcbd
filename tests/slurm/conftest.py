"""The real single-node SLURM cluster: skip without one (fail when NNSLURM_REQUIRE_SLURM=1, as in CI).

Start it with `scripts/slurm-dev-cluster up` (root, Debian/Ubuntu). Every test here is marked
`slurm`; each runs the real nnU-Net tiny training inside real SLURM jobs.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from support import skip_unless_required

from nnslurm.slurm import commands as slurm

from .tools import Cluster, config_value, dev_cluster, stop_background

HERE = Path(__file__).parent
HOW = "start it with `scripts/slurm-dev-cluster up` (root), then rerun `pytest -m slurm`"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slurm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries what SLURM knew of its jobs (`scontrol show job`, the
    controller's log lines naming them, the node's state): a CI failure is read, not guessed."""
    report: pytest.TestReport = yield
    cluster = item.funcargs.get("idle_cluster") if hasattr(item, "funcargs") else None
    if report.failed and report.when == "call" and isinstance(cluster, Cluster) and cluster.own:
        report.sections.append(("SLURM's view of this test's jobs", cluster.explain(sorted(cluster.own))))
    return report


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
    try:
        yield cluster
    finally:
        stop_background()
        cluster.cancel_own()


@pytest.fixture
def user_signal_preemption(cluster: Cluster) -> Iterator[None]:
    """preempt_send_user_signal on for one test (scripts/slurm-dev-cluster switches it), then off."""
    dev_cluster("set-preempt-user-signal", "on")
    try:
        yield
    finally:
        dev_cluster("set-preempt-user-signal", "off")


@pytest.fixture
def no_job_requeue(cluster: Cluster) -> Iterator[None]:
    """JobRequeue=0 for one test, as on sites whose jobs are not requeuable unless they ask;
    the previous value afterwards, whatever happens."""
    previous = config_value("JobRequeue")
    dev_cluster("set", "JobRequeue", "0")
    try:
        yield
    finally:
        dev_cluster("set", "JobRequeue", previous)


@pytest.fixture
def short_kill_wait(cluster: Cluster) -> Iterator[None]:
    """KillWait 2 s for one test: after the limit's TERM no checkpoint would have time to land;
    the previous value afterwards, whatever happens."""
    previous = config_value("KillWait").split()[0]  # "10 sec"
    dev_cluster("set", "KillWait", "2")
    try:
        yield
    finally:
        dev_cluster("set", "KillWait", previous)
