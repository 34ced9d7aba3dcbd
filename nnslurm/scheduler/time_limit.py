"""Before a self-requeue of a job submitted with --time-min: ask for the full --time again.

SLURM fixes a backfilled job's limit when it starts (anywhere between --time-min and --time) and
keeps that lowered limit on a requeued job (measured, issue 19: granted 2 minutes of 30, every one
of 21 starts had 2 minutes). `scontrol update TimeLimit=<--time>` before `scontrol requeue` puts
the asked limit back; the job keeps its TimeMin, so backfill may lower it again at the next start.
Only an operator or admin may raise a limit: a refusal is logged, never fatal (the requeue goes on
with the lowered limit, which the end-time rule handles).
"""

from __future__ import annotations

import logging

from nnslurm.core.errors import CommandError
from nnslurm.core.timeparse import format_time, slurm_minutes
from nnslurm.slurm.commands import update_time_limit
from nnslurm.slurm.environment import SlurmEnvironment

logger = logging.getLogger(__name__)


def restore_time_limit(env: SlurmEnvironment, job_id: str) -> bool:
    """Ask SLURM for the job's full --time again, if it was submitted with --time-min; whether it
    was asked and granted (False: nothing to do, or refused)."""
    if not env.in_slurm or env.time_min_s is None or env.time_asked_s is None:
        return False
    try:
        update_time_limit(job_id, slurm_minutes(env.time_asked_s))
    except CommandError as error:
        logger.warning(
            "job %s: could not ask for the full --time %s again before the requeue (%s); the next start "
            "may keep this start's lowered limit (raising a limit may need an operator)",
            job_id,
            format_time(env.time_asked_s),
            error,
        )
        return False
    logger.info(
        "job %s: time limit set back to the --time asked, %s, before the requeue",
        job_id,
        format_time(env.time_asked_s),
    )
    return True
