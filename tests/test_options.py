"""The options of train/submit/template: declared once, parsed into settings in one place, and
written back as `nnslurm train` flags that parse to the same settings."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from nnslurm import cli
from nnslurm.commands.demo import submit_command
from nnslurm.commands.options import (
    run_specs_from_args,
    training_job_from_args,
    training_jobs_from_args,
    training_options_from_args,
)
from nnslurm.commands.submit import make_submission
from nnslurm.commands.synthetic import PACED_TRAINER
from nnslurm.core.cluster import ClusterSettings
from nnslurm.core.config import RunSpec, TrainingOptions, TrainJob


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def parse_train_flags(words: list[str]) -> TrainingOptions:
    return training_options_from_args(parse(["train", "-d", "501", "-f", "0", *words]))


ROUND_TRIP_CASES = [
    TrainingOptions(),
    TrainingOptions(num_epochs=3, iterations_per_epoch=5, val_iterations_per_epoch=2),
    TrainingOptions(save_every_epochs=4, save_every_minutes=2.5, resume_from="best"),
    TrainingOptions(save_every_minutes=None, deterministic=True, seed=7, device="cpu"),
    TrainingOptions(final_validation=False, stop_signals=("USR2", "INT"), stop_deadline_s=3.5),
    TrainingOptions(max_requeues=0, resume_from="/runs/fold_0/checkpoint_latest.pth"),
    TrainingOptions(start_over=True),
    TrainingOptions(
        npz=True, validation_checkpoint="best", pretrained_weights=Path("/w/checkpoint_final.pth")
    ),
    TrainingOptions(validation_only=True, npz=True),
    TrainingOptions(end_time_safety_s=15.5, end_time_refresh_s=5.0),
    TrainingOptions(end_time_safety_s=None),
    TrainingOptions(num_gpus=2, device="cpu"),
]


@pytest.mark.parametrize("options", ROUND_TRIP_CASES)
def test_to_argv_parses_back_to_the_same_options(options: TrainingOptions) -> None:
    assert parse_train_flags(options.to_argv()) == options


def test_to_argv_names_only_what_differs_and_always_the_requeue_cap() -> None:
    assert TrainingOptions().to_argv() == ["--max-requeues", "20"]
    assert TrainingOptions(num_epochs=3, save_every_minutes=None).to_argv() == [
        "--epochs",
        "3",
        "--no-timed-saves",
        "--max-requeues",
        "20",
    ]


@pytest.mark.parametrize("command", ["submit", "template"])
def test_every_command_takes_the_training_flags_of_train(command: str) -> None:
    options = TrainingOptions(num_epochs=2, save_every_minutes=None, seed=3, stop_signals=("USR1", "TERM"))
    prefix = [command, "train"] if command == "template" else [command]
    args = parse([*prefix, "-d", "501", "-f", "0", *options.to_argv()])
    assert training_options_from_args(args) == options


def test_train_takes_one_fold_as_given() -> None:
    job = training_job_from_args(
        parse(["train", "-d", "501", "-f", "all", "-c", "2d", "-tr", "T", "-p", "P"])
    )
    assert job == TrainJob(RunSpec("501", "2d", "all", "T", "P"), TrainingOptions())


def test_submit_runs_every_configuration_for_every_fold() -> None:
    args = parse(
        ["submit", "-d", "501", "-c", "2d", "-c", "3d_fullres", "-c", "2d", "-f", "0,1", "--epochs", "4"]
    )
    jobs = training_jobs_from_args(args)
    assert [(job.run.configuration, job.run.fold) for job in jobs] == [
        ("2d", "0"),
        ("2d", "1"),
        ("3d_fullres", "0"),
        ("3d_fullres", "1"),
    ]
    assert {job.options for job in jobs} == {TrainingOptions(num_epochs=4)}


def test_template_train_defaults_to_fold_0() -> None:
    args = parse(["template", "train", "-d", "501"])
    assert [run.fold for run in run_specs_from_args(args, default_folds=["0"])] == ["0"]


def test_the_demo_shows_a_command_that_makes_its_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./nnslurm.toml
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    run = RunSpec("501", "3d_fullres", "0", PACED_TRAINER, "nnslurmTinyPlans")
    options = TrainingOptions(
        num_epochs=3,
        iterations_per_epoch=40,
        val_iterations_per_epoch=2,
        final_validation=False,
        device="cpu",
    )
    cluster = ClusterSettings(time_s=25, signal_delay_s=8, log_dir=str(tmp_path / "logs"))
    submission = make_submission([TrainJob(run, options)], cluster, executor="local")
    command = submit_command(submission)
    assert command[:2] == ["nnslurm", "submit"] and command[-1] == "--wait"
    args = parse(command[1:])
    assert training_jobs_from_args(args) == submission.jobs
    assert (args.executor, args.time, args.signal_delay) == ("local", 25, 8)
    assert Path(args.log_dir) == submission.log_dir


# --- nnUNetv2_train's command lines ---------------------------------------------------------------


def test_every_field_has_a_round_trip_case() -> None:
    """A new TrainingOptions field needs a flag, a to_argv word and a case above."""
    default = TrainingOptions()
    covered = {
        f.name
        for case in ROUND_TRIP_CASES
        for f in fields(case)
        if getattr(case, f.name) != getattr(default, f.name)
    }
    assert {f.name for f in fields(TrainingOptions)} == covered


def test_nnunet_positional_form_is_the_same_run() -> None:
    by_flags = training_job_from_args(
        parse(["train", "-d", "501", "-c", "2d", "-f", "1", "-tr", "T", "-p", "P"])
    )
    for argv in (
        ["train", "501", "2d", "1", "-tr", "T", "-p", "P"],
        ["train", "-tr", "T", "-p", "P", "501", "2d", "1"],
        ["train", "501", "-c", "2d", "-f", "1", "-tr", "T", "-p", "P"],
    ):
        assert training_job_from_args(parse(argv)) == by_flags, argv


def test_submit_takes_the_positional_form_too() -> None:
    jobs = training_jobs_from_args(parse(["submit", "501", "2d", "0-1", "--epochs", "2"]))
    assert [(job.run.dataset, job.run.configuration, job.run.fold) for job in jobs] == [
        ("501", "2d", "0"),
        ("501", "2d", "1"),
    ]
    jobs = training_jobs_from_args(parse(["submit", "501", "3d_fullres", "--cross-validation"]))
    assert [job.run.fold for job in jobs] == ["0", "1", "2", "3", "4"]


def test_nnunet_validation_flags_and_pretrained_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["train", "501", "3d_fullres", "0", "--npz", "--val_best", "-pretrained_weights", "w.pth"]
    options = training_job_from_args(parse(argv)).options
    assert (options.npz, options.validation_only, options.validation_checkpoint) == (True, False, "best")
    assert options.pretrained_weights == tmp_path / "w.pth"  # absolute: a job may start elsewhere
    options = training_job_from_args(parse(["train", "501", "3d_fullres", "0", "--val", "--npz"])).options
    assert (options.npz, options.validation_only, options.validation_checkpoint) == (True, True, "final")


def test_num_gpus_is_parsed_as_nnunet_spells_it() -> None:
    assert (
        training_job_from_args(parse(["train", "501", "3d_fullres", "0", "-num_gpus", "2"])).options.num_gpus
        == 2
    )


def test_nnunet_single_dash_spellings_and_continue_flag() -> None:
    plain = training_job_from_args(parse(["train", "501", "3d_fullres", "0", "--device", "cpu"]))
    nnunet = parse(["train", "501", "3d_fullres", "0", "-device", "cpu", "--c", "-num_gpus", "1"])
    assert training_job_from_args(nnunet) == plain  # --c: nnslurm always resumes


@pytest.mark.parametrize("command", [["train"], ["submit", "--dry-run"]])
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--disable_checkpointing"], ["--disable_checkpointing is refused", "lose the training"]),
        (["-num_gpus", "0"], ["-num_gpus must be 1 or more"]),
        *[
            ([flag, "--no-final-validation"], [f"{flag} and --no-final-validation contradict", "HINT"])
            for flag in ("--val", "--val_best", "--npz")
        ],
        *[
            (["--val", *flags], [f"{flags[0]} is about training, and --val trains nothing", "HINT"])
            for flags in (["-pretrained_weights", "/w.pth"], ["--start-over"], ["--resume-from", "best"])
        ],
        (["-d", "502"], ["the dataset is given twice: '501' and -d 502"]),
        (["-f", "1"], ["the fold is given twice"]),
    ],
)
def test_refused_with_a_reason(
    command: list[str],
    extra: list[str],
    words: list[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    assert cli.main([*command, "501", "3d_fullres", "0", *extra]) == 2
    for word in words:
        assert word in caplog.text
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["train", "-f", "0"], "no dataset given"), (["train", "501", "3d_fullres"], "no fold given")],
)
def test_the_run_must_be_named(argv: list[str], message: str, caplog: pytest.LogCaptureFixture) -> None:
    assert cli.main(argv) == 2
    assert message in caplog.text
