"""`nnslurm find-best`: nnUNetv2_find_best_configuration as a stoppable, resumable stage."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from typing import Any

from nnslurm.core.errors import NnunetSetupError, UsageError, nnunet_failures
from nnslurm.core.locations import PREPROCESSED, env_folder
from nnslurm.core.nnunet import dataset_name
from nnslurm.workflow.find_best import (
    INFORMATION_FILE,
    INSTRUCTIONS_FILE,
    FindBestSpec,
    TrainedModel,
    results_dataset,
    run_find_best,
)

logger = logging.getLogger(__name__)

# nnUNetv2_find_best_configuration's -c default; those the plans do not have are left out, as nnU-Net does.
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")

EPILOG = f"""\
It first checks that every model (-c × -tr × -p) × fold has finished training with what nnU-Net
reads: fold_N/validation/summary.json, and .npz probabilities for every validation case when two
or more models may be ensembled (train with --npz, or add them with `nnslurm train ... --val
--npz`). Then nnU-Net's find_best_configuration runs as one unit (a stop before it exits 75; one
during it is redone whole, with overwrite) and writes, as nnUNetv2_find_best_configuration does:
  $nnUNet_results/DatasetXXX_Name/{INFORMATION_FILE}   (what the predict stage reads)
  $nnUNet_results/DatasetXXX_Name/{INSTRUCTIONS_FILE}   (the nnUNetv2_predict commands)
  postprocessing.pkl/.json in the best model's crossval_results_folds_* (or ensembles/) folder
Completion is recorded in $nnUNet_results/DatasetXXX_Name/.nnslurm/find_best/done.json; the
same command after completion does nothing unless a fold's validation changed.

exit status:
  0   done (the best configuration is printed)
  75  stopped by a signal before nnU-Net ran (or during it): run the same command to go on
  1   nnU-Net failed (message above; run with -v for nnU-Net's traceback)
  2   bad input or not ready: a model or fold not trained to the end, or without .npz
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "find-best",
        help="nnUNetv2_find_best_configuration over trained folds, stoppable and resumable",
        description="Compare the trained models (and their ensembles) on the cross-validation and pick "
        "the best, with nnU-Net's own find_best_configuration, after checking that every fold is ready.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s DATASET [-c CONFIGURATION ...] [-tr TRAINER ...] [-p PLANS ...] [-f FOLD ...] "
        "[options]\n       %(prog)s -d DATASET ...",
    )
    parser.add_argument("positional_dataset", nargs="?", metavar="DATASET", help="dataset id or name; or -d")
    parser.add_argument("-d", "--dataset", help="dataset id (e.g. 501) or DatasetXXX_Name")
    for flag, dest, default, what in (
        (
            "-c",
            "configurations",
            " ".join(DEFAULT_CONFIGURATIONS) + " (those in the plans)",
            "configurations",
        ),
        ("-tr", "trainers", "nnUNetTrainer", "trainer classes (package.module:Class for your own)"),
        ("-p", "plans", "nnUNetPlans", "plans identifiers"),
    ):
        parser.add_argument(
            flag,
            nargs="+",
            action="extend",
            dest=dest,
            metavar=dest.upper()[:-1],
            help=f"{what} (default: {default})",
        )
    parser.add_argument(
        "-f",
        nargs="+",
        action="extend",
        dest="folds",
        type=int,
        metavar="FOLD",
        help="folds (default: 0 1 2 3 4)",
    )
    parser.add_argument(
        "--disable_ensembling", action="store_true", help="compare single models only (no .npz needed)"
    )
    parser.add_argument(
        "-np", type=int, dest="processes", metavar="N", help="processes (default: the job's CPUs)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    with nnunet_failures("find_best_configuration", hint="run again with -v for nnU-Net's traceback."):
        result = run_find_best(spec)
    best = result["best_model_or_ensemble"]
    chosen = " + ".join(
        f"{m['trainer']}__{m['plans_identifier']}__{m['configuration']}"
        for m in best["selected_model_or_models"]
    )
    folder = results_dataset(spec.dataset)
    print(f"best: {chosen} (Dice {best['result_on_crossval_post_pp']:.4f} after postprocessing)")
    print(f"see {folder / INSTRUCTIONS_FILE} and {folder / INFORMATION_FILE}")
    return 0


def spec_from_args(args: argparse.Namespace) -> FindBestSpec:
    given = [d for d in (args.positional_dataset, args.dataset) if d]
    if len(given) != 1:
        raise UsageError(
            "pass the dataset once, as DATASET or -d DATASET."
            if given
            else "which dataset? pass DATASET or -d."
        )
    try:
        name = dataset_name(given[0])
    except NnunetSetupError as error:
        raise UsageError(str(error).split("\nHINT:")[0], hint=error.hint) from None
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"-np {args.processes}: nnU-Net needs at least 1 process.")
    plans = tuple(dict.fromkeys(args.plans or ["nnUNetPlans"]))
    configurations = tuple(dict.fromkeys(args.configurations or _default_configurations(name, plans)))
    trainers = tuple(dict.fromkeys(args.trainers or ["nnUNetTrainer"]))
    models = tuple(TrainedModel(c, t, p) for t, c, p in itertools.product(trainers, configurations, plans))
    return FindBestSpec(
        dataset=name,
        models=models,
        folds=tuple(dict.fromkeys(args.folds or (0, 1, 2, 3, 4))),
        allow_ensembling=not args.disable_ensembling,
        processes=args.processes,
    )


def _default_configurations(name: str, plans: tuple[str, ...]) -> list[str]:
    """nnU-Net's default -c less those no plans file has (nnU-Net skips them: filter_available_models)."""
    base = env_folder(PREPROCESSED) / name
    available: set[str] = set()
    for identifier in plans:
        path = base / f"{identifier}.json"
        if path.is_file():
            available |= set(json.loads(path.read_text()).get("configurations", {}))
    chosen = [c for c in DEFAULT_CONFIGURATIONS if c in available] or list(DEFAULT_CONFIGURATIONS)
    skipped = [c for c in DEFAULT_CONFIGURATIONS if c not in chosen]
    if skipped:
        logger.info("not in the plans, left out as nnU-Net does: %s", ", ".join(skipped))
    return chosen
