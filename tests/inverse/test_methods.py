"""The inverse-problem methods against the exact posterior of a Gaussian-mixture prior (GaussianMixture.posterior),
the measurement steps against their definitions, RePaint's published schedule, and every bad input."""

import math

import pytest
import torch

from diffusekit.errors import InverseProblemError
from diffusekit.inverse import METHODS, method_options, solve
from diffusekit.inverse.methods import repaint_path
from diffusekit.inverse.operators import Downsample, Inpaint, Matrix
from diffusekit.sampling import SAMPLERS, sample, timesteps
from diffusekit.schedules import Cosine, RectifiedFlow
from diffusekit.targets import GaussianMixture, sliced_wasserstein

SCHEDULE = Cosine()
RING = GaussianMixture.ring2d()
# step sizes for the gradient methods on the ring's noisy projection (a coarse sweep, not tuned finely)
SETTINGS = {"dps": {"scale": 0.2}, "mcg": {"scale": 0.03}, "reconstruction": {"weight": 3.0},
            "repaint": {"jump_length": 5, "resamples": 3}, "smc": {"particles": 32},
            "ccdf": {"t0": 0.7, "consistency": "replacement"}}


def _problem(noisy: bool, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_true = RING.sample(1, g)
    if noisy:
        A = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
        op = Matrix(A, sigma_y=0.1)
        y = op.measure(x_true, g)
        post = RING.posterior(A, y[0], 0.1)
    else:
        op = Inpaint(torch.tensor([True, False]))
        y = op.forward(x_true)
        post = RING.posterior(torch.tensor([[1.0, 0.0]]), y[0, :1], 0.0)
    return op, y.expand(n, *y.shape[1:]).clone(), post, g


def _solve(method, op, y, g, steps=100, sampler="ddpm", schedule=SCHEDULE, **options):
    noise = torch.randn(y.shape[0], 2, generator=g, dtype=torch.float64)
    return solve(RING.denoiser(schedule), schedule, op, y, noise, timesteps(schedule, steps, "uniform"), method=method,
                 generator=g, sampler=sampler, **{**SETTINGS.get(method, {}), **options})


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("dps", "reconstruction")])
def test_pixel_consistency_methods_satisfy_a_noiseless_measurement_exactly(method):
    op, y, _, g = _problem(noisy=False, n=200)
    x = _solve(method, op, y, g, steps=30)
    assert float((op.forward(x) - y).abs().max()) < 1e-12


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_moves_closer_to_the_exact_posterior_than_the_prior(method):
    op, y, post, g = _problem(noisy=True, n=2000)
    reference = post.sample(2000, g)
    prior = sliced_wasserstein(RING.sample(2000, g), reference)
    got = sliced_wasserstein(_solve(method, op, y, g), reference)
    assert got < 0.5 * prior, (got, prior)


@pytest.mark.slow
def test_smc_converges_to_the_exact_posterior_and_beats_every_other_method():
    op, y, post, g = _problem(noisy=True, n=2000, seed=3)
    reference = post.sample(2000, g)
    floor = sliced_wasserstein(post.sample(2000, g), reference)

    def smc_error(particles, steps):
        return sliced_wasserstein(_solve("smc", op, y, g, steps=steps, particles=particles), reference)

    small, large = smc_error(2, 10), smc_error(128, 200)
    assert large < small
    assert large < 1.5 * floor + 0.01, (large, floor)
    others = {m: sliced_wasserstein(_solve(m, op, y, g, steps=200), reference) for m in METHODS if m != "smc"}
    assert large < min(others.values()), (large, others)


def test_smc_recovers_the_posterior_mean_and_mode_weights_of_noiseless_inpainting():
    op, y, post, g = _problem(noisy=False, n=2000, seed=5)
    x = _solve("smc", op, y, g, steps=100, particles=32)
    exact = post.sample(20000, g)
    assert float((x.mean(0) - post.mean()).abs().max()) < 0.05
    # the posterior's two modes in the unobserved coordinate (above and below the axis) carry the exact masses
    assert abs(float((x[:, 1] > 0).double().mean()) - float((exact[:, 1] > 0).double().mean())) < 0.05


GRIDDED = [name for name in SAMPLERS if name != "adaptive"]  # adaptive takes its own steps: no grid to measure on


@pytest.mark.parametrize("sampler", GRIDDED)
def test_every_sampler_runs_the_measurement_step(sampler):
    op, y, _, g = _problem(noisy=False, n=64)
    x = _solve("pocs", op, y, g, steps=12, sampler=sampler)
    assert torch.isfinite(x).all()
    assert float((op.forward(x) - y).abs().max()) < 1e-12


def test_the_adaptive_sampler_refuses_a_measurement_step_in_one_line():
    noise = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="adaptive sampler has no grid steps") as info:
        sample(RING.denoiser(SCHEDULE), noise, timesteps(SCHEDULE, 8, "uniform"), SCHEDULE, "adaptive",
               measure=lambda x, j: x)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sampler", GRIDDED)
def test_an_identity_measurement_step_changes_nothing(sampler):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(16, 2, dtype=torch.float64, generator=g)
    ts = timesteps(SCHEDULE, 8, "uniform")
    plain = sample(RING.denoiser(SCHEDULE), noise, ts, SCHEDULE, sampler, generator=torch.Generator().manual_seed(1))
    calls = []
    hooked = sample(RING.denoiser(SCHEDULE), noise, ts, SCHEDULE, sampler, generator=torch.Generator().manual_seed(1),
                    measure=lambda x, j: calls.append(j) or x)
    assert torch.equal(plain, hooked)
    assert calls == list(range(1, 9))


def test_replacement_sets_the_measured_part_to_the_forward_noised_measurement():
    # one ddpm step from t = 1 to t = 0.5 on inpainting: the observed coordinate must be distributed as
    # alpha y + sigma z, whatever the denoiser says
    op, y, _, g = _problem(noisy=False, n=20000)
    ts = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    seen = []
    from diffusekit.inverse.methods import _replace
    from diffusekit.inverse.problem import Problem
    from diffusekit.sampling.grid import evaluate_grid
    grid = evaluate_grid(SCHEDULE, ts)
    problem = Problem(denoise=RING.denoiser(SCHEDULE), schedule=SCHEDULE, operator=op, y=y, grid=grid, generator=g,
                      cond={}, sampler="ddpm", sample_shape=(2,))
    measure = _replace(problem, grid)
    x = measure(torch.randn(20000, 2, dtype=torch.float64, generator=g), 1)
    seen = x[:, 0]
    alpha, sigma = grid.alpha[1], grid.sigma[1]
    assert abs(float(seen.mean()) - alpha * float(y[0, 0])) < 4 * sigma / math.sqrt(20000)
    assert abs(float(seen.std()) - sigma) < 0.02 * sigma


def _published_repaint_times(t_T, jump_length, jump_n_sample):
    """RePaint's resampling schedule as the paper's Algorithm 1 with its jump schedule (Sec. 4.2) is released:
    times t_T-1 .. 0 visited one step at a time, with r-1 jumps of j steps back up at every j-th time."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    return ts


@pytest.mark.parametrize("steps,jump,r", [(250, 10, 10), (50, 5, 3), (20, 10, 2), (7, 10, 4), (30, 1, 2)])
def test_repaint_visits_the_published_schedule(steps, jump, r):
    path = repaint_path(steps, jump, r)
    expanded = []
    for a, b in zip(path, path[1:], strict=False):
        step = 1 if b > a else -1
        expanded += list(range(a + step, b + step, step))
    assert [steps - k for k in expanded] == _published_repaint_times(steps, jump, r)


def test_ccdf_starts_below_t0_with_fewer_steps():
    op, y, _, g = _problem(noisy=False, n=8)
    calls = []
    den = RING.denoiser(SCHEDULE)

    def counting(x, t, cond):
        calls.append(float(t[0]))
        return den(x, t, cond)
    noise = torch.randn(8, 2, dtype=torch.float64, generator=g)
    solve(counting, SCHEDULE, op, y, noise, timesteps(SCHEDULE, 20, "uniform"), method="ccdf", t0=0.3)
    assert calls == pytest.approx([0.3, 0.25, 0.2, 0.15, 0.1, 0.05])  # t0, then the grid below it: 6 of 20 steps


def test_methods_work_on_images_with_downsampling():
    # a 16-D mixture seen as 1x4x4 images, measured by 2x box downsampling (noiseless)
    gm = GaussianMixture.random(16, 4, seed=1)
    g = torch.Generator().manual_seed(0)
    truth = gm.sample(1, g).reshape(1, 1, 4, 4)
    op = Downsample(2)
    y = op.forward(truth).expand(32, 1, 2, 2).clone()
    flat = gm.denoiser(SCHEDULE)

    def den(x, t, cond):
        return flat(x.reshape(x.shape[0], 16), t, cond).reshape(x.shape)
    for method in ("replacement", "pocs", "ilvr", "mcg", "smc"):
        noise = torch.randn(32, 1, 4, 4, dtype=torch.float64, generator=g)
        x = solve(den, SCHEDULE, op, y, noise, timesteps(SCHEDULE, 20, "uniform"), method=method, generator=g,
                  **SETTINGS.get(method, {}))
        assert x.shape == (32, 1, 4, 4)
        assert float((op.forward(x) - y).abs().max()) < 1e-10, method


def test_a_latent_model_differentiates_through_the_decoder():
    # latents z in 2-D decoded linearly to 3-D "images": y measures the first image coordinate
    decoder = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)

    def decode(z):
        return z @ decoder.T
    op = Inpaint(torch.tensor([True, False, False]))
    g = torch.Generator().manual_seed(0)
    n = 2000
    y = torch.zeros(n, 3, dtype=torch.float64)
    y[:, 0] = 0.9
    noise = torch.randn(n, 2, dtype=torch.float64, generator=g)
    ts = timesteps(SCHEDULE, 50, "uniform")
    out = solve(RING.denoiser(SCHEDULE), SCHEDULE, op, y, noise, ts, method="dps", generator=g, decode=decode,
                scale=0.2)
    assert out.shape == (n, 3)
    unguided = decode(sample(RING.denoiser(SCHEDULE), noise, ts, SCHEDULE, "ddpm", generator=g))
    assert float((out[:, 0] - 0.9).abs().mean()) < 0.5 * float((unguided[:, 0] - 0.9).abs().mean())
    for method in ("replacement", "repaint", "pocs", "ilvr", "mcg", "smc"):
        with pytest.raises(InverseProblemError, match="latent"):
            solve(RING.denoiser(SCHEDULE), SCHEDULE, op, y, noise, ts, method=method, decode=decode)


def test_bad_inputs_are_named():
    op, y, _, g = _problem(noisy=False, n=4)
    noise = torch.randn(4, 2, dtype=torch.float64)
    ts = timesteps(SCHEDULE, 5, "uniform")
    den = RING.denoiser(SCHEDULE)
    with pytest.raises(InverseProblemError, match="unknown inverse-problem method 'magic'"):
        solve(den, SCHEDULE, op, y, noise, ts, method="magic")
    with pytest.raises(InverseProblemError, match="no option stepsize; its options: scale"):
        solve(den, SCHEDULE, op, y, noise, ts, method="dps", stepsize=1.0)
    with pytest.raises(InverseProblemError, match=r"measurements have shape \(4, 3\)"):
        solve(den, SCHEDULE, op, torch.zeros(4, 3, dtype=torch.float64), noise, ts, method="pocs")
    with pytest.raises(InverseProblemError, match="t0 must be in"):
        solve(den, SCHEDULE, op, y, noise, ts, method="ccdf", t0=1.5)
    with pytest.raises(InverseProblemError, match="smc needs stochastic steps"):
        solve(den, SCHEDULE, op, y, noise, ts, method="smc", sampler="ddim")
    with pytest.raises(InverseProblemError, match="unknown sampler"):
        solve(den, SCHEDULE, op, y, noise, ts, method="pocs", sampler="nope")

    def detached(x, t, cond):
        return den(x, t, cond).detach()
    with pytest.raises(InverseProblemError, match="carries no gradient"):
        solve(detached, SCHEDULE, op, y, noise, ts, method="dps")
    with pytest.raises(InverseProblemError, match="observes nothing"):
        Inpaint(torch.tensor([False, False]))


def test_method_options_lists_each_methods_keywords():
    assert method_options("repaint") == {"jump_length": 10, "resamples": 10}
    assert method_options("smc") == {"particles": 16}
    assert set(method_options("ccdf")) == {"t0", "consistency", "init"}


def test_rectified_flow_schedule_starts_from_pure_noise():
    # alpha = 0 at t = 1: the forward-noised measurement and the SMC start are finite there
    op, y, post, g = _problem(noisy=True, n=500)
    for method in ("replacement", "smc", "dps"):
        x = _solve(method, op, y, g, steps=40, schedule=RectifiedFlow())
        assert torch.isfinite(x).all(), method


def test_dps_and_reconstruction_guide_through_a_real_autoencoder_decoder():
    from diffusekit.inverse.masks import box_mask
    from diffusekit.latent.codec import LatentAutoencoder
    from diffusekit.networks.autoencoder import Autoencoder

    torch.manual_seed(0)
    ae = LatentAutoencoder(Autoencoder(block_out_channels=(8, 8), layers_per_block=1, latent_channels=2,
                                       norm_num_groups=4), "test", "model")
    prior = GaussianMixture.random(2 * 4 * 4, 3, seed=2, mean_std=1.0)
    flat = prior.denoiser(SCHEDULE)

    def den(z, t, cond):
        return flat(z.reshape(z.shape[0], -1), t, cond).reshape(z.shape).float()
    g = torch.Generator().manual_seed(0)
    truth = prior.sample(1, g).reshape(1, 2, 4, 4).float()
    op = Inpaint(box_mask(8, 8))
    y = op.forward(ae.decode_normalized(truth)).expand(16, 3, 8, 8).clone()
    noise = torch.randn(16, 2, 4, 4, generator=g)
    ts = timesteps(SCHEDULE, 30, "uniform")
    plain = ae.decode_normalized(sample(den, noise, ts, SCHEDULE, "ddpm", generator=torch.Generator().manual_seed(1)))
    base = float(op.residual(plain, y).mean())
    for method, options in (("dps", {"scale": 0.3}), ("reconstruction", {"weight": 1.0})):
        out = solve(den, SCHEDULE, op, y, noise, ts, method=method, generator=torch.Generator().manual_seed(1),
                    decode=ae.decode_normalized, **options)
        assert out.shape == (16, 3, 8, 8)
        assert float(op.residual(out, y).mean()) < 0.7 * base, method


def test_a_zero_residual_gives_a_zero_gradient_not_nan():
    # a denoiser whose estimate meets the measurement exactly: the gradient methods must leave the state finite
    def exact(x, t, cond=None):
        return x * 0 + torch.tensor([0.5, 0.0])
    op, y = Inpaint(torch.tensor([True, False])), torch.tensor([[0.5, 0.0]])
    for method in ("dps", "mcg", "reconstruction"):
        x = solve(exact, SCHEDULE, op, y, torch.randn(1, 2), timesteps(SCHEDULE, 10, "uniform"), method)
        assert torch.isfinite(x).all(), method
