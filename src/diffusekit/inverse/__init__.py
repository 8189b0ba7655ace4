"""Inverse problems with a diffusion prior."""
