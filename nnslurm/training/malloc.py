"""Fixed glibc malloc thresholds for the training process.

glibc adapts its mmap threshold to the largest block freed so far: a training step's activation
tensors then come either from the heap (pages already faulted in) or from fresh mmaps (every page
faulted and zeroed again, every step), depending on what the process happened to free before.
Measured here (benchmarks/throughput.py, nnUNetPlans on one CPU): nnslurm's background checkpoint
buffers tipped that state so that train_step cost 3-9 % more CPU than in plain nnU-Net; with the
thresholds fixed, both run the same and both ~10 % faster. So the training process fixes them,
as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would at start-up: blocks below 32 MiB come
from the heap, and freed heap memory is kept for reuse instead of being returned to the system
(the resident size stays at its peak, as a training process's does anyway).
NNSLURM_MALLOC_TUNING=0 leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

DISABLE_ENV = "NNSLURM_MALLOC_TUNING"
M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum for the mmap threshold on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def fix_malloc_thresholds() -> bool:
    """True if set; False without glibc (macOS, musl) or when switched off."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    logger.debug("malloc thresholds fixed: %s", done)
    return done
