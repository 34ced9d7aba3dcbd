"""nnslurm: interruption-proof nnU-Net v2 training on SLURM clusters."""

__version__ = "0.1.0"

# Exit status of `nnslurm train` when it stopped on a signal after writing a complete
# checkpoint: EX_TEMPFAIL from sysexits.h, "try again later" = "resume me".
EXIT_RESUMABLE = 75
