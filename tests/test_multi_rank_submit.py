"""`submit -num_gpus N` and `template -num_gpus N` (with `--nodes M`), without a cluster: the rank
count in the job's settings, the GPUs and nodes asked for, the refusals, the job's launch wiring, where
a launcher's ranks sit (the real jobs on a real SLURM: tests/slurm/test_multi_rank_slurm.py)."""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import pytest
from support import FakeCluster

from nnslurm import EXIT_RESUMABLE, cli
from nnslurm.commands.options import cluster_settings_from_args, training_jobs_from_args
from nnslurm.core.cluster import ClusterSettings
from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.core.errors import SchedulerError
from nnslurm.jobs import submission as launch
from nnslurm.jobs.training_job import TrainingJob, _after_stop_of
from nnslurm.slurm.commands import use_runner
from nnslurm.slurm.environment import SlurmEnvironment
from nnslurm.training.launch_ranks import RankFailed, _status
from nnslurm.training.ranks import PORT_BASE, PORT_SPAN, Placement, step_placement

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
    (["--sbatch-arg", "nodes=2"], ["--sbatch-arg nodes is set by nnslurm itself", "HINT: use --nodes"]),
    (["--sbatch-arg", "N=3"], ["--sbatch-arg N is set by nnslurm itself", "HINT: use --nodes"]),
    (["--sbatch-arg", "ntasks-per-node=2"], ["one task per node, a launcher of its -num_gpus ranks"]),
    (["--nodes", "0"], ["--nodes must be 1 or more, got 0"]),
]


@pytest.mark.parametrize(
    ("command", "extra", "words"),
    [(["submit", "--dry-run", *RUN], *case) for case in REFUSED]
    + [(["template", "train", "-d", "501", "-f", "0"], *case) for case in REFUSED],
)
def test_refused_with_a_reason(
    command: list[str],
    extra: list[str],
    words: list[str],
    here: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        code = cli.main([*command, "-num_gpus", "2", *extra])
    except SystemExit as refused:  # a flag argparse refuses itself (--sbatch-arg nodes)
        code = refused.code
    said = caplog.text + capsys.readouterr().err
    assert code == 2
    for word in words:
        assert word in said
    assert "Traceback" not in said
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


def test_several_nodes_one_launcher_each(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--nodes 2 -num_gpus 2: one srun task per node (each launches its 2 ranks), 2 GPUs on each."""
    assert (
        cli.main(["submit", "--dry-run", *RUN, "-num_gpus", "2", "--nodes", "2", "--executor", "slurm"]) == 0
    )
    out = capsys.readouterr().out
    assert "-p nnUNetPlans, 2 nodes x 2 ranks, max requeues 20" in out and "# nodes: 2\n" in out
    for line in ("#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=1\n", "#SBATCH --gpus-per-node=2\n"):
        assert line in out
    assert list(here.iterdir()) == []
    rendered = here / "job.sbatch"
    template = [
        "template",
        "train",
        "-d",
        "501",
        "-f",
        "0",
        "-num_gpus",
        "2",
        "--nodes",
        "2",
        "-o",
        str(rendered),
    ]
    assert cli.main(template) == 0
    script = rendered.read_text()
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=2\n" in script
    assert "LAUNCH=(srun --ntasks-per-node=1 --kill-on-bad-exit=0)" in script
    assert 'exec "${LAUNCH[@]}" "${NNSLURM[@]}" train "${NNSLURM_TRAIN_ARGS[@]}"' in script


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
    assert "nnslurm train 501 3d_fullres FOLD -num_gpus 2 (folds 0, 2 ranks per node)" in out
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


def test_another_launcher_judges_by_its_own_first_rank() -> None:
    """Launcher 1 of ranks 2 and 3: both stopped is 75 (its caller leaves with 0: rank 0 decides);
    its own rank's error is raised with that rank named, not waited for as rank 0's."""
    assert _status([EXIT_RESUMABLE, EXIT_RESUMABLE], {}, None, first_rank=2) == EXIT_RESUMABLE
    with pytest.raises(RankFailed, match="rank 3 killed by SIGKILL; then rank 2 failed: no data"):
        _status([1, -9], {2: (1, "no data")}, None, first_rank=2)
    with pytest.raises(RankFailed, match="rank 2 exited 0, rank 3 killed by SIGKILL"):
        _status([0, -9], {}, None, first_rank=2)


# --- several nodes: where a launcher's ranks sit --------------------------------------------------


def test_a_launcher_places_its_ranks_by_its_srun_task() -> None:
    """Task 1 of 2 (`srun`, one per node) on gpu02: global ranks 2 and 3 of 4, devices 0 and 1 of its
    node, meeting at the first host of the step's nodes on the job's own port (every task derives the
    same one)."""
    env = SlurmEnvironment.from_environ(
        {
            "SLURM_JOB_ID": "1234",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_PROCID": "1",
            "SLURM_LOCALID": "0",
            "SLURM_STEP_NODELIST": "gpu[01-02]",
        }
    )
    fake = FakeCluster(answers={"scontrol show hostnames gpu[01-02]": ["gpu01\ngpu02\n"]})
    with use_runner(fake):
        placement = step_placement(env)
    assert (placement.index, placement.launchers, placement.leads) == (1, 2, False)
    assert (placement.master_addr, placement.master_port) == ("gpu01", PORT_BASE + 1234 % PORT_SPAN)
    ranks = [placement.rank(number, 2, 29999) for number in (0, 1)]
    assert [(r.rank, r.world_size, r.local_rank, r.master_addr) for r in ranks] == [
        (2, 4, 0, "gpu01"),
        (3, 4, 1, "gpu01"),
    ]
    # two tasks on one node (srun -n 2): the second's devices follow the first's
    two_on_one = Placement(index=1, launchers=2, local_index=1, master_addr="n1", master_port=1)
    assert [two_on_one.rank(n, 2, 1).local_rank for n in (0, 1)] == [2, 3]


def test_one_launcher_outside_srun_steps_of_several_tasks() -> None:
    """The batch script itself, a job of one node, no SLURM: the only launcher, a free local port."""
    for environ in ({}, {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1", "SLURM_JOB_NODELIST": "n1"}):
        with use_runner(FakeCluster(missing=True)):  # nothing is asked
            assert step_placement(SlurmEnvironment.from_environ(environ)) == Placement()
    lost = SlurmEnvironment.from_environ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "2"})
    with pytest.raises(SchedulerError, match="no node list"):
        step_placement(lost)
