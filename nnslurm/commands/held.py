"""Runs that a queued or running job holds: `nnslurm submit` refuses them, for a training or a chain.

Its own module so that submit (a training) and submit_chain (the workflow) share it without
importing each other: submit hands a chain to submit_chain, never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nnslurm.core.config import TrainJob
from nnslurm.core.errors import NnslurmError

if TYPE_CHECKING:
    from nnslurm.runs.holder import Holder


class RunAlreadyQueued(NnslurmError):
    """A run to submit is already queued or running: a second job would only collide with it."""

    def __init__(self, held: Sequence[Holder]) -> None:
        jobs = [holder.job_id for holder in held if holder.job_id]
        cancel = f"`nnslurm cancel {jobs[0]}`" if jobs else "`nnslurm cancel RUN_FOLDER`"
        super().__init__(
            "nothing was submitted: "
            + ("a run is" if len(held) == 1 else f"{len(held)} runs are")
            + " already queued or running:\n"
            + "\n".join(f"  {holder.describe()}" for holder in held),
            hint=f"`nnslurm status` shows it; to restart it, {cancel} first (it checkpoints and stays "
            "resumable), then submit again.",
        )


def held_runs(jobs: Sequence[TrainJob]) -> list[Holder]:
    """Runs of this submission that a queued or running job holds (nnslurm.runs.holder)."""
    from nnslurm.jobs import submission as launch
    from nnslurm.runs.holder import holders

    folders = [folder for folder in (launch.run_folder(job) for job in jobs) if folder is not None]
    return holders(folders)
