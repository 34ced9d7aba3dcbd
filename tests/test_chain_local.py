"""The workflow chain without SLURM: `nnslurm submit --executor local --find-best --predict` runs
training, find best and prediction on this machine in order, as one local job, and `status`
shows the chain finished (real nnU-Net, CPU). The training runs as two CPU ranks (-num_gpus 2): a
chain's training launches its ranks as `nnslurm train` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import TINY_TRAINING, NnunetEnv, nnslurm

pytestmark = pytest.mark.nnunet


def test_a_local_chain_runs_every_stage_in_order(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    env = nnunet_env.env(nnUNet_n_proc_DA="0")
    inputs = tmp_path / "in"
    inputs.mkdir()
    images = sorted((nnunet_env.raw / "Dataset501_Synthetic" / "imagesTr").glob("*_0000.nii.gz"))[:2]
    for image in images:
        shutil.copy(image, inputs / image.name)
    output = tmp_path / "out"
    args = ["submit", *TINY_TRAINING, "-num_gpus", "2", "--find-best", "--predict", str(inputs), str(output)]
    args += ["--executor", "local", "--log-dir", str(tmp_path / "logs"), "--wait"]
    result = nnslurm(args, env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "one local job runs every stage in order" in result.stdout
    run = nnunet_env.run_folder()
    assert (run / "checkpoint_final.pth").is_file()
    started = [json.loads(line) for line in (run / "nnslurm_events.jsonl").read_text().splitlines()]
    assert [r.get("world_size") for r in started if r["event"] == "started"] == [2]
    assert (run / "validation" / "summary.json").is_file()
    assert (nnunet_env.results / "Dataset501_Synthetic" / "inference_instructions.txt").is_file()
    predicted = sorted(path.name for path in output.glob("*.nii.gz"))
    assert predicted == sorted(image.name.replace("_0000", "") for image in images)
    status = nnslurm(["status", "--json"], env)
    (chain,) = json.loads(status.stdout)["chains"]
    assert chain["executor"] == "local"
    assert [(stage["stage"], stage["state"]) for stage in chain["stages"]] == [
        ("train 3d_fullres", "finished"),
        ("find best", "finished"),
        ("predict", "finished"),
    ]
    # every stage ran in the one local job, in order: the stages' event logs say when
    starts = [
        json.loads(line)["time"]
        for folder in (
            run,
            nnunet_env.results / "Dataset501_Synthetic" / ".nnslurm" / "find_best",
            output / ".nnslurm",
        )
        for line in (folder / "nnslurm_events.jsonl").read_text().splitlines()[:2]
        if json.loads(line)["event"] == "started"
    ]
    assert starts == sorted(starts) and len(starts) == 3
