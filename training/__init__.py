"""Training: optimiser, train state, the jitted steps, checkpoints, writers and the loop."""
