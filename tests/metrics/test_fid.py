"""Frechet distance, streaming statistics and KID against closed forms (no Inception needed)."""

import numpy as np
import pytest
import scipy.linalg

from diffusekit.metrics.fid import (
    fid_from_stats,
    frechet_distance,
    frechet_distance_of_features,
    trace_sqrt_product,
)
from diffusekit.metrics.kid import kid, polynomial_mmd2
from diffusekit.metrics.stats import FeatureStats, RunningStats, load_stats


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_rotated_gaussians():
    # N(0, R D R^T) vs N(0, D): the Bures distance of two full-rank matrices, checked against the defining sqrtm
    rng = np.random.default_rng(1)
    d = 6
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    root = scipy.linalg.sqrtm(s1)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(root @ s2 @ root)).real
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(expected, rel=1e-10)
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real, rel=1e-10)


def test_trace_sqrt_product_with_rank_deficient_covariances():
    # fewer samples than dimensions (small-n FID). With S1 = A A^T and S2 = B B^T the nonzero eigenvalues of S1 S2
    # are the squared singular values of A^T B, so tr((S1 S2)^1/2) is the nuclear norm of A^T B: an exact reference
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 10)), rng.normal(size=(40, 12))
    expected = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    assert trace_sqrt_product(a @ a.T, b @ b.T) == pytest.approx(expected, rel=1e-11)


def test_all_three_trace_paths_agree():
    # Cholesky (positive definite), eigh (singular) and the features' nuclear norm give the same trace
    rng = np.random.default_rng(12)
    few_a, few_b = rng.normal(size=(10, 30)), rng.normal(size=(14, 30)) * 2 + 1
    many_a, many_b = rng.normal(size=(80, 30)), rng.normal(size=(90, 30)) @ rng.normal(size=(30, 30))
    for x, y in ((few_a, few_b), (many_a, many_b)):
        sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        reference = np.sqrt(np.clip(np.linalg.eigvals(sx @ sy).real, 0, None)).sum()
        assert trace_sqrt_product(sx, sy) == pytest.approx(reference, rel=1e-6)
        from_moments = frechet_distance(x.mean(0), sx, y.mean(0), sy)
        assert frechet_distance_of_features(x, y) == pytest.approx(from_moments, rel=1e-10)
    a, b = FeatureStats.from_features(few_a), FeatureStats.from_features(few_b)  # features kept: nuclear-norm path
    no_features = FeatureStats(b.mu, b.sigma, b.count)
    assert fid_from_stats(a, b) == pytest.approx(fid_from_stats(a, no_features), rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_symmetric():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(size=(200, 16)) + 0.5
    a, b = FeatureStats.from_features(x), FeatureStats.from_features(y)
    assert fid_from_stats(a, a) == pytest.approx(0.0, abs=1e-9)
    assert fid_from_stats(a, b) == pytest.approx(fid_from_stats(b, a), rel=1e-10)
    assert fid_from_stats(a, b) > 0.1


def test_streaming_statistics_equal_numpy_and_ignore_order_and_batching():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(517, 8)) * rng.uniform(0.01, 100, 8) + 1e3  # large mean: no cancellation allowed
    stats = RunningStats(8)
    for chunk in np.array_split(x, [1, 50, 51, 300]):
        stats.update(chunk)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    shuffled = RunningStats(8)
    for chunk in np.array_split(x[rng.permutation(len(x))], 7):
        shuffled.update(chunk)
    y = FeatureStats.from_features(rng.normal(size=(100, 8)))
    fid_a = fid_from_stats(stats.finish(), y)
    assert fid_from_stats(shuffled.finish(), y) == pytest.approx(fid_a, rel=1e-10)


def test_running_stats_reject_bad_features():
    stats = RunningStats(4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        _ = stats.covariance


def test_stats_file_round_trip_and_mismatch_refused(tmp_path):
    rng = np.random.default_rng(5)
    a = FeatureStats.from_features(rng.normal(size=(50, 4)), dataset="d", config_hash="aaa")
    path = a.save(tmp_path / "a.npz")
    back = load_stats(path)
    np.testing.assert_array_equal(back.mu, a.mu)
    np.testing.assert_array_equal(back.sigma, a.sigma)
    assert back.count == 50 and back.meta["dataset"] == "d" and back.features.shape == (50, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary file left behind
    # pytorch-fid's files (mu and sigma only) are read too
    np.savez(tmp_path / "foreign.npz", mu=a.mu, sigma=a.sigma)
    assert load_stats(tmp_path / "foreign.npz").meta == {}
    b = FeatureStats.from_features(rng.normal(size=(50, 4)), config_hash="bbb")
    with pytest.raises(ValueError, match="different feature extractors or preprocessing"):
        fid_from_stats(a, b)
    np.savez(tmp_path / "junk.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="no feature statistics"):
        load_stats(tmp_path / "junk.npz")


def _kid_1d_shift(delta):
    # cubic kernel (xy + 1)^3 in 1-D, N(0,1) vs N(delta,1): E over moments m1..m3 (exact)
    m1, m2, m3 = delta, 1 + delta**2, delta**3 + 3 * delta
    return m3**2 + 3 * (m2 - 1) ** 2 + 3 * m1**2


def test_kid_matches_the_closed_form_of_a_mean_shift():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20000, 1))
    for delta in (0.0, 0.3, 0.6):
        y = rng.normal(size=(20000, 1)) + delta
        result = kid(x, y, num_subsets=10, subset_size=2000, seed=1)
        tol = 4 * result["kid_std"] / np.sqrt(10) + 0.02 * _kid_1d_shift(delta) + 1e-3
        assert abs(result["kid"] - _kid_1d_shift(delta)) < tol, (delta, result)


def test_kid_of_two_halves_is_about_zero_and_grows_with_the_shift():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(2000, 32))
    halves = kid(feats[:1000], feats[1000:], num_subsets=50, subset_size=500)
    assert abs(halves["kid"]) < 3 * halves["kid_std"] + 1e-4
    values = [kid(feats[:1000], feats[1000:] + s, num_subsets=20, subset_size=500)["kid"] for s in (0.1, 0.2, 0.4)]
    assert halves["kid"] < values[0] < values[1] < values[2]


def test_kid_estimator_is_unbiased_form():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = np.mean([k(x[i], x[j]) for i in range(5) for j in range(5) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(5) for j in range(5) if i != j])
    xy = np.mean([k(x[i], y[j]) for i in range(5) for j in range(5)])
    assert polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    with pytest.raises(ValueError, match="same size"):
        polynomial_mmd2(x, y[:4])


def test_kid_with_subsets_as_large_as_both_sets_is_one_exact_value():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 0.3
    result = kid(x, y, subset_size=1000)
    assert result["kid"] == pytest.approx(polynomial_mmd2(x, y), rel=1e-12)
    assert result["kid_std"] == 0.0 and result["kid_subsets"] == 1 and result["kid_subset_size"] == 50
