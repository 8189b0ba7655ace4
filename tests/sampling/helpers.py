"""Shared fixtures for the sampler tests: a smooth GMM for convergence orders, error measures."""

import math

import numpy as np
import torch

from diffusekit.targets import GaussianMixture


def smooth_gmm():
    """Wide components, so that asymptotic convergence starts at small step counts."""
    return GaussianMixture.random(dim=3, components=3, seed=2, mean_std=1.0, std_range=(0.3, 0.6))


def rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def fitted_order(steps, errors):
    """Slope of -log(error) against log(steps)."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def noise(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


__all__ = ["smooth_gmm", "rms", "fitted_order", "noise", "math"]
