"""Runs under $nnUNet_results: the event log (events), cut into segments (history), its
interruptions (interruptions), a run's state (state), finding runs (discovery), and the status
row and JSON schema of `nnslurm status` (status). Nothing here imports torch."""
