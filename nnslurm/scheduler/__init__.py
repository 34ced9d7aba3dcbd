"""SLURM: the one subprocess seam and its parsers (commands), a job's view of itself (environment),
what a stop means (policy, pure), and what nnslurm does after one (after_stop)."""
