"""Training: the optimiser, the training state, checkpoints, restoring a run, the trainer, its
callbacks and the process-level runtime settings."""
