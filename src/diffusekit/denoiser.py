"""Denoiser: network + schedule + parameterization -> ``denoise(x_t, t, cond=None) -> x0_hat``.

``cond`` is the mapping of named conditions (:mod:`diffusekit.conditions`; None: none), handed to the
network unchanged as ``network(x_in, c_noise, cond)``.

The network only ever sees a well-scaled input and a noise code (EDM, Karras et al. 2022, section 5 and
Table 1, generalised to any Gaussian path):

- input scaling ``c_in = 1 / sqrt(sigma^2 + sigma_data^2 alpha^2)``: unit variance for data of std
  sigma_data at every t (EDM's ``1 / sqrt(ve_sigma^2 + sigma_data^2)`` applied to x_t / alpha);
  ``input_scaling="none"`` passes x_t unchanged (DDPM-style VP networks);
- noise code ``c_noise``: ``"logsnr"`` (default) is ``-logsnr / 8``, i.e. EDM's ``ln(ve_sigma) / 4``, with
  log-SNR clamped to +-30 so that t = 0 and zero-SNR t = 1 have finite codes; ``"t"`` is ``1000 t``
  (DDPM's timestep scale); ``"timestep"`` is ``T t - 1`` on a discrete schedule (the integer timestep
  models were trained on).

The raw output F becomes x0_hat through the parameterization (``x0_hat = c_skip x_t + c_out F``).
``network_output`` is what the loss regresses; ``forward`` is what the samplers call.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ._tensors import append_dims
from .conditions import Conditions
from .parameterizations import Parameterization
from .schedules import DiscreteVP, Schedule, ScheduleAt

__all__ = ["Denoiser", "NOISE_CONDITIONINGS"]

NOISE_CONDITIONINGS = ("logsnr", "t", "timestep")
_LOGSNR_CLAMP = 30.0


class Denoiser(nn.Module):
    def __init__(self, network: nn.Module, schedule: Schedule, parameterization: Parameterization, *,
                 sigma_data: float = 0.5, noise_conditioning: str = "logsnr", input_scaling: str = "edm"):
        super().__init__()
        if noise_conditioning not in NOISE_CONDITIONINGS:
            raise ValueError(f"unknown noise_conditioning {noise_conditioning!r}; "
                             f"choose one of {', '.join(NOISE_CONDITIONINGS)}")
        if noise_conditioning == "timestep" and not isinstance(schedule, DiscreteVP):
            raise ValueError("noise_conditioning='timestep' needs a discrete schedule "
                             "(schedules.get('linear_vp', discrete=True))")
        if input_scaling not in ("edm", "none"):
            raise ValueError(f"unknown input_scaling {input_scaling!r}; choose 'edm' or 'none'")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if parameterization.name in ("eps", "score") and float(schedule(1.0).alpha) == 0.0:
            warnings.warn(f"{parameterization.name}-prediction cannot give x0 at zero SNR (t = 1 of {schedule!r}); "
                          "sample from t < 1 or use v / velocity / x0 / edm (Lin et al. 2023)", stacklevel=2)
        self.network, self.schedule, self.parameterization = network, schedule, parameterization
        self.sigma_data = float(sigma_data)
        self.noise_conditioning, self.input_scaling = noise_conditioning, input_scaling

    def at(self, t: Tensor) -> ScheduleAt:
        """The schedule at t in float64 (coefficients are cast to the data's dtype where applied)."""
        return self.schedule(t.detach().to(torch.float64))

    def c_in(self, at: ScheduleAt) -> Tensor:
        if self.input_scaling == "none":
            return torch.ones_like(at.alpha)
        return torch.rsqrt(at.sigma**2 + self.sigma_data**2 * at.alpha**2)

    def c_noise(self, at: ScheduleAt) -> Tensor:
        if self.noise_conditioning == "logsnr":
            return -at.logsnr.clamp(-_LOGSNR_CLAMP, _LOGSNR_CLAMP) / 8
        if self.noise_conditioning == "t":
            return 1000 * at.t
        return self.schedule.timestep_index(at.t)

    def network_output(self, x_t: Tensor, t: Tensor, cond: Conditions | None = None) -> Tensor:
        """The raw network output F at (x_t, t); ``t`` has shape [batch]."""
        return self._network_output(x_t, self.at(t), cond)

    def _network_output(self, x_t: Tensor, at: ScheduleAt, cond: Conditions | None) -> Tensor:
        # at least float32: a bf16 noise code would blur nearby noise levels together
        code_dtype = torch.promote_types(x_t.dtype, torch.float32)
        noise_code = self.c_noise(at).to(device=x_t.device, dtype=code_dtype)
        return self.network(append_dims(self.c_in(at), x_t) * x_t, noise_code, cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditions | None = None) -> Tensor:
        """x0_hat at (x_t, t)."""
        at = self.at(t)  # evaluated once for both the network's input and the output conversion
        output = self._network_output(x_t, at, cond)
        return self.parameterization.to_x0(output.to(x_t.dtype), x_t, at)
