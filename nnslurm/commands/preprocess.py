"""`nnslurm preprocess`: nnUNetv2_plan_and_preprocess as a stoppable, resumable stage."""

from __future__ import annotations

import argparse
from typing import Any

from nnslurm.core.errors import UsageError, nnunet_failures
from nnslurm.workflow.preprocess import (
    DEFAULT_CONFIGURATIONS,
    DEFAULT_PLANNER,
    PreprocessSpec,
    run_preprocess,
)

EPILOG = """\
units (a stop signal is acted on between them; each is redone whole if it was interrupted):
  fingerprint    $nnUNet_preprocessed/DatasetXXX_Name/dataset_fingerprint.json
  plans          .../<plans>.json (nnUNetPlans with the default planner)
  one per -c     .../<plans>_<configuration>/ with every case (a configuration the plans do
                 not have, e.g. 3d_lowres for small images, is skipped, as nnU-Net does)
A unit is done when its marker in .../DatasetXXX_Name/.nnslurm/preprocess/ says so; the
same command skips done units. Delete that folder to redo everything.

exit status:
  0   preprocessed: train with -p <plans> (printed)
  75  stopped by a signal between units: run the same command to go on
  1   nnU-Net failed (message above; run with -v for nnU-Net's traceback)
  2   bad input (no such dataset, a failed --verify_dataset_integrity, an unknown -pl)

-np: nnU-Net's processes for fingerprinting (-npfp) and each configuration (-np); by default
the job's CPUs (SLURM_CPUS_PER_TASK, else SLURM_JOB_CPUS_PER_NODE, at most the CPU affinity).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="nnUNetv2_plan_and_preprocess for one dataset, stoppable and resumable",
        description="Fingerprint, plan and preprocess a dataset with nnU-Net's own code, into the same "
        "files nnUNetv2_plan_and_preprocess writes. On a stop signal (USR1, USR2, TERM) it finishes the "
        "current unit and exits 75; inside a SLURM job it also requeues itself after the walltime warning.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset id (e.g. 501) or DatasetXXX_Name")
    parser.add_argument(
        "-c",
        nargs="+",
        action="extend",
        dest="configurations",
        metavar="CONFIGURATION",
        help=f"configurations to preprocess (default: {' '.join(DEFAULT_CONFIGURATIONS)})",
    )
    parser.add_argument(
        "-np", type=int, dest="processes", metavar="N", help="processes (default: the job's CPUs)"
    )
    parser.add_argument(
        "-pl", dest="planner", default=DEFAULT_PLANNER, help="experiment planner class (default: %(default)s)"
    )
    parser.add_argument(
        "-gpu_memory_target", type=float, metavar="GB", help="the planner's GPU memory target (nnU-Net's)"
    )
    parser.add_argument("-overwrite_plans_name", metavar="NAME", help="name the plans file NAME.json")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument(
        "--verify_dataset_integrity",
        action="store_true",
        default=True,
        help="check the raw dataset first (nnslurm's default)",
    )
    verify.add_argument(
        "--no_verify_dataset_integrity",
        dest="verify_dataset_integrity",
        action="store_false",
        help="skip nnU-Net's integrity check",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    with nnunet_failures(
        "planning/preprocessing", hint="run again with -v for nnU-Net's traceback; finished units are kept."
    ):
        plans = run_preprocess(spec)
    print(f"Dataset {spec.dataset_id} is preprocessed: train with -p {plans}")
    return 0


def spec_from_args(args: argparse.Namespace) -> PreprocessSpec:
    text = str(args.dataset).strip()
    digits = text[7:10] if text.startswith("Dataset") else text
    if not digits.isdigit() or not 1 <= int(digits) <= 999:
        raise UsageError(f"-d {text}: not a dataset id (1..999) or DatasetXXX_Name.")
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"-np {args.processes}: nnU-Net needs at least 1 process.")
    return PreprocessSpec(
        dataset_id=int(digits),
        configurations=tuple(dict.fromkeys(args.configurations or DEFAULT_CONFIGURATIONS)),
        planner=args.planner,
        gpu_memory_target_gb=args.gpu_memory_target,
        overwrite_plans_name=args.overwrite_plans_name,
        verify_dataset_integrity=args.verify_dataset_integrity,
        processes=args.processes,
    )
