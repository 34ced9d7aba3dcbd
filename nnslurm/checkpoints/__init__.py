"""Checkpoint files: atomic writes, background writes, validation and the choice of where to resume.

- fileformat: what nnslurm adds to nnU-Net's files (META_KEY, FORMAT_VERSION, weights checksums)
- atomic: temp file, fsync, replace; the temp files a killed write leaves
- host_copies: the reused (pinned) host buffers a snapshot is copied into
- writer: completes a snapshot (checksum) and writes it, in a thread
- read: load one file safely and verify it, or say why it is unusable (damaged or unreadable here)
- choose: the newest valid file of a run folder that belongs to this run, or refuse / start over

The names below are the package's public face; the rest of nnslurm imports them from here.
"""

from nnslurm.checkpoints.atomic import atomic_torch_save, remove_stale_temp_files, wait_for_discards
from nnslurm.checkpoints.choose import (
    NoUsableCheckpointError,
    candidates,
    check_belongs,
    choose_checkpoint,
    newest_valid,
)
from nnslurm.checkpoints.fileformat import FORMAT_VERSION, META_KEY, legacy_weights_checksum, weights_checksum
from nnslurm.checkpoints.host_copies import HostCopies
from nnslurm.checkpoints.read import (
    CheckpointInfo,
    RunIdentity,
    UnreadableCheckpointError,
    Unusable,
    read_checkpoint,
    safe_load,
)
from nnslurm.checkpoints.writer import BackgroundWriter, write_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "META_KEY",
    "BackgroundWriter",
    "CheckpointInfo",
    "HostCopies",
    "NoUsableCheckpointError",
    "RunIdentity",
    "UnreadableCheckpointError",
    "Unusable",
    "atomic_torch_save",
    "candidates",
    "check_belongs",
    "choose_checkpoint",
    "legacy_weights_checksum",
    "newest_valid",
    "read_checkpoint",
    "remove_stale_temp_files",
    "safe_load",
    "wait_for_discards",
    "weights_checksum",
    "write_checkpoint",
]
