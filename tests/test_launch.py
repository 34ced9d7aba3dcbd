"""What `nnslurm submit` and `nnslurm template` produce, without a cluster: golden sbatch scripts,
folds and arrays, executor choice, dry runs. NNSLURM_UPDATE_GOLDEN=1 rewrites the golden files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from nnslurm import cli
from nnslurm.commands.options import cluster_settings_from_args, parse_folds, training_jobs_from_args
from nnslurm.commands.template import TEMPLATES, template_text
from nnslurm.core.cluster import ClusterSettings, resolve
from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.core.errors import NnunetSetupError, UsageError
from nnslurm.core.locations import default_log_dir
from nnslurm.jobs import submission as launch
from nnslurm.jobs import waiting

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]
ENVIRON = {
    "nnUNet_raw": "/data/raw",
    "nnUNet_preprocessed": "/data/preprocessed",
    "nnUNet_results": "/data/nn results",
}
PYTHON = "/opt/venv/bin/python"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NNSLURM_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with NNSLURM_UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(), f"{name} changed; if intended, rerun with NNSLURM_UPDATE_GOLDEN=1"


def train_jobs(
    folds: list[str], configuration: str = "3d_fullres", **options: object
) -> tuple[TrainJob, ...]:
    return tuple(
        TrainJob(RunSpec("501", configuration, fold), TrainingOptions(**options))  # type: ignore[arg-type]
        for fold in folds
    )


def submission(jobs: tuple[TrainJob, ...], cluster: ClusterSettings, name: str) -> launch.Submission:
    return launch.Submission(jobs, cluster, "slurm", Path("/scratch/nnslurm"), name)


def test_golden_single_job() -> None:
    cluster = ClusterSettings(partition="gpu", time_s=86400, gpus=1, cpus_per_task=8, mem="64G")
    text = launch.render_sbatch(
        submission(train_jobs(["0"]), cluster, "nnslurm-501-3d_fullres-f0"), ENVIRON, PYTHON
    )
    check_golden("submit-single.sbatch", text)
    # What the walltime/preemption handling relies on:
    assert "#SBATCH --signal=USR1@120\n" in text  # to the srun step (the job runs under srun)
    assert "#SBATCH --requeue\n" in text
    assert "#SBATCH --open-mode=append\n" in text
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1\n" in text and "export NNSLURM_WARNING_SIGNAL=USR1\n" in text
    assert "export nnUNet_results='/data/nn results'\n" in text


def test_golden_array_of_folds() -> None:
    cluster = ClusterSettings(partition="gpu", time_s=4 * 3600, signal="USR2", signal_delay_s=300, qos="long")
    jobs = train_jobs(["0", "1", "2", "3", "4"])
    text = launch.render_sbatch(submission(jobs, cluster, "nnslurm-501-3d_fullres"), ENVIRON, PYTHON)
    check_golden("submit-array.sbatch", text)
    assert "#SBATCH --array=0-4%5\n" in text
    assert "#SBATCH --signal=USR2@300\n" in text and "export SUBMITIT_PREEMPT_SIGNAL=USR2\n" in text


def test_golden_profile(tmp_path: Path) -> None:
    profile = tmp_path / "nnslurm.toml"
    profile.write_text(
        '[profiles.cluster]\npartition = "a100"\naccount = "lab"\ntime = "2-00:00:00"\ngpus = 1\n'
        'mem = "64G"\nconstraint = "a100-80g"\n'
        'setup = ["module load cuda/12.1", "source $HOME/venvs/nnunet/bin/activate"]\n'
        'sbatch_args = { mail-type = "END,FAIL", exclusive = true }\n'
    )
    cluster, _ = resolve("cluster", {"cpus_per_task": 16}, [profile])
    jobs = train_jobs(["0", "1"], "2d") + train_jobs(["0", "1"], "3d_fullres")
    text = launch.render_sbatch(submission(jobs, cluster, "nnslurm-501-2d+3d_fullres"), ENVIRON, PYTHON)
    check_golden("submit-profile.sbatch", text)
    assert "#SBATCH --account=lab\n" in text and "#SBATCH --exclusive\n" in text
    assert "#SBATCH --time=2880\n" in text  # minutes, as submitit writes it
    assert text.index("export nnUNet_raw") < text.index("module load cuda/12.1")  # user setup may override


def golden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden scripts' environment: nnU-Net's folders as in the golden files, no profile."""
    for key in list(os.environ):
        if key.startswith("nnUNet_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("nnUNet_results", "/data/nn results")
    monkeypatch.chdir(Path(__file__).parent)  # no ./nnslurm.toml here
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_golden_templates(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    golden_environment(monkeypatch)
    folds = ["--fold", "0"] if name == "train" else ["--cross-validation"]
    status = cli.main(
        [
            "template",
            name,
            "-d",
            "501",
            *folds,
            "-p",
            "nnslurmTinyPlans",
            "--epochs",
            "3",
            "--no-final-validation",
            "--time",
            "0:50",
            "--signal-delay",
            "10",
            "--partition",
            "low",
            "--setup",
            "module load x",
            "--sbatch-arg",
            "comment=nnslurm test",
            "--command",
            "nnslurm",
            "--max-requeues",
            "3",
        ]
    )
    assert status == 0
    text = capsys.readouterr().out
    check_golden(f"template-{name}.sbatch", text)
    assert "#SBATCH --signal=B:USR1@10\n" in text and "#SBATCH --requeue\n" in text
    assert 'exec "${LAUNCH[@]}" "${NNSLURM[@]}" train' in text


def test_templates_have_one_source_and_the_package_reads_it() -> None:
    """slurm_templates/ holds the files users read; nnslurm/templates is a link to it, which the
    package reads (test_the_built_wheel_carries_the_templates: and ships)."""
    package_folder = REPO / "nnslurm" / "templates"
    assert package_folder.is_symlink() and package_folder.resolve() == REPO / "slurm_templates"
    for file_name in TEMPLATES.values():
        shipped = template_text(file_name)
        assert shipped == (REPO / "slurm_templates" / file_name).read_text()
        for needed in (
            "#SBATCH --signal=B:USR1@120",
            "#SBATCH --requeue",
            "#SBATCH --open-mode=append",
            "exec ",
        ):
            assert needed in shipped


BUILD = """
import os, sys, tarfile
from setuptools import build_meta
out = sys.argv[1]
sdist = build_meta.build_sdist(out)
with tarfile.open(os.path.join(out, sdist)) as archive:
    archive.extractall(out, filter="data")
os.chdir(os.path.join(out, sdist.removesuffix(".tar.gz")))
print(build_meta.build_wheel(out))
"""


def test_the_built_wheel_carries_the_templates(tmp_path: Path) -> None:
    """As `python -m build` does (offline here): an sdist of the tree, then a wheel of the sdist;
    the link nnslurm/templates must come out as the files themselves."""
    pytest.importorskip("setuptools.build_meta")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("nnslurm", "slurm_templates"):
        shutil.copytree(
            REPO / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp_path / "dist"
    out.mkdir()
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=source, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = out / built.stdout.split()[-1]
    with zipfile.ZipFile(wheel) as archive:
        for file_name in TEMPLATES.values():
            packaged = archive.read(f"nnslurm/templates/{file_name}").decode()
            assert packaged == (REPO / "slurm_templates" / file_name).read_text()


def test_unknown_template() -> None:
    with pytest.raises(UsageError, match="choose one of"):
        template_text("nope")


@pytest.mark.parametrize(
    ("values", "cross", "folds"),
    [
        (["0"], False, ["0"]),
        (["0", "2"], False, ["0", "2"]),
        (["0,2"], False, ["0", "2"]),
        (["1-3"], False, ["1", "2", "3"]),
        (["all"], False, ["all"]),  # nnU-Net's fold "all": one model on every case
        (None, True, ["0", "1", "2", "3", "4"]),
        (["4"], True, ["4", "0", "1", "2", "3"]),
    ],
)
def test_folds(values: list[str] | None, cross: bool, folds: list[str]) -> None:
    assert parse_folds(values, cross) == folds


@pytest.mark.parametrize(
    ("values", "message"),
    [(["x"], "'x' is not a fold"), (["3-1"], "the range is empty"), (None, "no fold given")],
)
def test_bad_folds(values: list[str] | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_folds(values, False)


def test_executor_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert launch.choose_executor("auto") == "local"
    (tmp_path / "sbatch").write_text("#!/bin/sh\n")
    (tmp_path / "sbatch").chmod(0o755)
    assert launch.choose_executor("auto") == "slurm"
    assert launch.choose_executor("local") == "local"


def test_slurm_executor_without_slurm_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    sub = submission(train_jobs(["0"]), ClusterSettings(), "x")
    with pytest.raises(UsageError, match="sbatch/srun are not on the PATH"):
        launch.make_executor(sub)


def test_dry_run_without_slurm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", os.path.dirname(shutil.which("python3") or "/usr/bin/python3"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    status = cli.main(
        [
            "submit",
            "-d",
            "501",
            "--fold",
            "0-1",
            "-c",
            "2d",
            "-c",
            "3d_fullres",
            "--time",
            "1:00:00",
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "nothing is submitted" in out
    assert "#SBATCH --array=0-3%4" in out  # 2 configurations x 2 folds: one array
    assert "array task 3: dataset 501, 3d_fullres, fold 1" in out
    assert "WARNING: this submission would fail" in out  # no dataset here, and it says so
    assert not (tmp_path / "results" / ".nnslurm").exists()  # nothing written


def test_signal_must_be_a_stop_signal(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    status = cli.main(
        ["submit", "-d", "501", "-f", "0", "--signal", "USR2", "--stop-signals", "USR1,TERM", "--dry-run"]
    )
    assert status == 2
    assert "--signal USR2 is not one of --stop-signals USR1,TERM" in caplog.text
    assert "the walltime warning would kill the training" in caplog.text
    assert "add USR2 to --stop-signals or choose another --signal" in caplog.text
    assert not (tmp_path / ".nnslurm").exists()


def test_time_must_exceed_signal_delay_on_the_command_line(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    assert (
        cli.main(["submit", "-d", "501", "-f", "0", "--time", "1", "--signal-delay", "120", "--dry-run"]) == 2
    )
    assert "--time 00:01:00 must be longer than --signal-delay 120 s" in caplog.text
    assert "raise --time or lower --signal-delay" in caplog.text


def test_default_job_name_and_log_dir() -> None:
    assert launch.default_job_name(train_jobs(["0"])) == "nnslurm-501-3d_fullres-f0"
    assert launch.default_job_name(train_jobs(["0", "1"])) == "nnslurm-501-3d_fullres"
    assert default_log_dir({"nnUNet_results": "/r"}) == Path("/r/.nnslurm/submitit")
    with pytest.raises(NnunetSetupError, match="nnUNet_results is not set") as raised:
        default_log_dir({})
    assert "pass --log-dir" in str(raised.value)


def test_submission_environment_is_temporary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The local controller inherits the warning signal from the submitting process, for the
    duration of the submission only."""
    for name in ("SUBMITIT_PREEMPT_SIGNAL", "NNSLURM_WARNING_SIGNAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)  # no run folder: no "submitted" event
    seen: list[dict[str, str | None]] = []

    class Executor:
        def submit(self, fn: object) -> object:
            seen.append(
                {name: os.environ.get(name) for name in ("SUBMITIT_PREEMPT_SIGNAL", "NNSLURM_WARNING_SIGNAL")}
            )
            return types.SimpleNamespace(num_tasks=1)  # a submitted job of one task

    monkeypatch.setattr(launch, "make_executor", lambda submission, dependency=None: Executor())
    cluster = ClusterSettings(signal="USR2")
    launch.submit(launch.Submission(train_jobs(["0"]), cluster, "slurm", tmp_path, "x"))
    assert seen == [{"SUBMITIT_PREEMPT_SIGNAL": "USR2", "NNSLURM_WARNING_SIGNAL": "USR2"}]
    assert "SUBMITIT_PREEMPT_SIGNAL" not in os.environ and "NNSLURM_WARNING_SIGNAL" not in os.environ


def test_submitit_privates_are_what_nnslurm_was_checked_against(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """render_sbatch, submitit_command and PREEMPT_SIGNAL_ENV stand in for submitit privates (no
    public API renders the script without submitting); if submitit changes them, this fails."""
    import inspect

    import submitit
    from submitit.core import job_environment

    assert job_environment._PREEMPT_SIG_ENV == launch.PREEMPT_SIGNAL_ENV
    accepted = set(inspect.signature(submitit.slurm.slurm._make_sbatch_string).parameters)
    params = launch.slurm_parameters(submission(train_jobs(["0", "1"]), ClusterSettings(), "x"), ENVIRON)
    assert {"command", "folder", "map_count", *params} <= accepted
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # SlurmExecutor insists on srun
    executor = submitit.SlurmExecutor(folder=tmp_path / "%j", python=PYTHON)
    assert executor._submitit_command_str == launch.submitit_command(tmp_path / "%j", PYTHON)


class EndedJob:
    """A submitit job whose sacct state says it ended, without a result pickle."""

    def __init__(self, tmp_path: Path, state: str) -> None:
        self.job_id, self.state = "42", state
        self.paths = type("Paths", (), {"result_pickle": tmp_path / "none.pkl", "stderr": tmp_path / "err"})()

    def done(self, force_check: bool = False) -> bool:
        return True


JOB_LINE = "JobId=42 JobName=t JobState={} Reason=None Restarts=1 Requeue=1 TimeLimit=00:10:00"


@pytest.mark.parametrize(
    ("sacct_state", "scontrol_state", "expected"),
    [
        ("NODE_FAIL", "PENDING", waiting.RUNNING),  # requeued by SLURM: --wait goes on
        ("PREEMPTED", "RUNNING", waiting.RUNNING),
        ("NODE_FAIL", None, waiting.FAILED),  # gone from slurmctld: the end stands
        ("FAILED", "PENDING", waiting.FAILED),  # not a state SLURM requeues from
    ],
)
def test_a_job_slurm_requeued_is_not_reported_ended(
    tmp_path: Path, sacct_state: str, scontrol_state: str | None, expected: str
) -> None:
    from support import FakeCluster

    from nnslurm.slurm.commands import use_runner

    cluster = FakeCluster(answers={"scontrol show job": [JOB_LINE.format(scontrol_state)]})
    if scontrol_state is None:
        cluster.fail["scontrol show job"] = (1, "slurm_load_jobs error: Invalid job id specified")
    with use_runner(cluster):
        state, detail = waiting.job_state(EndedJob(tmp_path, sacct_state))  # type: ignore[arg-type]
    assert state == expected, detail
    if expected == waiting.RUNNING:
        assert detail == f"{sacct_state}, requeued by SLURM"


def test_golden_two_ranks(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """-num_gpus 2 on one node, from the command line: submit asks for two GPUs there (the job's
    process launches the ranks), the train template too, and its `nnslurm train` gets -num_gpus 2."""
    golden_environment(monkeypatch)
    words = ["-d", "501", "-f", "0", "-num_gpus", "2", "--time", "4:00:00", "--partition", "gpu"]
    args = cli.build_parser().parse_args(["submit", *words, "--cpus-per-task", "16"])
    jobs = training_jobs_from_args(args)
    cluster = cluster_settings_from_args(args)
    text = launch.render_sbatch(submission(jobs, cluster, "nnslurm-501-3d_fullres-f0"), ENVIRON, PYTHON)
    check_golden("submit-two-ranks.sbatch", text)
    assert "#SBATCH --gpus-per-node=2\n" in text and "#SBATCH --cpus-per-task=16\n" in text
    assert "#SBATCH --nodes=1\n" in text and "ntasks" not in text  # one process: it launches the ranks
    assert jobs[0].options.num_gpus == 2  # in the pickled TrainingJob: the job knows its ranks

    assert cli.main(["template", "train", *words, "--command", "nnslurm"]) == 0
    rendered = capsys.readouterr().out
    check_golden("template-train-two-ranks.sbatch", rendered)
    assert "#SBATCH --gpus-per-node=2\n" in rendered
    assert "-num_gpus 2 --max-requeues 20 -f 0)\n" in rendered
