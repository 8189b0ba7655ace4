"""Training infrastructure: EMA, optimizers and LR schedules, checkpoints (the loop arrives with issue 3)."""
