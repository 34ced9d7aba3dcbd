"""The commands that only look import neither torch nor nnU-Net: seconds of imports that every
`status --watch` refresh, `logs` and `cancel` would pay. Each command runs in a fresh interpreter
(as a user runs it) and reports which of the two it imported. The import-linter contract in
pyproject.toml states the same for the modules; this covers what it cannot see (the CLI imports
the command modules by name) and `submit --dry-run`, whose module can also submit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import started, stop, write_log

HEAVY = ("torch", "nnunetv2")
PROBE = f"""
import json, sys
from nnslurm.cli import main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
with open(sys.argv[1], "w") as out:
    json.dump(sorted(name for name in {HEAVY!r} if name in sys.modules), out)
"""


def imported_heavy(argv: list[str], tmp_path: Path, env: dict[str, str]) -> list[str]:
    report = tmp_path / "heavy.json"
    report.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.is_file(), f"{argv}: the probe did not finish:\n{result.stderr[-3000:]}"
    found: list[str] = json.loads(report.read_text())
    return found


@pytest.fixture
def looking_env(tmp_path: Path) -> dict[str, str]:
    """A results folder with one interrupted run (its event log as jobs write it), no SLURM."""
    results = tmp_path / "results"
    run = results / "Dataset501_Synthetic" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    write_log(run, [*started("4242", -300), *stop("4242", -100, 3, 10, "preemption")])
    (tmp_path / "in").mkdir()
    env = dict(os.environ, nnUNet_results=str(results), XDG_CONFIG_HOME=str(tmp_path / "config"))
    env["nnUNet_raw"] = str(tmp_path / "raw")
    env["nnUNet_preprocessed"] = str(tmp_path / "preprocessed")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"  # no squeue/sacct
    return env


RUN = "results/Dataset501_Synthetic/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0"
COMMANDS = {
    "help": ["--help"],
    "status": ["status", "--json"],
    "status-table": ["status"],
    "logs": ["logs", RUN],
    "cancel": ["cancel", RUN, "--dry-run"],
    "cancel-chain": ["cancel", "--chain", "4242"],
    "template": ["template", "train", "-d", "501", "-f", "0"],
    "template-array": ["template", "folds-array", "-d", "501", "-f", "0-4"],
    "report": ["report", RUN, "--no-picture"],
    "submit-dry-run": ["submit", "-d", "501", "-f", "0-1", "--executor", "slurm", "--dry-run"],
    "submit-chain-dry-run": [
        *("submit", "-d", "501", "--cross-validation", "--preprocess", "--find-best"),
        *("--predict", "in", "out", "--executor", "slurm", "--dry-run"),
    ],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_that_only_looks_imports_neither_torch_nor_nnunet(
    name: str, tmp_path: Path, looking_env: dict[str, str]
) -> None:
    assert imported_heavy(COMMANDS[name], tmp_path, looking_env) == []


def test_the_probe_sees_torch_when_it_is_imported(tmp_path: Path, looking_env: dict[str, str]) -> None:
    """The check can fail: a command that needs torch shows it (train resolves its trainer class)."""
    found = imported_heavy(["train", "-d", "501", "-f", "0", "-tr", "nnUNetTrainer"], tmp_path, looking_env)
    assert "torch" in found
