"""`--no-signal`: a script without any `--signal` line (sites whose job_submit plugin strips it, or
users who rely on the end-time rule alone), for submit (submitit's script) and template; refused
with --no-end-time-stop, since nothing would then stop the job before its limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnslurm import cli
from nnslurm.core.cluster import ClusterSettings
from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob
from nnslurm.jobs import submission as launch

RUN = ["-d", "501", "-f", "0"]


pytestmark = pytest.mark.usefixtures("no_cluster")


def submission(cluster: ClusterSettings) -> launch.Submission:
    job = TrainJob(RunSpec("501", "3d_fullres", "0"), TrainingOptions())
    return launch.Submission((job,), cluster, "slurm", Path("/scratch/nnslurm"), "x")


def test_dry_run_script_has_no_signal_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", *RUN, "--executor", "slurm", "--no-signal", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# warning signal: none (--no-signal): the end-time rule stops the job" in out
    assert "--signal" not in out.split("#!/bin/bash", 1)[1]  # neither nnslurm's nor submitit's USR2
    assert "#SBATCH --requeue\n" in out and "#SBATCH --time=1440\n" in out
    # and by default, exactly one: nnslurm's (submitit's USR2@90 default is replaced)
    assert cli.main(["submit", *RUN, "--executor", "slurm", "--dry-run"]) == 0
    script = capsys.readouterr().out.split("#!/bin/bash", 1)[1]
    assert [line for line in script.splitlines() if "--signal" in line] == ["#SBATCH --signal=USR1@120"]


def test_the_submitted_script_is_the_dry_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What sbatch gets: the executor's own file text, not only the dry run's rendering."""
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))  # SlurmExecutor insists on srun
    for send, expected in ((False, []), (True, ["#SBATCH --signal=USR1@120"])):
        sub = submission(ClusterSettings(send_signal=send))
        executor = launch.SlurmExecutor(folder=sub.folder)
        executor.update_parameters(**launch.slurm_parameters(sub))
        text = executor._make_submission_file_text("python -m x", "uid")
        assert [line for line in text.splitlines() if "--signal" in line] == expected
        assert text == launch.render_sbatch(sub, python=executor.python).replace(
            launch.submitit_command(sub.folder, executor.python), "python -m x"
        )


def test_template_has_no_signal_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["template", "train", *RUN, "--no-signal"]) == 0
    text = capsys.readouterr().out
    assert "#SBATCH --signal" not in text and "NNSLURM_WARNING_SIGNAL" not in text
    assert "#SBATCH --requeue\n" in text and "--no-signal: no warning signal" in text
    assert cli.main(["template", "folds-array", "-d", "501", "-f", "0-1", "--no-signal"]) == 0
    assert "#SBATCH --signal" not in capsys.readouterr().out


def test_a_short_time_is_fine_without_a_signal(capsys: pytest.CaptureFixture[str]) -> None:
    """--time under the (unused) signal delay is no error when no signal is sent."""
    assert cli.main(["submit", *RUN, "--time", "1", "--no-signal", "--dry-run"]) == 0
    assert "#SBATCH --time=1\n" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["submit", "--dry-run"], ["template", "train"]])
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--no-end-time-stop"], ["--no-signal with --no-end-time-stop", "nothing would stop the job"]),
        (["--signal", "USR2"], ["--no-signal with --signal/--signal-delay"]),
        (["--signal-delay", "300"], ["--no-signal with --signal/--signal-delay"]),
    ],
)
def test_refused_with_a_reason(
    command: list[str],
    extra: list[str],
    words: list[str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert cli.main([*command, *RUN, "--no-signal", *extra]) == 2
    for word in words:
        assert word in caplog.text
    assert "Traceback" not in caplog.text and "#!/bin/bash" not in capsys.readouterr().out
    assert not (tmp_path / "results").exists()  # nothing written
