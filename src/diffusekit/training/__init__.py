"""Training: the loop, its EMA, optimizers and LR schedules, evaluation during training and the run directory."""
