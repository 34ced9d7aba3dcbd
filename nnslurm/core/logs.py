"""How nnslurm's log lines look, set once per process: by `cli.main`, or by a submitit job's
callable (nnslurm.jobs.base), where nobody configured logging before."""

from __future__ import annotations

import logging
import sys


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
