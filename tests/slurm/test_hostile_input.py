"""Hostile values on the real cluster: quotes, $(), backticks, semicolons, '#' and backslashes in the
job name, the log folder, extra sbatch options and profile values reach SLURM exactly as given and
run nothing; sbatch's own refusal reaches the user. (Values no #SBATCH line can carry, such as line
breaks, are refused before anything is written: tests/test_submit_bad_input.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from support import TINY_PLANS, NnunetEnv, nnslurm

from .tools import Background, Cluster, sh, wait_for_event

# Everything a shell would act on, no '/' (the template's output file name holds the job name).
HOSTILE = 'a\'b$(touch PWNED)`touch PWNED`;c "q" \\ #h'
TINY = [
    "-d", "501", "-f", "0", "-p", TINY_PLANS, "--epochs", "1", "--iterations-per-epoch", "3",
    "--val-iterations-per-epoch", "1", "--device", "cpu", "--no-final-validation",
]  # fmt: skip


def job_fields(job_id: str) -> dict[str, str]:
    """scontrol's one-line record of a job that is still known to the controller."""
    text = sh(["scontrol", "show", "job", "-o", job_id])
    fields = {}
    for key in ("JobName", "Comment", "MailUser", "StdOut"):
        # Values may hold spaces: each runs up to the next ' Key=' of scontrol's own.
        match = re.search(rf"\b{key}=(.*?)(?= [A-Z][A-Za-z:]*=|$)", text)
        fields[key] = match.group(1).rstrip(" ") if match else ""  # scontrol pads Comment with a space
    return fields


def known_jobs() -> list[str]:
    """Every job the controller holds, in any state, ended ones included."""
    return sh(["squeue", "-h", "-t", "all", "-o", "%i"]).split()


def hostile_env(nnunet_env: NnunetEnv, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config" / "nnslurm"
    config.mkdir(parents=True)
    comment = HOSTILE.replace("\\", "\\\\").replace('"', '\\"')
    (config / "config.toml").write_text(f'[profiles.default]\nsbatch_args = {{ comment = "{comment}" }}\n')
    return nnunet_env.env(nnUNet_n_proc_DA="0", XDG_CONFIG_HOME=str(tmp_path / "config"))


def assert_nothing_ran(*folders: Path) -> None:
    for folder in folders:
        assert not list(folder.rglob("PWNED")), folder


def test_hostile_values_through_submit(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    env = hostile_env(nnunet_env, tmp_path)
    log_dir = tmp_path / "log dir $(touch PWNED) 'q' `touch PWNED`"
    args = [
        "submit", "--executor", "slurm", "--wait", *TINY, "--time", "10", "--job-name", HOSTILE,
        "--log-dir", str(log_dir), "--sbatch-arg", "mail-type=FAIL", "--sbatch-arg", f"mail-user={HOSTILE}",
    ]  # fmt: skip
    waiting = Background.start(args, env, tmp_path / "submit.out", cwd=tmp_path)
    run_folder = nnunet_env.run_folder()
    job_id = wait_for_event(run_folder, "submitted", 60)["job_id"]
    idle_cluster.own.add(job_id)
    seen = job_fields(job_id)
    code, output = waiting.finish(300)
    assert code == 0, output
    assert seen["JobName"] == HOSTILE and seen["MailUser"] == HOSTILE  # the command line's values
    assert seen["Comment"] == HOSTILE  # the profile's value
    assert seen["StdOut"] == f"{log_dir}/{job_id}/{job_id}_0_log.out"
    assert (log_dir / job_id / f"{job_id}_0_log.out").is_file()
    assert (run_folder / "checkpoint_final.pth").is_file()
    assert_nothing_ran(tmp_path, log_dir)


def test_hostile_values_through_template(
    idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path
) -> None:
    env = hostile_env(nnunet_env, tmp_path)
    log_dir = tmp_path / "log dir $(touch PWNED) 'q'"
    log_dir.mkdir()
    script = tmp_path / "train.sbatch"
    rendered = nnslurm(
        ["template", "train", *TINY, "--time", "10", "--job-name", HOSTILE, "--log-dir", str(log_dir),
         "--sbatch-arg", "mail-type=FAIL", "--sbatch-arg", f"mail-user={HOSTILE}", "-o", str(script)],
        env,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    job_id = idle_cluster.sbatch(script, cwd=tmp_path)
    seen = job_fields(job_id)
    assert idle_cluster.wait_done(job_id, 300) == "COMPLETED"
    assert seen["JobName"] == HOSTILE and seen["MailUser"] == HOSTILE and seen["Comment"] == HOSTILE
    out = log_dir / f"nnslurm-{HOSTILE}-{job_id}.out"  # --output=.../nnslurm-%x-%j.out
    assert out.is_file(), sorted(p.name for p in log_dir.iterdir())
    assert f"job {job_id} start 0" in out.read_text()
    assert (nnunet_env.run_folder() / "checkpoint_final.pth").is_file()
    assert_nothing_ran(tmp_path, log_dir)


def test_sbatch_refusal_is_shown(idle_cluster: Cluster, nnunet_env: NnunetEnv, tmp_path: Path) -> None:
    env = nnunet_env.env()
    before = set(known_jobs())
    result = nnslurm(["submit", "--executor", "slurm", *TINY, "--partition", "no-such-partition"], env)
    assert result.returncode != 0
    assert "invalid partition specified" in result.stderr.lower()  # sbatch's own words
    assert "Traceback" not in result.stderr
    # sbatch answers once slurmctld has the job: anything the submission queued is known by now,
    # ended or not (MinJobAge keeps ended jobs for 5 minutes).
    assert set(known_jobs()) == before
    assert not nnunet_env.run_folder().exists()  # nothing started
