"""What every benchmark shares: where data lives, interleaved repetitions, medians, result tables.

Benchmarks compare nnslurm with plain nnU-Net side by side in one run: the arms alternate
(A B, B A, A B, ...) so that a slow phase of a shared machine hits both, and each side is
summarised by its median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
CHILD = BENCHMARKS / "child.py"
DATASET = "501"  # `nnslurm synthetic-dataset --id 501`: 8 cases of 32³
TINY_PLANS = "nnslurmTinyPlans"  # narrow network: ~0.1 s per iteration on a CPU
DEFAULT_PLANS = "nnUNetPlans"  # nnU-Net's own plans for the 32³ cases
REALISTIC_ID = 502  # 4 cases of 160³: nnU-Net plans a 128³ patch, 6 stages, 32..320 features
REALISTIC_NAME = "Realistic"

# Measure the nnslurm of this checkout (also when the installed one is another copy).
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))


@dataclass(frozen=True)
class Workspace:
    """nnU-Net's three folders for the benchmarks; results go to one fresh folder per run."""

    root: Path
    raw: Path
    preprocessed: Path

    def env(self, results: Path, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(self.raw),
            nnUNet_preprocessed=str(self.preprocessed),
            nnUNet_results=str(results),
            nnUNet_def_n_proc="1",
            nnUNet_n_proc_DA="0",  # single-process augmentation: same work in both arms, no worker noise
            PYTHONPATH=os.pathsep.join([str(BENCHMARKS), str(REPO)]),
        )
        env.update(extra)
        return env

    def fresh(self, *parts: str) -> Path:
        """An empty folder under the workspace (removed first if a previous run left it)."""
        folder = self.root.joinpath("runs", *parts)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder


def new_parser(description: str | None) -> argparse.ArgumentParser:
    """The script's docstring as help, plus --quick and --workdir."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repetition: a smoke run, not a measurement"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("NNSLURM_BENCH_DIR", "/tmp/nnslurm-bench")),
        help="scratch folder for runs and, unless nnUNet_raw/nnUNet_preprocessed are set, the data "
        "(default: $NNSLURM_BENCH_DIR or %(default)s)",
    )
    return parser


def workspace(workdir: Path, need_dataset: bool = True) -> Workspace:
    """nnUNet_raw/_preprocessed from the environment when set, else under `workdir`; dataset 501 built."""
    root = workdir.expanduser().resolve()
    raw = Path(os.environ.get("nnUNet_raw") or root / "raw")
    preprocessed = Path(os.environ.get("nnUNet_preprocessed") or root / "preprocessed")
    space = Workspace(root=root, raw=raw, preprocessed=preprocessed)
    raw.mkdir(parents=True, exist_ok=True)
    if need_dataset and not (preprocessed / "Dataset501_Synthetic" / f"{TINY_PLANS}.json").is_file():
        print(f"building Dataset501_Synthetic in {raw} (once)", flush=True)
        nnslurm_cli(space, ["synthetic-dataset", "--id", DATASET], root / "results-unused")
    return space


def nnslurm_cli(space: Workspace, args: list[str], results: Path) -> None:
    env = space.env(results)
    env.pop("nnUNet_n_proc_DA")  # nnU-Net's planner crashes with 0
    result = subprocess.run(
        [sys.executable, "-m", "nnslurm", *args], env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise RuntimeError(f"nnslurm {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def realistic_plans(space: Workspace) -> Path:
    """nnU-Net's own plans for 160³ cases (what a user's CT/MR dataset gets), planned and preprocessed once.

    Only the trainer's initialize() needs the preprocessed folder; nothing trains on this data.
    """
    dataset = f"Dataset{REALISTIC_ID}_{REALISTIC_NAME}"
    plans = space.preprocessed / dataset / "nnUNetPlans.json"
    if (space.preprocessed / dataset / "nnUNetPlans_3d_fullres").is_dir():
        return plans
    print(f"planning and preprocessing {dataset} with nnU-Net (once, a few minutes)", flush=True)
    raw_only = ["--size", "160", "--cases", "4", "--no-preprocess"]
    create = ["synthetic-dataset", "--id", str(REALISTIC_ID), "--name", REALISTIC_NAME, *raw_only]
    nnslurm_cli(space, create, space.root / "results-unused")
    code = (
        "from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, "
        "plan_experiments, preprocess\n"
        "if __name__ == '__main__':\n"
        f"    extract_fingerprints([{REALISTIC_ID}], num_processes=2, check_dataset_integrity=False)\n"
        f"    plan_experiments([{REALISTIC_ID}])\n"
        f"    preprocess([{REALISTIC_ID}], configurations=('3d_fullres',), num_processes=(2,))\n"
    )
    env = space.env(space.root / "results-unused")
    env.pop("nnUNet_n_proc_DA")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=1800)
    return plans


# --- repetitions and statistics ----------------------------------------------------------------
def interleaved(arms: Sequence[str], repetitions: int) -> Iterator[tuple[int, str]]:
    """(repetition, arm) in A B, B A, A B ... order: drift of a shared machine hits both arms alike."""
    for repetition in range(repetitions):
        order = list(arms) if repetition % 2 == 0 else list(reversed(arms))
        for arm in order:
            yield repetition, arm


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """min..max, to show how noisy the machine was."""
    return f"{min(values):.4g}..{max(values):.4g}" if values else "-"


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


# --- output ------------------------------------------------------------------------------------
def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(value.ljust(w) for value, w in zip(row, widths, strict=True)) + " |")
    print(flush=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def command_line() -> str:
    """The command that produced this output, for docs/benchmarks.md."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join([".venv/bin/python", str(shown), *sys.argv[1:]])


def print_header(what: str) -> None:
    print(
        f"# {what}\n\ncommand: {command_line()}\nhost: {os.uname().nodename}, {os.cpu_count()} cpus, load "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        flush=True,
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines child.py wrote (a torn last line from a killed process is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_events(run_folder: Path) -> list[dict[str, Any]]:
    path = run_folder / "nnslurm_events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_folder(results: Path, plans: str, dataset: str = "Dataset501_Synthetic") -> Path:
    return results / dataset / f"nnUNetTrainer__{plans}__3d_fullres" / "fold_0"


# --- training processes ----------------------------------------------------------------------
@dataclass(frozen=True)
class Training:
    """Settings shared by both arms of a training benchmark (child.py's flags)."""

    plans: str
    epochs: int
    iterations: int
    val_iterations: int
    seed: int = 12345
    padding_mb: int = 0

    def child_args(self, arm: str, record: Path) -> list[str]:
        return [
            sys.executable, str(CHILD), "--arm", arm, "--dataset", DATASET, "--plans", self.plans,
            "--epochs", str(self.epochs), "--iterations", str(self.iterations),
            "--val-iterations", str(self.val_iterations), "--seed", str(self.seed),
            "--padding-mb", str(self.padding_mb), "--record", str(record),
        ]  # fmt: skip


def start_child(
    space: Workspace,
    training: Training,
    arm: str,
    results: Path,
    record: Path,
    extra: Sequence[str] = (),
    checkout: Path | None = None,
    cpu: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start one training process; its output goes to `record` + '.log'.

    `checkout`: a folder holding another copy of the nnslurm package, imported instead of this one.
    `cpu`: pin the process (and so its torch threads) to this CPU. `environ`: extra variables.
    """
    env = space.env(results)
    env.update(environ or {})
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(BENCHMARKS), str(checkout)])
    with open(record.with_suffix(".log"), "a") as log:
        return subprocess.Popen(
            [*training.child_args(arm, record), *extra],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
        )


def run_child(
    space: Workspace,
    training: Training,
    arm: str,
    results: Path,
    record: Path,
    extra: Sequence[str] = (),
    timeout: float = 1800,
    checkout: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """One training process to its end (see start_child)."""
    process = start_child(space, training, arm, results, record, extra, checkout)
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode)


def check_exit(
    result: subprocess.CompletedProcess[str] | subprocess.Popen[str], expected: Sequence[int], log: Path
) -> None:
    if result.returncode not in expected:
        tail = log.read_text()[-4000:] if log.is_file() else ""
        raise RuntimeError(f"{' '.join(result.args[:4])}... exited {result.returncode}:\n{tail}")
