"""`python predict_hooks.py ARGS...`: `nnslurm ARGS...` whose writer tears the Nth segmentation.

For the SIGKILL test: nnU-Net's export (export_prediction_from_logits, what writes a case's
segmentation) runs normally for the first N-1 cases; for case N it writes the file, cuts it to
half its size (a write in progress: what a kill leaves of a file written in place), touches
NNSLURM_TEST_TORN_MARKER and sleeps, so that the test kills the process at a known instant
instead of at a random one. Test code only: the product has no such hook.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _install() -> None:
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
    _install()
    from nnslurm.cli import main

    sys.exit(main(sys.argv[1:]))
