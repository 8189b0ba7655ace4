"""Networks: ``forward(x, noise_cond, cond=None) -> F``. They know nothing about diffusion."""
