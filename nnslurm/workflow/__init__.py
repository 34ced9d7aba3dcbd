"""nnU-Net's workflow after (and before) training, as stoppable stages of one chain of SLURM jobs:

  preprocess (plan + preprocess, CPU)  ->  training arrays (jobs/)  ->  find best (CPU)  ->  predict

`stage` is the stop path every non-training stage shares (units of work with a boundary between
them: a case, a configuration); `plan` turns one `nnslurm submit` into the stages and their
dependencies (pure); `chain` submits them and records the chain for status and cancel.
"""
