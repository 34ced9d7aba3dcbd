"""`python cli_hooks.py ARGS...`: `nnslurm ARGS...` with test hooks that make an instant known.

Test code only: the product has no such hooks. Each is on when its variable is set:

NNSLURM_TEST_SIGNAL_ON_LOG=TEXT: the first log record whose message contains TEXT makes the process
send itself NNSLURM_TEST_SIGNAL (default USR1), right there, in the thread that logged it. A stop
then arrives at a known point of the work (while nnU-Net computes the fingerprint, right after the
first case was written) instead of wherever a signal from outside happens to land.

NNSLURM_TEST_TEAR_CASE=N (with NNSLURM_TEST_TORN_MARKER=PATH): for the SIGKILL test, nnU-Net's
export (export_prediction_from_logits, what writes a case's segmentation) runs normally for the
first N-1 cases; for case N it writes the file, cuts it to half its size (a write in progress: what
a kill leaves of a file written in place), touches the marker and sleeps, so that the test kills
the process at a known instant instead of at a random one.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


class _SignalOnLog(logging.Handler):
    def __init__(self, text: str, signal_name: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.text, self.signal = text, getattr(signal, "SIG" + signal_name)
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and self.text in record.getMessage():
            self.fired = True
            os.kill(os.getpid(), self.signal)


def _signal_on_log() -> None:
    text = os.environ.get("NNSLURM_TEST_SIGNAL_ON_LOG")
    if text:  # on nnslurm's logger: whatever configures the root logger later, its records pass here
        logging.getLogger("nnslurm").addHandler(
            _SignalOnLog(text, os.environ.get("NNSLURM_TEST_SIGNAL", "USR1"))
        )


def _tear_a_case() -> None:
    if not os.environ.get("NNSLURM_TEST_TEAR_CASE"):
        return
    import nnunetv2.inference.predict_from_raw_data as predict_module

    real = predict_module.export_prediction_from_logits
    tear_at = int(os.environ["NNSLURM_TEST_TEAR_CASE"])
    marker = Path(os.environ["NNSLURM_TEST_TORN_MARKER"])
    calls = [0]

    def export(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        calls[0] += 1
        if calls[0] < tear_at:
            return
        truncated: str = args[5]  # output_file_truncated
        written = [
            p for p in Path(truncated).parent.iterdir() if p.name.startswith(Path(truncated).name + ".")
        ]
        for path in written:
            with open(path, "r+b") as stream:
                stream.truncate(max(1, path.stat().st_size // 2))
        marker.write_text("\n".join(str(p) for p in written))
        time.sleep(600)

    predict_module.export_prediction_from_logits = export


if __name__ == "__main__":
    _signal_on_log()
    _tear_a_case()
    from nnslurm.cli import main

    sys.exit(main(sys.argv[1:]))
