"""Command-line entry point: the one place where errors become exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nnslurm import __version__
from nnslurm.core.errors import NnslurmError
from nnslurm.core.logs import configure_logging

logger = logging.getLogger("nnslurm")

# Each module in nnslurm.commands has `register(subparsers)` and `run(args) -> int`.
COMMANDS = (
    "train",
    "submit",
    "template",
    "demo",
    "synthetic_dataset",
    "preprocess",
    "find_best",
    "predict",
    "status",
    "report",
    "cancel",
    "logs",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnslurm",
        description=(
            "Interruption-proof nnU-Net v2 training on SLURM: stops at an iteration boundary on the "
            "walltime warning or preemption, checkpoints atomically, requeues, and resumes exactly."
        ),
    )
    parser.add_argument("--version", action="version", version=f"nnslurm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"nnslurm.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (tests call this directly)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        status: int = args.handler(args)
        return status
    except NnslurmError as error:
        logger.error("%s", error)
        return error.exit_code
    except OSError as error:  # the filesystem said no: name the file, not a traceback
        where = f" ({error.filename})" if error.filename else ""
        logger.error("%s%s", error.strerror or error, where)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except SystemExit as leaving:  # a stopped `train` leaves through nnslurm.training.stoppable.exit_process
        return leaving.code if isinstance(leaving.code, int) else 1


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
