"""`nnslurm synthetic-dataset`: a tiny real nnU-Net dataset, planned and preprocessed by nnU-Net."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from nnslurm.commands.synthetic import TINY_PLANS, make_synthetic_dataset

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synthetic-dataset",
        help="write a tiny synthetic dataset into $nnUNet_raw and preprocess it",
        description="Write DatasetXXX_NAME (3D noise images with a bright sphere; label = sphere) into "
        "$nnUNet_raw, then run nnU-Net's own fingerprinting, planning and 3d_fullres preprocessing into "
        f"$nnUNet_preprocessed. Also writes plans '{TINY_PLANS}' (a narrow network, fast on a CPU).",
    )
    parser.add_argument("--id", type=int, default=501, help="dataset id (default: %(default)s)")
    parser.add_argument("--name", default="Synthetic", help="dataset name (default: %(default)s)")
    parser.add_argument(
        "--cases", type=int, default=8, help="number of training cases (default: %(default)s)"
    )
    parser.add_argument("--size", type=int, default=32, help="edge length in voxels (default: %(default)s)")
    parser.add_argument("--no-preprocess", action="store_true", help="only write the raw dataset")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    name = make_synthetic_dataset(
        args.id, args.name, args.cases, args.size, preprocess=not args.no_preprocess
    )
    print(f"{name} is ready" + ("" if args.no_preprocess else f" (plans: nnUNetPlans, {TINY_PLANS})"))
    return 0
