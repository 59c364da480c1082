"""Training loops and their machinery (distributed setup, checkpoints, optimisers)."""
