"""-pretrained_weights at submission: the file is checked before anything is queued, without torch.

Apart from nnslurm.training.pretrained (which loads the weights through nnU-Net, and records them)
so that `nnslurm submit`, `template` and `--help` import neither torch nor nnU-Net.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

from nnslurm.core.errors import UsageError

WEIGHTS_KEY = "network_weights"  # what nnU-Net's load_pretrained_weights reads from the file
WEIGHTS_HINT = "pass the checkpoint of an nnU-Net training (e.g. .../fold_0/checkpoint_final.pth)."


def check_weights_file(path: Path) -> None:
    """At submission, before anything is queued: the file exists, is a file, and is a torch
    checkpoint (a complete zip archive) whose pickle names `network_weights`.

    Cheap and safe on a login node: no torch import and no unpickling (pickletools only walks the
    pickle's opcodes, so nothing in the file runs); the tensors are not read. Whether the weights
    fit the network is nnU-Net's check, at the job's fresh start.
    """
    flag = f"-pretrained_weights {path}"
    if not path.exists():
        raise UsageError(f"{flag}: no such file.", hint=WEIGHTS_HINT)
    if not path.is_file():
        raise UsageError(f"{flag}: not a file.", hint=WEIGHTS_HINT)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [
                name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"
            ]
            data = archive.read(pickles[0]) if pickles else b""
    except OSError as error:
        raise UsageError(f"{flag}: {error.strerror or error}.", hint=WEIGHTS_HINT) from error
    except zipfile.BadZipFile as error:
        raise UsageError(
            f"{flag}: not a torch checkpoint (not a complete zip archive: truncated?).", hint=WEIGHTS_HINT
        ) from error
    try:
        names = {arg for _, arg, _ in pickletools.genops(io.BytesIO(data)) if isinstance(arg, str)}
    except ValueError as error:  # a torn pickle
        raise UsageError(f"{flag}: its pickle data is damaged ({error}).", hint=WEIGHTS_HINT) from error
    if WEIGHTS_KEY not in names:
        raise UsageError(
            f"{flag}: not nnU-Net weights (a torch file without {WEIGHTS_KEY!r}).", hint=WEIGHTS_HINT
        )
