"""`nnslurm predict`: nnUNetv2_predict that a stop signal or a kill cannot leave half done."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from nnslurm.commands.options import add_device_argument
from nnslurm.core.errors import UsageError
from nnslurm.workflow.predict import run_prediction
from nnslurm.workflow.predict_models import ModelSpec, PredictSpec, resolve

logger = logging.getLogger(__name__)

USAGE = (
    "%(prog)s -i INPUT -o OUTPUT -d DATASET -c CONFIGURATION [-f FOLD ...] [-tr TRAINER] [-p PLANS] "
    "[-chk CHECKPOINT] [options]\n"
    "       %(prog)s -i INPUT -o OUTPUT -d DATASET --from-find-best [options]"
)

EPILOG = """\
resume and atomicity:
  Cases are predicted one at a time, in this process. Every output file is written under
  OUTPUT/.nnslurm/staging/ and moved to its final name (os.replace, after fsync) only once complete,
  so no file under a final name is ever half written, even after kill -9 or a node failure. A case
  whose final file exists is skipped; run the same command again to go on after a stop or a
  crash. On a stop signal (SIGUSR1, SIGTERM, ...) the case being predicted is finished (or, after
  the stop deadline, abandoned: it is predicted again next time) and the command exits 75; inside
  a SLURM job it requeues itself on the walltime warning, as `nnslurm train` does.
  OUTPUT/.nnslurm/ also holds the event log, the lock (one prediction per output folder) and, for
  an ensemble, its members' probabilities until every case is done. A rerun with another model or
  setting into the same OUTPUT is refused.

--from-find-best:
  predicts what nnUNetv2_find_best_configuration chose ($nnUNet_results/DatasetXXX_Name/
  inference_information.json): the best model, or each member of the best ensemble with
  probabilities, then nnU-Net's ensembling per case, then its postprocessing (postprocessing.pkl).

exit status:
  0   every input case has its segmentation in OUTPUT
  75  stopped by a signal at a case boundary: run the same command to go on
  1   prediction failed (message above; the cases written so far are complete and kept)
  2   bad input (message above): no input folder, no trained model, no find-best result
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="nnUNetv2_predict, stoppable and resumable, never a torn output file",
        description="Predict a folder of images with a trained nnU-Net model (nnUNetv2_predict's options) "
        "or with what nnUNetv2_find_best_configuration chose (ensemble and postprocessing included).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=USAGE,
    )
    parser.add_argument(
        "-i", dest="input", type=Path, required=True, help="input folder (CASE_0000.nii.gz, ...)"
    )
    parser.add_argument(
        "-o", dest="output", type=Path, required=True, help="output folder (created if missing)"
    )
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name (501, Dataset501_Name)")
    group = parser.add_argument_group("one model (as nnUNetv2_predict)")
    group.add_argument("-c", dest="configuration", help="configuration (2d, 3d_fullres, ...)")
    group.add_argument(
        "-f", dest="folds", nargs="+", default=None, help="folds to use (default: 0 1 2 3 4), or all"
    )
    group.add_argument(
        "-tr",
        dest="trainer",
        default="nnUNetTrainer",
        help="trainer class, or package.module:Class for your own (default: %(default)s)",
    )
    group.add_argument(
        "-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: %(default)s)"
    )
    group.add_argument(
        "-chk",
        dest="checkpoint",
        default="checkpoint_final.pth",
        help="checkpoint file (default: %(default)s)",
    )
    group = parser.add_argument_group("what find-best chose")
    group.add_argument(
        "--from-find-best",
        action="store_true",
        help="the model or ensemble and postprocessing in inference_information.json",
    )
    group = parser.add_argument_group("inference")
    add_device_argument(group, "as nnUNetv2_predict -device (default: cuda when available, else cpu)")
    group.add_argument(
        "-step_size", type=float, default=0.5, help="sliding window step (default: %(default)s)"
    )
    group.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (faster)")
    parser.set_defaults(handler=run)


def spec_from_args(args: argparse.Namespace) -> PredictSpec:
    if args.from_find_best == (args.configuration is not None):
        raise UsageError(
            "pass either -c CONFIGURATION (one model) or --from-find-best.",
            hint="nnslurm predict -i IN -o OUT -d 501 -c 3d_fullres, or ... -d 501 --from-find-best.",
        )
    model = None
    if args.configuration is not None:
        folds = tuple(args.folds) if args.folds else ModelSpec.folds
        # -tr package.module:Class (your own trainer): the model folder is named by the class
        trainer = args.trainer.rpartition(":")[2]
        model = ModelSpec(args.configuration, trainer, args.plans, folds, args.checkpoint)
    elif args.folds or args.checkpoint != "checkpoint_final.pth":
        raise UsageError(
            "--from-find-best takes its folds and checkpoint from find-best's result; drop -f/-chk."
        )
    return PredictSpec(
        input_dir=args.input,
        output_dir=args.output,
        dataset=args.dataset,
        model=model,
        device=args.device,
        step_size=args.step_size,
        disable_tta=args.disable_tta,
        trainers=(args.trainer,) if ":" in args.trainer else (),
    )


def run(args: argparse.Namespace) -> int:
    """0 when every case is written; a stop leaves through nnslurm.workflow.stage with status 75."""
    spec = spec_from_args(args)
    resolve(spec)  # bad input fails here, before anything is written
    result = run_prediction(spec)
    print(
        f"{result.cases} case(s) predicted in {result.output_dir} "
        f"({result.written} written now, {result.cases - result.written} there already)"
    )
    return 0
