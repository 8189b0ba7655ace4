"""The whole chain on a tiny network: Denoiser + DiffusionLoss learn, and the samplers run on the result."""

import pytest
import torch

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit.denoiser import Denoiser
from diffusekit.loss import DiffusionLoss
from diffusekit.networks.dit import DiT
from diffusekit.networks.unet import UNet
from diffusekit.sampling import sample, timesteps


@pytest.mark.parametrize("make_network", [
    lambda: UNet.from_preset("tiny", img_resolution=8, in_channels=1, out_channels=1, num_classes=2),
    lambda: DiT.from_name("tiny", img_resolution=8, in_channels=1, num_classes=2),
], ids=["unet", "dit"])
def test_tiny_network_learns_and_samples(make_network):
    torch.manual_seed(0)
    network = make_network().float()
    schedule, param = schedules.get("rectified_flow"), parameterizations.get("velocity")
    denoiser = Denoiser(network, schedule, param)
    loss_fn = DiffusionLoss(schedule, param, time_sampling.get("logit_normal", "stratified"), weighting.get("unit"))
    # two classes: a bright square in the top-left or bottom-right corner
    x0 = -torch.ones(32, 1, 8, 8, dtype=torch.float32)
    labels = torch.arange(32) % 2
    x0[labels == 0, :, :4, :4] = 1
    x0[labels == 1, :, 4:, 4:] = 1
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        loss = loss_fn(denoiser.network_output, x0, generator=g, cond={"labels": labels}).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
    with torch.no_grad():
        noise = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float32)
        x = sample(denoiser, noise, timesteps(schedule, 10, "uniform"), schedule, "dpmpp_2m",
                   cond={"labels": torch.tensor([0, 1, 0, 1])})
    assert x.shape == (4, 1, 8, 8) and bool(torch.isfinite(x).all())
