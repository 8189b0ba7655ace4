import math

import pytest
import torch

from diffusekit.networks.quantize import VectorQuantizer


def as_latent(vectors: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` vectors as a ``[1, D, N, 1]`` latent (N pixels of one image)."""
    return vectors.t()[None, :, :, None].contiguous()


def set_codebook(quantizer: VectorQuantizer, codebook: torch.Tensor) -> None:
    """Codes as if each had been seen once (the EMA state of a fresh quantizer)."""
    with torch.no_grad():
        quantizer.codebook.copy_(codebook)
        if quantizer.ema_decay is not None:
            quantizer.ema_cluster_size.fill_(1.0)
            quantizer.ema_embed_sum.copy_(codebook)


def test_each_vector_gets_the_code_at_the_smallest_euclidean_distance():
    gen = torch.Generator().manual_seed(0)
    quantizer = VectorQuantizer(num_codes=16, dim=3, kmeans_init=False).eval()
    z = torch.randn(2, 3, 5, 7, generator=gen)
    out = quantizer(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    codebook = quantizer.codebook
    brute = torch.stack([torch.stack([((v - e) ** 2).sum() for e in codebook]) for v in vectors])  # [N, K]
    expected = brute.argmin(1).reshape(2, 5, 7)
    assert torch.equal(out.indices, expected)
    torch.testing.assert_close(out.quantized, codebook[expected].permute(0, 3, 1, 2))
    assert torch.equal(quantizer.nearest(z), expected)
    torch.testing.assert_close(quantizer.lookup(z), out.quantized)


def test_ema_update_follows_vq_vae_appendix_a1_with_laplace_smoothing():
    decay, eps, beta = 0.5, 1e-3, 0.25
    quantizer = VectorQuantizer(num_codes=2, dim=2, beta=beta, ema_decay=decay, kmeans_init=False, epsilon=eps)
    set_codebook(quantizer, torch.tensor([[0.0, 0.0], [4.0, 4.0]]))
    z = as_latent(torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 4.0]]))  # codes 0, 0, 1
    out = quantizer.train()(z)

    # Written out: n = (2, 1); the sums of the assigned vectors (1, 1) and (5, 4); N, m start at 1 and e.
    n = [2.0, 1.0]
    sums = [[1.0, 1.0], [5.0, 4.0]]
    old_n, old_m = [1.0, 1.0], [[0.0, 0.0], [4.0, 4.0]]
    big_n = [decay * old_n[i] + (1 - decay) * n[i] for i in range(2)]
    m = [[decay * old_m[i][d] + (1 - decay) * sums[i][d] for d in range(2)] for i in range(2)]
    total = sum(big_n)
    smoothed = [(big_n[i] + eps) / (total + 2 * eps) * total for i in range(2)]
    codebook = [[m[i][d] / smoothed[i] for d in range(2)] for i in range(2)]

    assert out.indices.flatten().tolist() == [0, 0, 1]
    torch.testing.assert_close(quantizer.ema_cluster_size, torch.tensor(big_n))
    torch.testing.assert_close(quantizer.ema_embed_sum, torch.tensor(m))
    torch.testing.assert_close(quantizer.codebook, torch.tensor(codebook))
    # The output uses the codebook from before the update; the loss is beta * the commitment term only.
    commitment = ((1 - 0) ** 2 + 0 + 0 + (1 - 0) ** 2 + (5 - 4) ** 2 + 0) / 6
    torch.testing.assert_close(out.loss, torch.tensor(beta * commitment))


def test_gradient_learned_codebook_adds_the_codebook_term_and_receives_its_gradient():
    beta = 0.25
    quantizer = VectorQuantizer(num_codes=2, dim=2, beta=beta, ema_decay=None, kmeans_init=False).train()
    set_codebook(quantizer, torch.tensor([[0.0, 0.0], [4.0, 4.0]]))
    z = as_latent(torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 4.0]]))
    out = quantizer(z)
    squared = 3.0 / 6  # mean of (z - e)^2 over the 6 elements
    torch.testing.assert_close(out.loss, torch.tensor((1 + beta) * squared))
    out.loss.backward()
    # d/de_i of mean((e_i - z)^2): 2 * sum over assigned vectors of (e_i - z) / 6
    expected = torch.tensor([[2 * (-1 + 0) / 6, 2 * (0 - 1) / 6], [2 * (4 - 5) / 6, 0.0]])
    torch.testing.assert_close(quantizer.codebook.grad, expected)
    torch.testing.assert_close(quantizer.codebook.detach(), torch.tensor([[0.0, 0.0], [4.0, 4.0]]))  # no EMA


def test_the_straight_through_gradient_is_the_identity():
    gen = torch.Generator().manual_seed(1)
    quantizer = VectorQuantizer(num_codes=8, dim=4, kmeans_init=False).eval()
    z = torch.randn(2, 4, 3, 3, generator=gen, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3, generator=gen)
    quantizer(z).quantized.backward(upstream)
    torch.testing.assert_close(z.grad, upstream)
    z.grad = None
    quantizer.lookup(z).backward(upstream)
    torch.testing.assert_close(z.grad, upstream)


def test_perplexity_and_usage_of_a_known_assignment():
    quantizer = VectorQuantizer(num_codes=4, dim=1, kmeans_init=False).eval()
    set_codebook(quantizer, torch.tensor([[0.0], [10.0], [20.0], [30.0]]))
    out = quantizer(as_latent(torch.tensor([[0.1], [-0.2], [9.0], [21.0]])))  # codes 0, 0, 1, 2
    assert out.indices.flatten().tolist() == [0, 0, 1, 2]
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert out.perplexity.item() == pytest.approx(math.exp(entropy), rel=1e-6)
    assert out.usage.item() == pytest.approx(3 / 4)


def clusters(seed: int = 0):
    """Three well-separated clusters of different sizes and their exact means."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    sizes = (30, 20, 14)
    points = torch.cat([c + 0.5 * torch.randn(s, 2, generator=gen) for c, s in zip(centres, sizes, strict=True)])
    means = torch.stack([chunk.mean(0) for chunk in points.split(sizes)])
    return points[torch.randperm(len(points), generator=gen)], means, torch.tensor(sizes, dtype=torch.float32)


def test_kmeans_initialisation_puts_the_codes_at_the_cluster_means_on_the_first_training_batch():
    points, means, sizes = clusters()
    quantizer = VectorQuantizer(num_codes=3, dim=2, ema_decay=None, kmeans_init=True, kmeans_iters=10)
    assert not quantizer.initialized
    quantizer.eval()(as_latent(points))
    assert not quantizer.initialized  # evaluation never initialises
    quantizer.train()(as_latent(points), generator=torch.Generator().manual_seed(0))
    assert quantizer.initialized
    order = quantizer.codebook.detach()[:, 0].argsort(descending=True)  # +x, then the one at y=10, then -x
    torch.testing.assert_close(quantizer.codebook.detach()[order], means[[0, 2, 1]])

    ema = VectorQuantizer(num_codes=3, dim=2, ema_decay=0.9, kmeans_init=True).train()
    ema(as_latent(points), generator=torch.Generator().manual_seed(0))
    order = ema.codebook[:, 0].argsort(descending=True)
    # k-means sets N = the cluster sizes, m = size * mean; the same batch's EMA step leaves both unchanged.
    torch.testing.assert_close(ema.ema_cluster_size[order], sizes[[0, 2, 1]])
    torch.testing.assert_close(ema.ema_embed_sum[order], (means * sizes[:, None])[[0, 2, 1]])
    torch.testing.assert_close(ema.codebook[order], means[[0, 2, 1]], rtol=1e-4, atol=1e-4)


def test_a_code_unused_for_restart_after_training_batches_is_restarted_at_an_encoder_output():
    quantizer = VectorQuantizer(num_codes=3, dim=2, ema_decay=0.99, kmeans_init=False, restart_after=2).train()
    set_codebook(quantizer, torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
    vectors = torch.tensor([[0.1, 0.0], [0.9, 1.0], [1.2, 0.8], [-0.1, 0.1]])
    gen = torch.Generator().manual_seed(0)
    quantizer(as_latent(vectors), generator=gen)
    assert quantizer.idle_steps.tolist() == [0, 0, 1]
    # Unused and not yet restarted: the EMA scales its sum and count alike, so the code stays put.
    torch.testing.assert_close(quantizer.codebook[2], torch.tensor([100.0, 100.0]))
    quantizer(as_latent(vectors), generator=gen)
    restarted = quantizer.codebook[2]
    assert any(torch.equal(restarted, v) for v in vectors)
    assert quantizer.idle_steps.tolist() == [0, 0, 0]
    assert quantizer.ema_cluster_size[2].item() == 1.0  # counts as one seen vector
    torch.testing.assert_close(quantizer.ema_embed_sum[2], restarted)
    # The next batch uses the restarted code.
    assert 2 in quantizer(as_latent(vectors), generator=gen).indices.flatten().tolist()


def test_evaluation_mode_changes_no_state():
    points, _, _ = clusters()
    quantizer = VectorQuantizer(num_codes=4, dim=2, restart_after=1).eval()
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer(as_latent(points), generator=torch.Generator().manual_seed(0))
    for name, value in quantizer.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_state_dict_round_trip_resumes_bit_identically():
    def batches(seed):
        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(4, 3, 4, 4, generator=gen) * 2 for _ in range(5)]

    data = batches(3)
    options = dict(num_codes=32, dim=3, ema_decay=0.9, kmeans_init=True, restart_after=1)
    torch.manual_seed(0)
    original = VectorQuantizer(**options).train()
    gen = torch.Generator().manual_seed(7)
    for z in data[:2]:
        original(z, generator=gen)
    saved = {name: value.clone() for name, value in original.state_dict().items()}  # a checkpoint's copy
    generator_state = gen.get_state()
    expected = [original(z, generator=gen) for z in data[2:]]

    torch.manual_seed(1)  # a different random codebook, overwritten by the state dict
    resumed = VectorQuantizer(**options).train()
    resumed.load_state_dict(saved)
    gen = torch.Generator()
    gen.set_state(generator_state)
    for want, z in zip(expected, data[2:], strict=True):
        got = resumed(z, generator=gen)
        assert torch.equal(got.quantized, want.quantized)
        assert torch.equal(got.indices, want.indices)
        assert torch.equal(got.loss, want.loss)
    assert torch.equal(resumed.codebook, original.codebook)
    assert torch.equal(resumed.idle_steps, original.idle_steps)


@pytest.mark.parametrize("options, message", [
    (dict(num_codes=0, dim=2), "num_codes"),
    (dict(num_codes=4, dim=2, ema_decay=1.0), "ema_decay"),
    (dict(num_codes=4, dim=2, restart_after=0), "restart_after"),
    (dict(num_codes=4, dim=2, beta=-1.0), "beta"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        VectorQuantizer(**options)


def test_a_latent_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match=r"\[B, 3, \.\.\.\]"):
        VectorQuantizer(num_codes=4, dim=3)(torch.zeros(1, 4, 2, 2))
