"""diffusekit: diffusion and flow-matching models on one exact Gaussian-path core."""

__version__ = "0.1.0"
