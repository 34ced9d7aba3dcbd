"""Driving the real cluster from tests: submit, preempt, requeue, cancel, and read what happened."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import PACED, TINY_PLANS, NnunetEnv, nnslurm, patience, skip_unless_required, wait_for

from nnslurm.commands.synthetic import MIN_ITERATION_ENV, MIN_ITERATION_RESUMED_ENV
from nnslurm.slurm import commands as slurm

DONE_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
)

# Every scenario trains with a floor of MIN_ITERATION_S per iteration (the paced trainer), so that
# training outlasts what each scenario waits for on any machine, however fast: after the epoch-0
# checkpoint, 120 iterations (>= 30 s) remain, more than the 20 s GraceTime before a preempted job
# hears TERM; 150 iterations (>= 37 s) outlast the training a 1-minute start has before its warning.
# Only the start that is to be interrupted is paced: once the trainer has resumed from a checkpoint
# it goes at full speed (NNSLURM_MIN_ITERATION_S_RESUMED=0), unless a scenario needs a second stop.
EPOCHS, ITERATIONS = 3, 60
LONG_EPOCHS, LONG_ITERATIONS = 3, 50
MIN_ITERATION_S = "0.25"
TRAINER = "nnUNetTrainerPaced"
RUN = [  # the fold: paced_training()
    "-d",
    "501",
    "-p",
    TINY_PLANS,
    "--val-iterations-per-epoch",
    "2",
    *PACED,
    "--device",
    "cpu",
    "--no-final-validation",
    "--save-every-minutes",
    "60",
]


# Every wait here is for an event, with a limit only against hangs, scaled by the suite's one
# patience factor (support.patience, NNSLURM_TEST_PATIENCE). The SLURM tests run beside the rest of
# the suite (scripts/run-tests), so their jobs share the CPUs with other trainings: measured, a
# paced epoch took 140 s instead of 15 s then.


def paced_training(epochs: int, iterations: int, fold: str = "0") -> list[str]:
    return [*RUN, "-f", fold, "--epochs", str(epochs), "--iterations-per-epoch", str(iterations)]


def job_env(nnunet_env: NnunetEnv, pace_later_starts: bool = False) -> dict[str, str]:
    """The jobs' environment. Later starts (after a resume) unpaced unless `pace_later_starts`:
    only a scenario that must stop a resumed start too (the requeue cap) pays for its pace."""
    # Single-process augmentation: two cores, and the node is shared by two jobs in some tests.
    later = MIN_ITERATION_S if pace_later_starts else "0"
    return nnunet_env.env(
        nnUNet_n_proc_DA="0", **{MIN_ITERATION_ENV: MIN_ITERATION_S, MIN_ITERATION_RESUMED_ENV: later}
    )


def template_setup(env: dict[str, str]) -> list[str]:
    """The template's setup block: sbatch runs the script with the submitting shell's environment,
    which is pytest's, not the test's; only the nnUNet_* variables are exported by the template."""
    paces = " ".join(f"{name}={env[name]}" for name in (MIN_ITERATION_ENV, MIN_ITERATION_RESUMED_ENV))
    return ["--setup", f"export PYTHONPATH={env['PYTHONPATH']} {paces}"]


def render_template(env: dict[str, str], folder: Path, *train: str) -> Path:
    """`nnslurm template train` for this run, written to FOLDER/train-fold<N>.sbatch."""
    fold = train[train.index("-f") + 1]
    script = folder / f"train-fold{fold}.sbatch"
    rendered = nnslurm(
        ["template", "train", *train, "--log-dir", str(folder), *template_setup(env), "-o", str(script)], env
    )
    assert rendered.returncode == 0, rendered.stderr
    return script


def submit_args(log_dir: Path, *extra: str, wait: bool = True) -> list[str]:
    return ["submit", "--executor", "slurm", "--log-dir", str(log_dir), *(["--wait"] if wait else []), *extra]


def report(name: str, started: float, **facts: object) -> None:
    """One line per scenario in the test output (-s or the captured log): what was measured."""
    details = " ".join(f"{key}={value}" for key, value in facts.items())
    print(f"\n[nnslurm scenario] {name}: wall {time.time() - started:.0f} s {details}", file=sys.stderr)


def sh(argv: list[str], timeout: float = 30) -> str:
    return slurm.run_command(argv, timeout).stdout


def _quiet(argv: list[str]) -> str:
    """A command's output, or why there is none: for diagnostics, which must not fail themselves."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"$ {' '.join(argv)}: {error}"
    return f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}"


DEV_CLUSTER = Path(__file__).parents[2] / "scripts" / "slurm-dev-cluster"


def dev_cluster(*args: str) -> None:
    """One `scripts/slurm-dev-cluster` command that changes the cluster (root only)."""
    if os.geteuid() != 0 or not DEV_CLUSTER.is_file():
        skip_unless_required(f"`slurm-dev-cluster {' '.join(args)}` needs root and {DEV_CLUSTER}")
    subprocess.run([str(DEV_CLUSTER), *args], check=True, capture_output=True, timeout=60)


def config_value(key: str) -> str:
    """One setting of the running controller (`scontrol show config`), e.g. "10 sec" for KillWait."""
    found = re.search(rf"^{key}\s*=\s*(.*)$", sh(["scontrol", "show", "config"]), re.MULTILINE)
    assert found, f"scontrol show config has no {key}"
    return found.group(1).strip()


@dataclass
class Cluster:
    cpus: int  # CPUs of the (single) node: a job asking for all of them can be preempted by any other
    own: set[str] = field(default_factory=set)  # job ids the current test submitted

    @classmethod
    def discover(cls) -> Cluster:
        cpus = int(sh(["sinfo", "-h", "-o", "%c"]).split()[0].rstrip("+"))
        return cls(cpus=cpus)

    def queue(self) -> list[str]:
        return sh(["squeue", "-h", "-o", "%i"]).split()

    def wait_idle(self, timeout: float) -> None:
        """Other people's jobs on a shared dev cluster would delay ours and share our CPUs: wait
        until the queue is empty, and fail naming the jobs still there after `timeout` (patient)."""

        def idle() -> bool:
            return not self.queue()

        try:
            wait_for(idle, patience(timeout), "the cluster's queue to empty", interval=2.0)
        except AssertionError as error:
            left = sh(["squeue", "-h", "-o", "%i %u %P %T %M %j"])
            raise AssertionError(
                f"{error}; still queued (JOBID USER PARTITION STATE TIME NAME):\n{left}"
            ) from None

    def cancel_own(self) -> None:
        """scancel every job the test submitted that SLURM still holds (pending, running, ending)."""
        queued = {q.split("_")[0] for q in self.queue()}
        for job_id in sorted(self.own):
            if job_id.split("_")[0] in queued:
                subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=False)
        self.own.clear()

    def explain(self, job_ids: list[str], log_lines: int = 60) -> str:
        """What SLURM says about these jobs now, and the last lines of the controller's log naming
        them (a pending job's Reason, a launch failure, a drained node): for a failed test's report."""
        parts = [_quiet(["sinfo", "-N", "-o", "%N %T %E"])]
        for job_id in job_ids:
            parts.append(_quiet(["scontrol", "show", "job", job_id]))
        log = Path(config_value("SlurmctldLogFile"))
        if log.is_file():
            named = re.compile("|".join(rf"\b(JobId=|job ){re.escape(j)}\b" for j in job_ids) + r"|node")
            lines = [line for line in log.read_text(errors="replace").splitlines() if named.search(line)]
            parts.append(f"{log} (lines naming the jobs or a node):\n" + "\n".join(lines[-log_lines:]))
        return "\n\n".join(parts)

    def wait_gone(self, job_id: str, timeout: float) -> None:
        """Until SLURM holds the job no more: not pending, running or completing (squeue lists
        none of them), so nothing can requeue or restart it any longer. A job requeued after all
        would be PENDING again and keep this waiting: the wait fails and says so."""
        base = job_id.split("_")[0]

        def gone() -> bool:
            return base not in {queued.split("_")[0] for queued in self.queue()}

        wait_for(gone, patience(timeout), f"job {job_id} to leave the queue (ended for good)", interval=1.0)

    def preempt(self, cpus: int | None = None, seconds: int = 2) -> str:
        """A `high` job that needs CPUs of the node (all of them unless told): SLURM preempts a
        `low` job for it."""
        cpus = self.cpus if cpus is None else cpus
        job_id = sh(
            [
                "sbatch",
                "--parsable",
                "-p",
                "high",
                "-c",
                str(cpus),
                "-J",
                "nnslurm-preemptor",
                "-o",
                "/dev/null",
                "--time=2",
                "--wrap",
                f"sleep {seconds}",
            ]
        ).strip()
        self.own.add(job_id)
        return job_id

    def sbatch(self, script: Path, cwd: Path) -> str:
        result = subprocess.run(
            ["sbatch", "--parsable", str(script)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        job_id = result.stdout.strip().split(";")[0]
        self.own.add(job_id)
        return job_id

    def states(self, job_id: str) -> list[str]:
        """Every accounting record of the job, oldest first (one per start: REQUEUED, PREEMPTED, ...)."""
        out = sh(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", job_id])
        return [line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line]

    def ended_states(self, job_id: str, timeout: float = 60) -> list[str]:
        """states() once accounting has recorded the end: `--wait` can return before slurmdbd has
        the last record (measured: RUNNING for a few seconds after the job ended FAILED)."""
        self.wait_done(job_id, timeout)
        return self.states(job_id)

    def wait_done(self, job_id: str, timeout: float) -> str:
        """Until the job ended for good. Requeued jobs are not released early (`scontrol update
        StartTime=now`): measured, a job started before cred_expire has passed since its last run
        ended is killed as "non-startable: Job credential revoked" and ends FAILED."""

        def finished() -> str | None:
            states = self.states(job_id)
            return states[-1] if states and states[-1] in DONE_STATES else None

        return wait_for(finished, patience(timeout), f"job {job_id} to end", interval=1.0)


def events(run_folder: Path) -> list[dict[str, Any]]:
    path = run_folder / "nnslurm_events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kinds(run_folder: Path, kind: str) -> list[dict[str, Any]]:
    return [record for record in events(run_folder) if record["event"] == kind]


def wait_for_event(
    run_folder: Path, kind: str, timeout: float, count: int = 1, **match: Any
) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        hits = [r for r in kinds(run_folder, kind) if all(r.get(k) == v for k, v in match.items())]
        return hits[count - 1] if len(hits) >= count else None

    return wait_for(
        found, patience(timeout), f"event {kind!r} #{count} {match or ''} in {run_folder}", interval=0.5
    )


RUNNING: list[subprocess.Popen[str]] = []  # background submits, stopped when their test ends


def stop_background() -> None:
    while RUNNING:
        process = RUNNING.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@dataclass
class Background:
    """`nnslurm submit ... --wait` running while the test preempts, requeues or cancels its job."""

    process: subprocess.Popen[str]
    out: Path

    @classmethod
    def start(cls, args: list[str], env: dict[str, str], out: Path, cwd: Path | None = None) -> Background:
        handle = out.open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "nnslurm", *args],
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
        RUNNING.append(process)
        return cls(process, out)

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=patience(timeout))
        except subprocess.TimeoutExpired as error:
            self.process.kill()
            raise AssertionError(
                f"nnslurm submit --wait did not return in {timeout:.0f} s:\n{self.out.read_text()}"
            ) from error
        return code, self.out.read_text()


def position(record: dict[str, Any], iterations_per_epoch: int) -> int:
    return int(record["epoch"]) * iterations_per_epoch + int(record["iteration"])


def check_story(run_folder: Path, iterations_per_epoch: int, epochs: int) -> dict[str, Any]:
    """Final checkpoint, epochs reached, every stop resumed where it stopped (≤ 1 iteration redone)."""
    log = events(run_folder)
    names = [record["event"] for record in log]
    assert (run_folder / "checkpoint_final.pth").is_file(), names
    assert names[-1] == "finished", names
    assert log[-1]["epoch"] == epochs
    stops = [r for r in log if r["event"] == "stopped"]
    resumes = [r for r in log if r["event"] == "resumed"]
    assert len(resumes) >= len(stops), names
    redone = []
    for stop in stops:
        after = [r for r in resumes if r["time"] > stop["time"]]
        assert after, f"stop at {stop} never resumed: {names}"
        lost = position(stop, iterations_per_epoch) - position(after[0], iterations_per_epoch)
        redone.append(lost)
        assert 0 <= lost <= 1, f"resumed {lost} iterations before the stop: {stop} -> {after[0]}"
    return {"stops": len(stops), "redone": redone, "events": names}
