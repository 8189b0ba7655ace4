import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from diffusekit import parameterizations, schedules, time_sampling, weighting
from diffusekit._tensors import append_dims
from diffusekit.data import ImageArrays
from diffusekit.denoiser import Denoiser
from diffusekit.loss import DiffusionLoss
from diffusekit.metrics.noise_levels import LOGSNR_LIMIT, NoiseLevelBins, NoiseLevelProbe
from diffusekit.targets import GaussianMixture

SHAPE = (3, 4, 4)  # images of 48 dimensions
DIM = math.prod(SHAPE)
# the TensorBoard / TF summary-name pattern; also plain JSON keys
TAG = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")

SCHEDULES = {
    "rectified_flow": lambda: schedules.get("rectified_flow"),
    "cosine": lambda: schedules.get("cosine"),
    "cosine_zero_terminal": lambda: schedules.get("cosine", zero_terminal_snr=True),
    "linear_vp_zero_terminal": lambda: schedules.get("linear_vp", zero_terminal_snr=True),
    "linear_vp_discrete": lambda: schedules.get("linear_vp", discrete=True),
    "edm": lambda: schedules.get("edm"),
    "rectified_flow_shift3": lambda: schedules.get("rectified_flow", shift=3.0),
}


def make_loss(schedule, param="velocity", weight="unit", mode="iid"):
    return DiffusionLoss(schedule, parameterizations.get(param), time_sampling.get("uniform", mode),
                         weighting.get(weight))


def images_from(gmm, n, generator):
    return gmm.sample(n, generator).reshape(n, *SHAPE)


def optimal_network(gmm, schedule, param):
    """The raw output F whose x0_hat is the exact posterior mean of ``gmm``: F = (x0_hat - c_skip x_t) / c_out."""

    def network_fn(x_t, t, cond=None):
        at = schedule(t)
        c_skip, c_out = param.coefficients(at)
        x0_hat = gmm.x0_hat(x_t.reshape(len(x_t), -1), at.alpha, at.sigma).reshape(x_t.shape)
        return (x0_hat - append_dims(c_skip, x_t) * x_t) / append_dims(c_out, x_t)

    return network_fn


def gaussian(seed=0, std=0.5):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(0.3 * torch.randn(1, DIM, generator=g, dtype=torch.float64), [std])


# -- bins ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_bins_cover_the_schedule(name):
    schedule = SCHEDULES[name]()
    bins = NoiseLevelBins.for_schedule(schedule, bins=8)
    edges = bins.edges
    assert edges.dtype == torch.float64 and edges.shape == (9,) and len(bins) == 8
    assert bool((edges[1:] > edges[:-1]).all()) and bool(torch.isfinite(edges).all())
    ends = schedule.logsnr(torch.tensor([1 - 1e-3, 1e-3], dtype=torch.float64))
    torch.testing.assert_close(edges[[0, -1]], ends)
    step = float(ends[1] - ends[0]) / 8
    torch.testing.assert_close(edges[1:] - edges[:-1], torch.full((8,), step, dtype=torch.float64))
    assert bool((bins.centers > edges[:-1]).all() & (bins.centers < edges[1:]).all())
    # the probe's times land on the centers, inside (t_min, t_max)
    t = bins.times(schedule)
    assert bool((t > 1e-3).all() & (t < 1 - 1e-3).all())
    torch.testing.assert_close(schedule.logsnr(t), bins.centers)


def test_infinite_ends_are_clipped():
    bins = NoiseLevelBins.for_schedule(schedules.get("cosine", zero_terminal_snr=True), bins=4, t_min=0.0, t_max=1.0)
    assert float(bins.edges[0]) == -LOGSNR_LIMIT and float(bins.edges[-1]) == LOGSNR_LIMIT
    assert len(bins.labels()) == 4


@pytest.mark.parametrize("edges", [[0.0], [1.0, 0.0], [0.0, 0.0, 1.0], [0.0, float("inf")]])
def test_bad_edges_raise(edges):
    with pytest.raises(ValueError):
        NoiseLevelBins(torch.tensor(edges))


def test_labels_and_keys():
    bins = NoiseLevelBins(torch.tensor([-6.0, -4.0, -2.0, 0.0, 2.0]))
    assert bins.labels() == ["lsnr-6.0..-4.0", "lsnr-4.0..-2.0", "lsnr-2.0..0.0", "lsnr0.0..2.0"]
    # no "-0.0"; more decimals only where one would merge names
    assert NoiseLevelBins(torch.tensor([-1e-9, 1.0])).labels() == ["lsnr0.0..1.0"]
    assert NoiseLevelBins(torch.tensor([0.0, 0.01, 0.02])).labels() == ["lsnr0.00..0.01", "lsnr0.01..0.02"]
    gmm = gaussian()
    g = torch.Generator().manual_seed(1)
    loss = make_loss(schedules.get("rectified_flow"))
    probe = NoiseLevelProbe(loss, images_from(gmm, 10, g), images_from(gmm, 10, g), bins=bins, per_bin=4)
    result = probe(optimal_network(gmm, loss.schedule, loss.parameterization))
    expected = {f"noise/{kind}/{label}" for kind in ("train", "val", "gap") for label in [*bins.labels(), "mean"]}
    assert set(result) == expected
    assert all(TAG.match(key) for key in result)
    assert all(type(v) is float for v in result.values())
    assert json.loads(json.dumps(result)) == result
    for label in [*bins.labels(), "mean"]:
        gap = result[f"noise/val/{label}"] - result[f"noise/train/{label}"]
        assert result[f"noise/gap/{label}"] == pytest.approx(gap)
    assert result["noise/train/mean"] == pytest.approx(np.mean([result[f"noise/train/{x}"] for x in bins.labels()]))


def test_no_validation_set():
    gmm = gaussian()
    loss = make_loss(schedules.get("cosine"), "v")
    probe = NoiseLevelProbe(loss, images_from(gmm, 10, torch.Generator().manual_seed(1)), bins=3, per_bin=4)
    result = probe(optimal_network(gmm, loss.schedule, loss.parameterization))
    assert set(result) == {f"noise/train/{label}" for label in [*probe.bins.labels(), "mean"]}


# -- exactness ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule_name, param_name, weight_name", [
    ("rectified_flow", "velocity", "unit"),
    ("rectified_flow", "x0", "unit"),
    ("cosine", "eps", "unit"),
    ("linear_vp_zero_terminal", "v", "min_snr"),
    ("edm", "edm", "edm"),
])
def test_optimal_denoiser_of_a_gaussian_gives_the_posterior_variance(schedule_name, param_name, weight_name):
    """For x0 ~ N(m, s^2 I) the error of E[x0 | x_t] is N(0, v I) with v = s^2 sigma^2 / (alpha^2 s^2 + sigma^2),
    independent of x_t; in F space the loss is weighting * v / c_out^2, and a bin's estimate over n = per_bin * D
    squared errors is that times chi^2_n / n."""
    schedule, std, per_bin = SCHEDULES[schedule_name](), 0.5, 512
    gmm = gaussian(std=std)
    loss = make_loss(schedule, param_name, weight_name)
    g = torch.Generator().manual_seed(2)
    probe = NoiseLevelProbe(loss, images_from(gmm, 600, g), images_from(gmm, 600, g), bins=8, per_bin=per_bin)
    result = probe(optimal_network(gmm, schedule, loss.parameterization))
    at = schedule(probe.bins.times(schedule))
    v = std**2 * at.sigma**2 / (at.alpha**2 * std**2 + at.sigma**2)
    _, c_out = loss.parameterization.coefficients(at)
    expected = loss.weighting(at, loss.parameterization) * v / c_out**2
    rtol = 5 * math.sqrt(2 / (per_bin * DIM))  # 5 standard deviations of chi^2_n / n
    for kind in ("train", "val"):
        got = torch.tensor([result[f"noise/{kind}/{label}"] for label in probe.bins.labels()], dtype=torch.float64)
        torch.testing.assert_close(got, expected, rtol=rtol, atol=0)


# -- the memorization signal --------------------------------------------------------------------------------
def test_memorizing_denoiser_opens_a_gap_the_population_denoiser_does_not():
    """A denoiser that memorized 8 training images (the posterior mean of their empirical distribution)
    fits them far better than held-out images at medium and high log-SNR; the population-optimal one
    fits both equally."""
    schedule, std, per_bin = schedules.get("rectified_flow"), 0.5, 256
    gmm = gaussian(std=std)
    loss = make_loss(schedule, "velocity")
    g = torch.Generator().manual_seed(3)
    train, val = images_from(gmm, 8, g), images_from(gmm, 512, g)
    memorized = GaussianMixture(train.reshape(8, -1), [1e-3] * 8)  # ~ the 8 points themselves
    probe = NoiseLevelProbe(loss, train, val, bins=8, per_bin=per_bin)
    result = probe(optimal_network(memorized, schedule, loss.parameterization))
    centers = probe.bins.centers
    labels = probe.bins.labels()
    for label, center in zip(labels, centers.tolist(), strict=True):
        if center >= 0:
            assert result[f"noise/gap/{label}"] > 0
            assert result[f"noise/val/{label}"] > 10 * result[f"noise/train/{label}"]
    assert result["noise/gap/mean"] > 0

    # the population-optimal denoiser on 512 distinct training images: gap ~ 0 within the estimate's noise
    population = NoiseLevelProbe(loss, images_from(gmm, 512, g), val, bins=8, per_bin=per_bin)
    result = population(optimal_network(gmm, schedule, loss.parameterization))
    at = schedule(population.bins.times(schedule))
    _, c_out = loss.parameterization.coefficients(at)
    expected = std**2 * at.sigma**2 / (at.alpha**2 * std**2 + at.sigma**2) / c_out**2
    # each side has relative std sqrt(2 / n); shared noise only makes them more alike
    tol = 5 * math.sqrt(2 * 2 / (per_bin * DIM)) * expected
    gaps = torch.tensor([result[f"noise/gap/{label}"] for label in labels])
    assert bool((gaps.abs() <= tol).all()), (gaps, tol)


# -- determinism, RNG and modes -----------------------------------------------------------------------------
class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(SHAPE[0], SHAPE[0], 3, padding=1, dtype=torch.float64)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Sequential(nn.Dropout(0.5))

    def forward(self, x, noise, cond=None):
        return self.frozen(self.drop(self.conv(x))) * (1 + noise)[:, None, None, None]


def test_deterministic_rng_free_and_eval_mode():
    torch.manual_seed(0)
    net = DropoutNet()
    schedule = schedules.get("cosine")
    denoiser = Denoiser(net, schedule, parameterizations.get("v"))
    denoiser.train()
    net.frozen.eval()  # a submodule kept in eval mode must stay so
    loss = make_loss(schedule, "v", mode="importance")
    gmm = gaussian()
    g = torch.Generator().manual_seed(4)
    probe = NoiseLevelProbe(loss, images_from(gmm, 20, g), images_from(gmm, 20, g), bins=4, per_bin=16,
                            batch_size=24)
    sampler_state = loss.time_sampler.state_dict()
    rng = torch.get_rng_state()
    first = probe(denoiser.network_output)
    second = probe(denoiser.network_output)
    assert first == second
    assert torch.equal(torch.get_rng_state(), rng)  # dropout was off: it would have drawn from the global RNG
    assert denoiser.training and net.training and net.drop.training and not net.frozen.training
    for key, value in loss.time_sampler.state_dict().items():
        assert torch.equal(value, sampler_state[key])
    # an nn.Module as network_fn is put in eval mode the same way (equal values) and restored
    raw = RawOutput(denoiser).train()
    net.frozen.eval()
    assert probe(raw) == first
    assert raw.training and net.drop.training and not net.frozen.training
    assert torch.equal(torch.get_rng_state(), rng)


class RawOutput(nn.Module):
    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_t, t, cond=None):
        return self.denoiser.network_output(x_t, t, cond)


def test_batch_size_does_not_change_the_values():
    gmm = gaussian()
    schedule = schedules.get("edm")
    loss = make_loss(schedule, "edm", "edm")
    g = torch.Generator().manual_seed(5)
    train, val = images_from(gmm, 30, g), images_from(gmm, 30, g)
    fn = optimal_network(gmm, schedule, loss.parameterization)
    a = NoiseLevelProbe(loss, train, val, bins=5, per_bin=12, batch_size=7)(fn)
    b = NoiseLevelProbe(loss, train, val, bins=5, per_bin=12, batch_size=1000)(fn)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12)
    c = NoiseLevelProbe(loss, train, val, bins=5, per_bin=12, seed=1)(fn)
    assert c != a  # another seed draws other points


def test_images_are_spread_evenly_when_there_are_few():
    images = torch.arange(3, dtype=torch.float64)[:, None, None, None].expand(3, *SHAPE).clone()
    loss = make_loss(schedules.get("rectified_flow"))
    probe = NoiseLevelProbe(loss, images, images[:2], bins=4, per_bin=7)
    for name, n in (("train", 3), ("val", 2)):
        which = probe._sets[name].x0[:, 0, 0, 0].reshape(4, 7).long()
        for row in which:
            counts = torch.bincount(row, minlength=n)
            assert int(counts.max() - counts.min()) <= 1
    many = NoiseLevelProbe(loss, torch.arange(50.0)[:, None, None, None].expand(50, *SHAPE).clone(), bins=4, per_bin=7)
    for row in many._sets["train"].x0[:, 0, 0, 0].reshape(4, 7):
        assert len(row.unique()) == 7  # without replacement


# -- conditional models -------------------------------------------------------------------------------------
def class_images(n):
    means = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64)
    labels = torch.arange(n) % 3
    return means, means[labels][:, None, None, None].expand(n, *SHAPE).clone(), labels


def test_true_labels_reach_the_network():
    """Images that are their class's constant, an x0 network that returns that constant for the label it is
    given: exactly zero loss everywhere iff the probe passes every image's own label."""
    means, images, labels = class_images(30)
    loss = make_loss(schedules.get("rectified_flow"), "x0")

    def by_label(x_t, t, cond):
        labels = cond["labels"]
        assert labels.dtype == torch.int64 and bool((labels < 3).all())
        return means[labels][:, None, None, None].expand(x_t.shape)

    probe = NoiseLevelProbe(loss, images, images[:12], train_labels=labels, val_labels=labels[:12], bins=4,
                            per_bin=20, batch_size=16)
    assert all(v == 0.0 for v in probe(by_label).values())
    unconditional = NoiseLevelProbe(loss, images, bins=4, per_bin=20)
    seen = []
    unconditional(lambda x_t, t, cond: seen.append(dict(cond)) or torch.zeros_like(x_t))
    assert seen and all(c == {} for c in seen)  # no labels given: the network gets no condition
    with pytest.raises(ValueError):
        NoiseLevelProbe(loss, images, images, train_labels=labels)


def test_from_arrays_converts_a_subset():
    rng = np.random.default_rng(0)

    def arrays(n):
        images = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
        return ImageArrays(images, np.arange(n, dtype=np.int64) % 3, 3, ("a", "b", "c"))

    loss = make_loss(schedules.get("rectified_flow"))
    probe = NoiseLevelProbe.from_arrays(loss, arrays(500), arrays(100), conditional=True, bins=3, per_bin=5)
    x0 = probe._sets["train"].x0
    assert x0.shape == (15, *SHAPE) and x0.dtype == torch.float32 and float(x0.abs().max()) <= 1
    assert probe._sets["val"].labels is not None
    seen = []
    result = probe(lambda x_t, t, cond: seen.append(cond) or torch.zeros_like(x_t))
    assert len(result) == 3 * 4 and all(c is not None for c in seen)
    plain = NoiseLevelProbe.from_arrays(loss, arrays(5), conditional=False, bins=3, per_bin=5)
    assert plain._sets["train"].labels is None and "val" not in plain._sets
