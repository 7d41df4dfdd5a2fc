"""Train state, optimizer, step, loop, checkpoints and metrics."""
