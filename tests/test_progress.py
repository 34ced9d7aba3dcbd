"""Progress output: a live bar on a terminal only; one plain line per epoch everywhere (SLURM .out)."""

from __future__ import annotations

import io

import pytest
from support import TINY_TRAINING, NnunetEnv, nnslurm, run_on_a_terminal

from nnslurm.training.progress import TrainingProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_only_on_a_terminal(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("NNSLURM_NO_PROGRESS", raising=False)
    plain, terminal = io.StringIO(), Terminal()
    for stream in (plain, terminal):
        with TrainingProgress(epochs=2, iterations_per_epoch=3, stream=stream) as progress:
            progress.epoch(1, start_iteration=1)  # a resumed run starts mid-epoch
            progress.advance()
    assert plain.getvalue() == ""
    shown = terminal.getvalue()
    assert "epoch 2/2" in shown and "5/6" in shown  # the run: 3 + 1 done before, 1 now


def test_bar_can_be_switched_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NNSLURM_NO_PROGRESS", "1")
    terminal = Terminal()
    with TrainingProgress(epochs=2, iterations_per_epoch=3, stream=terminal) as progress:
        progress.epoch(0, 0)
        progress.advance()
    assert terminal.getvalue() == ""


@pytest.mark.nnunet  # real training
def test_terminal_gets_a_live_bar_and_a_log_file_gets_lines(nnunet_env: NnunetEnv) -> None:
    env = nnunet_env.env()
    env.pop("NNSLURM_NO_PROGRESS", None)
    code, shown = run_on_a_terminal(["train", *TINY_TRAINING, "--no-final-validation"], env)
    assert code == 0, shown[-3000:]
    assert "epoch 3/3" in shown and "/15" in shown  # the bar: this epoch, and the run's 15 iterations
    assert "epoch 3/3 done:" in shown  # the per-epoch line is there too

    # Not a terminal (a SLURM .out file, a pipe): the same lines, no bar and no carriage returns.
    second = nnunet_env.results / "second"
    second.mkdir()
    redirected = nnunet_env.env(nnUNet_results=str(second))
    plain = nnslurm(["train", *TINY_TRAINING, "--no-final-validation"], redirected)
    assert plain.returncode == 0, plain.stderr[-3000:]
    output = plain.stdout + plain.stderr
    assert "\r" not in output
    epoch_lines = [line for line in output.splitlines() if " done: " in line and "it/s" in line]
    assert len(epoch_lines) == 3 and "epoch 3/3 done:" in epoch_lines[-1]
