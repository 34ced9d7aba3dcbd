"""Bad and hostile input to `nnslurm submit` / `nnslurm template`: a clear message naming the problem
and the fix, a non-zero exit, no traceback, nothing written. (The real cluster reads the values
nnslurm does accept exactly as given: tests/slurm/test_hostile_input.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import TINY_TRAINING, NnunetEnv, folder_digests

pytestmark = pytest.mark.nnunet

HOSTILE = 'a\'b$(touch PWNED)`touch PWNED`;c "q" \\ #h'


def submit(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nnslurm", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    home = tmp_path / "config"
    (home / "nnslurm").mkdir(parents=True)
    return home


def write_profile(config_home: Path, text: str) -> Path:
    path = config_home / "nnslurm" / "config.toml"
    path.write_text(text)
    return path


CASES = [
    # (name, extra args, profile file text or None, exit code, words the message must contain)
    ("unknown profile", ["--profile", "gpu-big"], None, 2, ["profile 'gpu-big'", "config.toml"]),
    ("profile syntax error", ["--profile", "gpu"], "[profiles.gpu\npartition = 'x'\n", 2, ["config.toml"]),
    (
        "profile unknown key",
        ["--profile", "gpu"],
        "[profiles.gpu]\npartitoin = 'gpu'\n",
        2,
        ["partitoin", "partition"],
    ),
    ("time unparsable", ["--time", "3 days"], None, 2, ["--time", "3 days"]),
    (
        "time shorter than the warning",
        ["--time", "00:01:00", "--signal-delay", "120"],
        None,
        2,
        ["must be longer than --signal-delay", "raise --time or lower --signal-delay"],
    ),
    ("unknown signal", ["--signal", "HUP"], None, 2, ["--signal", "HUP"]),
    ("line break in the job name", ["--job-name", "x\nrm -rf ~"], None, 2, ["--job-name", "line break"]),
    ("line break in the log folder", ["--log-dir", "/tmp/a\nb"], None, 2, ["--log-dir", "control"]),
    ("percent in the log folder", ["--log-dir", "/tmp/100%done"], None, 2, ["--log-dir", "'%'", "%j"]),
    ("control character in --partition", ["--partition", "gpu\x07"], None, 2, ["--partition", "control"]),
    ("sbatch-arg key", ["--sbatch-arg", "comment;touch PWNED=x"], None, 2, ["not an sbatch option name"]),
    ("sbatch-arg value", ["--sbatch-arg", "comment=a\nb"], None, 2, ["--sbatch-arg comment", "control"]),
    (
        "line break in a profile value",
        ["--profile", "gpu"],
        '[profiles.gpu]\naccount = "lab\\n#SBATCH --qos=top"\n',
        2,
        ["--account", "control"],
    ),
]


@pytest.mark.parametrize("command", ["submit", "template"])
@pytest.mark.parametrize(("name", "extra", "profile", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_refused_clearly_and_nothing_written(
    nnunet_env: NnunetEnv,
    tmp_path: Path,
    config_home: Path,
    command: str,
    name: str,
    extra: list[str],
    profile: str | None,
    code: int,
    words: list[str],
) -> None:
    if profile is not None:
        write_profile(config_home, profile)
    env = nnunet_env.env(XDG_CONFIG_HOME=str(config_home))
    before = folder_digests(tmp_path)
    prefix = ["submit", "--executor", "local", "--dry-run"] if command == "submit" else ["template", "train"]
    result = submit([*prefix, *TINY_TRAINING, *extra], env, cwd=tmp_path)
    assert result.returncode == code, result.stdout + result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "Traceback" not in result.stderr
    assert folder_digests(tmp_path) == before  # no script, no log folder, no run folder
    assert not list(tmp_path.rglob("PWNED"))


def test_executor_slurm_without_sbatch(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = nnunet_env.env(PATH=str(empty))
    result = submit(["submit", "--executor", "slurm", *TINY_TRAINING], env, cwd=tmp_path)
    assert result.returncode == 2
    assert "sbatch/srun are not on the PATH" in result.stderr and "--executor local" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (nnunet_env.results / ".nnslurm").exists()  # no log folder


def test_hostile_values_are_quoted_in_the_script(nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    """What the real cluster reads back (tests/slurm) comes from these lines: one line per option,
    every value in quotes, backslashes doubled, nothing outside the quotes."""
    log_dir = tmp_path / "log dir $(touch PWNED)"
    env = nnunet_env.env()
    args = [
        *TINY_TRAINING,
        "--job-name",
        HOSTILE,
        "--log-dir",
        str(log_dir),
        "--sbatch-arg",
        f"comment={HOSTILE}",
    ]
    dry = submit(["submit", "--executor", "slurm", "--dry-run", *args], env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    script = tmp_path / "train.sbatch"
    rendered = submit(["template", "train", *args, "-o", str(script)], env, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    expected = "'a'\"'\"'b$(touch PWNED)`touch PWNED`;c \"q\" \\\\ #h'"
    for text in (dry.stdout, script.read_text()):
        assert f"#SBATCH --job-name={expected}" in text
        assert f"#SBATCH --comment={expected}" in text
        assert "--output='" + str(log_dir) in text
    assert not list(tmp_path.rglob("PWNED")) and not log_dir.exists()
