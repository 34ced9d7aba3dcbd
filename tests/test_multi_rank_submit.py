"""`submit -num_gpus N` and `template -num_gpus N` on one node, without a cluster: the rank count in the
job's settings, the GPUs asked for, the refusals, the job's launch wiring (the real job on a real
SLURM: tests/slurm/test_multi_rank_slurm.py)."""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import pytest

from nnslurm import EXIT_RESUMABLE, cli
from nnslurm.commands.options import cluster_settings_from_args, training_jobs_from_args
from nnslurm.core.cluster import ClusterSettings
from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.jobs import submission as launch
from nnslurm.jobs.training_job import TrainingJob, _after_stop_of
from nnslurm.training.launch_ranks import RankFailed, _status

RUN = ["501", "3d_fullres", "0"]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No profile, results in tmp_path/results (nothing may be written there by a dry run)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return tmp_path


def settings(*words: str) -> tuple[TrainJob, ClusterSettings]:
    args = cli.build_parser().parse_args(["submit", *RUN, *words])
    (job,) = training_jobs_from_args(args)
    return job, cluster_settings_from_args(args)


@pytest.mark.usefixtures("here")
@pytest.mark.parametrize(
    ("words", "gpus"),
    [
        ([], None),  # one rank: as before, the profile's or --gpus
        (["-num_gpus", "2"], 2),  # -device auto: one GPU per rank
        (["-num_gpus", "2", "-device", "cuda", "--gpus", "2"], 2),  # the same number said twice
        (["-num_gpus", "2", "-device", "cpu"], None),  # CPU ranks share the node's cores
        (["-num_gpus", "1", "--gpus", "1"], 1),
    ],
)
def test_the_gpus_asked_for(words: list[str], gpus: int | None) -> None:
    job, cluster = settings(*words)
    assert cluster.gpus == gpus
    assert job.options.num_gpus == (2 if "2" in words[1:2] else 1)


def test_a_profile_gives_way_to_num_gpus(here: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    (here / "nnslurm.toml").write_text('[profiles.default]\npartition = "gpu"\ngpus = 1\n')
    job, cluster = settings("-num_gpus", "4")
    assert (cluster.gpus, cluster.partition, job.options.num_gpus) == (4, "gpu", 4)
    assert "-num_gpus 4: as many GPUs per node, not the profile's 1" in caplog.text


REFUSED = [
    (["--gpus", "1"], ["--gpus 1 with -num_gpus 2: each rank needs a GPU of its own", "HINT: drop --gpus"]),
    (["--sbatch-arg", "nodes=2"], ["--sbatch-arg nodes=2: the ranks run on one node", "across nodes"]),
    (["--sbatch-arg", "N=3"], ["--sbatch-arg N=3: the ranks run on one node"]),
]


@pytest.mark.parametrize(
    ("command", "extra", "words"),
    [(["submit", "--dry-run", *RUN], *case) for case in REFUSED]
    + [(["template", "train", "-d", "501", "-f", "0"], *case) for case in REFUSED],
)
def test_refused_with_a_reason(
    command: list[str], extra: list[str], words: list[str], here: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main([*command, "-num_gpus", "2", *extra]) == 2
    for word in words:
        assert word in caplog.text
    assert "Traceback" not in caplog.text
    assert list(here.iterdir()) == []  # nothing written


def test_dry_run_shows_the_ranks_and_the_gpus(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "--dry-run", *RUN, "-num_gpus", "2", "--executor", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "# gpus per node: 2\n" in out
    assert "fold 0, -tr nnUNetTrainer, -p nnUNetPlans, 2 ranks on one node, max requeues 20" in out
    assert "#SBATCH --gpus-per-node=2\n" in out and "#SBATCH --nodes=1\n" in out
    assert list(here.iterdir()) == []

    assert (
        cli.main(["submit", "--dry-run", *RUN, "-num_gpus", "2", "-device", "cpu", "--cpus-per-task", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "# gpus per node: none\n" in out and "gpus-per-node" not in out
    assert "2 ranks on one node" in out and "#SBATCH --cpus-per-task=2\n" in out


def test_a_chain_trains_with_the_ranks_and_predicts_on_one_gpu(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The training array's tasks ask for a GPU per rank; predict (one device) for one GPU, not the
    training's N; preprocess and find best for none."""
    inputs = here / "in"
    inputs.mkdir()
    args = ["submit", "--dry-run", *RUN, "-num_gpus", "2", "--preprocess", "--predict", str(inputs), "out"]
    assert cli.main([*args, "--executor", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "nnslurm train 501 3d_fullres FOLD -num_gpus 2 (folds 0, 2 ranks on one node each)" in out
    preprocess, train, find_best, predict = out.split("\n# --- ")[1:]
    assert "#SBATCH --gpus-per-node=2\n" in train
    assert "#SBATCH --gpus-per-node=1\n" in predict
    for script in (preprocess, find_best):
        assert "gpus" not in script, script


def test_rank_zero_decides_with_the_jobs_own_after_stop() -> None:
    """What the launcher gives the spawned rank 0 pickles (a submitted job: its own submission
    inside), and makes this job's after_stop there."""
    job = TrainJob(RunSpec("501"), TrainingOptions(num_gpus=2, device="cpu"))
    again = launch.Submission((job,), ClusterSettings(), "slurm", Path("/scratch/logs"), "nnslurm-501")
    factory = functools.partial(_after_stop_of, TrainingJob(job, again))
    in_rank = pickle.loads(pickle.dumps(factory))
    after_stop = in_rank(job)
    assert after_stop.__func__ is TrainingJob.after_stop  # type: ignore[attr-defined]
    owner = after_stop.__self__  # type: ignore[attr-defined]
    assert (owner.job, owner.again, owner.max_requeues) == (job, again, 20)


@pytest.mark.parametrize(
    ("statuses", "decided", "status"),
    [
        ([0, 0], None, 0),
        ([EXIT_RESUMABLE, EXIT_RESUMABLE], EXIT_RESUMABLE, EXIT_RESUMABLE),
        ([144, EXIT_RESUMABLE], 144, 144),  # submitit's local executor: rank 0 requeued the job
        ([EXIT_RESUMABLE, -9], EXIT_RESUMABLE, EXIT_RESUMABLE),  # rank 0 stopped it resumable
        ([-15, EXIT_RESUMABLE], EXIT_RESUMABLE, EXIT_RESUMABLE),  # TERM after its decision: it stands
    ],
)
def test_the_launcher_leaves_with_rank_zeros_decision(
    statuses: list[int], decided: int | None, status: int
) -> None:
    assert _status(statuses, {}, decided) == status


@pytest.mark.parametrize(
    ("statuses", "decided"),
    [([144, EXIT_RESUMABLE], None), ([1, EXIT_RESUMABLE], None), ([-15, EXIT_RESUMABLE], None)],
)
def test_a_status_rank_zero_did_not_decide_is_a_failure(statuses: list[int], decided: int | None) -> None:
    with pytest.raises(RankFailed, match="the ranks ended without finishing or stopping"):
        _status(statuses, {}, decided)
