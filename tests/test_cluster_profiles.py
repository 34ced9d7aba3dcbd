"""Cluster settings: defaults < TOML profile < command line; unknown keys list the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnslurm.core.cluster import ClusterSettings, load_profile, parse_sbatch_arg, profile_files, resolve
from nnslurm.core.errors import UsageError

PROFILES = """
[profiles.gpu]
partition = "gpu"
account = "lab"
time = "2-00:00:00"
gpus = 1
cpus-per-task = 8
mem = "64G"
signal = "USR2"
signal_delay = 300
setup = ["module load cuda/12.1", "source ~/venv/bin/activate"]
sbatch_args = { mail-type = "END,FAIL", exclusive = true }

[profiles.short]
time = 30
"""


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    local = tmp_path / "nnslurm.toml"
    local.write_text(PROFILES)
    user = tmp_path / "home" / "nnslurm" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[profiles.default]\npartition = "cpu"\n\n[profiles.gpu]\npartition = "shadowed"\n')
    return [local, user]


def test_profile_values(files: list[Path]) -> None:
    settings, path = resolve("gpu", {}, files)
    assert path == files[0]  # ./nnslurm.toml comes first
    assert settings == ClusterSettings(
        partition="gpu",
        account="lab",
        time_s=2 * 86400,
        gpus=1,
        cpus_per_task=8,
        mem="64G",
        signal="USR2",
        signal_delay_s=300,
        sbatch_args=(("mail-type", "END,FAIL"), ("exclusive", None)),
        setup=("module load cuda/12.1", "source ~/venv/bin/activate"),
    )


def test_command_line_wins(files: list[Path]) -> None:
    settings, _ = resolve(
        "gpu",
        {"partition": "a100", "time_s": 3600, "sbatch_args": (("mail-type", "NONE"),), "setup": ("echo hi",)},
        files,
    )
    assert settings.partition == "a100"
    assert settings.time_s == 3600
    assert settings.account == "lab"  # untouched by the command line
    assert settings.sbatch_args == (("exclusive", None), ("mail-type", "NONE"))
    assert settings.setup[-1] == "echo hi"


def test_bare_number_is_minutes(files: list[Path]) -> None:
    assert resolve("short", {}, files)[0].time_s == 30 * 60


def test_default_profile_without_flag(files: list[Path]) -> None:
    settings, path = resolve(None, {}, files)
    assert (settings.partition, path) == ("cpu", files[1])


def test_no_files_no_profile(tmp_path: Path) -> None:
    settings, path = resolve(None, {"time_s": 600}, [tmp_path / "missing.toml"])
    assert path is None
    assert settings == ClusterSettings(time_s=600)


def test_unknown_key_lists_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "nnslurm.toml"
    path.write_text('[profiles.x]\npartion = "gpu"\n')
    with pytest.raises(UsageError) as error:
        resolve("x", {}, [path])
    message = str(error.value)
    assert "partion" in message
    assert "valid keys: partition, account, qos, time" in message


def test_unknown_profile_names_the_files_and_profiles(files: list[Path]) -> None:
    with pytest.raises(UsageError) as error:
        load_profile("nope", files)
    assert "profile 'nope' not found" in str(error.value)
    assert "gpu" in str(error.value)
    assert str(files[0]) in str(error.value)


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[profiles.x]\ngpus = "one"\n', "gpus must be a whole number"),
        ('[profiles.x]\ntime = "soon"\n', "is not a SLURM time"),
        ("[profiles.x]\nsetup = [1]\n", "setup must be a list of shell lines"),
        ('[profiles.x]\nsbatch_args = { time = "5" }\n', "set by nnslurm itself"),
        ('[profiles.x]\nsignal = "USR9"\n', "unknown signal"),
        ("[profiles.x\n", "is not valid TOML"),
        ('partition = "gpu"\n', "unknown top-level key"),
    ],
)
def test_bad_profiles(tmp_path: Path, toml: str, words: str) -> None:
    path = tmp_path / "nnslurm.toml"
    path.write_text(toml)
    with pytest.raises(UsageError, match=words):
        resolve("x", {}, [path])


def test_time_must_exceed_signal_delay() -> None:
    with pytest.raises(UsageError, match="must be longer than --signal-delay"):
        ClusterSettings(time_s=100, signal_delay_s=120)
    ClusterSettings(time_s=50, signal_delay_s=10)


def test_profile_time_checked_after_command_line(tmp_path: Path) -> None:
    path = tmp_path / "nnslurm.toml"
    path.write_text('[profiles.quick]\ntime = "0:50"\n')
    assert resolve("quick", {"signal_delay_s": 10}, [path])[0].time_s == 50


def test_sbatch_args() -> None:
    assert parse_sbatch_arg("mail-type=END") == ("mail-type", "END")
    assert parse_sbatch_arg("--exclusive") == ("exclusive", None)
    assert parse_sbatch_arg("comment=a=b") == ("comment", "a=b")
    with pytest.raises(UsageError, match="use --partition"):
        parse_sbatch_arg("partition=gpu")
    with pytest.raises(UsageError, match="always passes --requeue"):
        parse_sbatch_arg("requeue")


def test_profile_file_locations(tmp_path: Path) -> None:
    paths = profile_files(cwd=tmp_path, environ={"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert paths == [tmp_path / "nnslurm.toml", tmp_path / "cfg" / "nnslurm" / "config.toml"]
