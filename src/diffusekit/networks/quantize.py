"""Vector quantisation of latents with a learned codebook (van den Oord et al. 2017, "Neural discrete
representation learning", VQ-VAE).

Each latent vector (the channel dimension of ``z [B, dim, ...]``) is replaced by its nearest codebook entry in
Euclidean distance. The gradient passes straight through the rounding (VQ-VAE, Sec. 3.2: ``z + sg[e - z]``), and
the loss is VQ-VAE's Eq. 3 without its reconstruction term, averaged over elements::

    loss = ||sg[e] - z||^2 * beta  (+ ||e - sg[z]||^2 when the codebook is learned by gradient)

With ``ema_decay`` the codebook is not a parameter but follows exponential moving averages of the encoder
outputs assigned to each code (VQ-VAE Appendix A.1; Razavi et al. 2019, "Generating diverse high-fidelity images
with VQ-VAE-2", Sec. 3.1), with additive (Laplace) smoothing of the counts so that a rarely used code never
divides by zero::

    N_i <- decay * N_i + (1 - decay) * n_i              n_i: vectors of this batch assigned to code i
    m_i <- decay * m_i + (1 - decay) * sum_j z_ij       the sum of those vectors
    e_i  = m_i / N~_i,   N~_i = (N_i + epsilon) / (sum_k N_k + K * epsilon) * sum_k N_k

Two well-known fixes against unused ("dead") codes are optional: k-means initialisation of the codebook on the
first training batch (k-means++ seeds, then Lloyd iterations; as in Jukebox, Dhariwal et al. 2020, and
SoundStream), and restarting a code that no vector of ``restart_after`` consecutive training batches chose with a
random encoder output of the current batch (Jukebox's codebook reset). A restarted code counts as one seen vector
(``N_i = 1``, ``m_i = e_i``), as in Jukebox; after k-means, ``N_i`` is the cluster's size and ``m_i`` its sum.

Every piece of state (codebook, EMA counts and sums, whether the codebook was initialised, the idle counters) is
a buffer, or the codebook a parameter, so a checkpoint resumes it exactly; every random draw takes the
``generator`` given to :meth:`VectorQuantizer.forward`. State changes only in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["QuantizerOutput", "VectorQuantizer", "kmeans", "kmeans_plus_plus"]


@dataclass
class QuantizerOutput:
    """``quantized``: nearest codes, shaped like the input, with the straight-through gradient; ``loss``: a
    scalar; ``indices``: ``[B, ...]`` code indices (int64); ``perplexity``: ``exp`` of the entropy of the
    batch's code histogram (1 = one code used, ``num_codes`` = all used equally); ``usage``: the fraction of
    codes the batch used."""

    quantized: Tensor
    loss: Tensor
    indices: Tensor
    perplexity: Tensor
    usage: Tensor


def _squared_distances(vectors: Tensor, codebook: Tensor) -> Tensor:
    """``[N, K]``: ``||v||^2 - 2 v.e + ||e||^2``, one matrix product instead of N*K differences."""
    return (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t() + codebook.pow(2).sum(1)[None, :])


def _random_rows(vectors: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` rows of ``vectors`` drawn without replacement when there are enough, with replacement if not."""
    n = vectors.shape[0]
    device = generator.device if generator is not None else vectors.device
    if count <= n:
        rows = torch.randperm(n, generator=generator, device=device)[:count]
    else:
        rows = torch.randint(n, (count,), generator=generator, device=device)
    return vectors[rows.to(vectors.device)]


def kmeans_plus_plus(vectors: Tensor, num_clusters: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre is a random row, each next one a row
    drawn with probability proportional to its squared distance to the nearest centre so far."""
    device = generator.device if generator is not None else vectors.device
    first = torch.randint(vectors.shape[0], (1,), generator=generator, device=device).to(vectors.device)
    centres = [vectors[first[0]]]
    nearest = (vectors - centres[0]).pow(2).sum(1)
    for _ in range(num_clusters - 1):
        # Fewer distinct rows than clusters leaves every distance zero: then any row will do.
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        row = torch.multinomial(weights.to(device), 1, generator=generator).to(vectors.device)
        centres.append(vectors[row[0]])
        nearest = torch.minimum(nearest, (vectors - centres[-1]).pow(2).sum(1))
    return torch.stack(centres)


def kmeans(vectors: Tensor, num_clusters: int, iters: int,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm on ``vectors [N, D]`` from k-means++ seeds: ``(centroids [K, D], counts [K])``,
    ``counts`` from the last assignment. A cluster left empty by an assignment restarts at a random row."""
    centroids = kmeans_plus_plus(vectors, num_clusters, generator)
    for _ in range(iters):
        assignment = _squared_distances(vectors, centroids).argmin(1)
        counts = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centroids[empty] = _random_rows(vectors, int(empty.sum()), generator)
    assignment = _squared_distances(vectors, centroids).argmin(1)
    counts = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)
    return centroids, counts


class VectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of size ``dim`` (the latent channels).

    ``beta``: weight of the commitment term (VQ-VAE's beta, 0.25). ``ema_decay``: EMA codebook updates with this
    decay (VQ-VAE-2 uses 0.99); ``None`` learns the codebook by gradient through the codebook term of the loss.
    ``kmeans_init``: set the codebook by k-means++ seeding and ``kmeans_iters`` Lloyd iterations on the first
    training batch.
    ``restart_after``: restart a code unused for this many consecutive training batches (``None``: never).
    ``epsilon``: the Laplace smoothing of the EMA counts.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, ema_decay: float | None = 0.99,
                 kmeans_init: bool = True, kmeans_iters: int = 10, restart_after: int | None = None,
                 epsilon: float = 1e-5):
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"a codebook needs num_codes >= 1 and dim >= 1, got {num_codes} and {dim}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        if kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {kmeans_iters}")
        if restart_after is not None and restart_after < 1:
            raise ValueError(f"restart_after must be >= 1 or None, got {restart_after}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.ema_decay, self.kmeans_init, self.kmeans_iters = ema_decay, kmeans_init, kmeans_iters
        self.restart_after, self.epsilon = restart_after, epsilon
        # Unit-scale codes, the scale of a regularised encoder's latents (replaced by k-means when it is on).
        codebook = torch.randn(num_codes, dim)
        if ema_decay is None:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            # Each code starts as one seen vector equal to itself: then N~_i = 1 and e_i = m_i / N~_i holds.
            self.register_buffer("ema_cluster_size", torch.ones(num_codes))
            self.register_buffer("ema_embed_sum", codebook.clone())
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("idle_steps", torch.zeros(num_codes, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema_decay={self.ema_decay}, "
                f"kmeans_init={self.kmeans_init}, restart_after={self.restart_after}")

    def _flatten(self, z: Tensor) -> Tensor:
        if z.ndim < 2 or z.shape[1] != self.dim:
            raise ValueError(f"the quantizer expects [B, {self.dim}, ...] latents, got shape {tuple(z.shape)}")
        return z.movedim(1, -1).reshape(-1, self.dim)

    def nearest(self, z: Tensor) -> Tensor:
        """Indices ``[B, ...]`` of the nearest code of each vector of ``z [B, dim, ...]``."""
        flat = self._flatten(z).detach().float()
        indices = _squared_distances(flat, self.codebook.detach().float()).argmin(1)
        return indices.reshape(z.shape[:1] + z.shape[2:])

    def embed(self, indices: Tensor) -> Tensor:
        """The codes of ``indices [B, ...]`` as a ``[B, dim, ...]`` tensor (the inverse of :meth:`nearest`)."""
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def lookup(self, z: Tensor) -> Tensor:
        """Quantise ``z`` without changing any state, with the straight-through gradient (decoding)."""
        quantized = self.embed(self.nearest(z)).to(z.dtype)
        return z + (quantized - z).detach()

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        flat = self._flatten(z).detach().float()
        if self.training and not bool(self.initialized):
            if self.kmeans_init:
                self._initialize(flat, generator)
            self.initialized.fill_(True)
        indices = _squared_distances(flat, self.codebook.detach().float()).argmin(1)
        quantized = self.embed(indices.reshape(z.shape[:1] + z.shape[2:])).to(z.dtype)
        loss = self.beta * F.mse_loss(z, quantized.detach())
        if self.ema_decay is None:
            loss = loss + F.mse_loss(quantized, z.detach())
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        if self.training:
            with torch.no_grad():
                if self.ema_decay is not None:
                    self._ema_update(flat, indices, counts)
                if self.restart_after is not None:
                    self._restart_dead_codes(flat, counts, generator)
        probabilities = counts / counts.sum()
        entropy = -(probabilities * torch.log(probabilities.clamp(min=1e-12))).sum()
        return QuantizerOutput(
            quantized=z + (quantized - z).detach(),
            loss=loss,
            indices=indices.reshape(z.shape[:1] + z.shape[2:]),
            perplexity=entropy.exp(),
            usage=(counts > 0).float().mean(),
        )

    @torch.no_grad()
    def _initialize(self, flat: Tensor, generator: torch.Generator | None) -> None:
        centroids, counts = kmeans(flat, self.num_codes, self.kmeans_iters, generator)
        self.codebook.data.copy_(centroids)
        if self.ema_decay is not None:
            self.ema_cluster_size.copy_(counts)
            self.ema_embed_sum.copy_(centroids * counts[:, None])

    def _ema_update(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        sums = torch.zeros(self.num_codes, self.dim, device=flat.device).index_add_(0, indices, flat)
        self.ema_cluster_size.lerp_(counts, 1 - self.ema_decay)
        self.ema_embed_sum.lerp_(sums, 1 - self.ema_decay)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        self.codebook.copy_(self.ema_embed_sum / smoothed[:, None])

    def _restart_dead_codes(self, flat: Tensor, counts: Tensor, generator: torch.Generator | None) -> None:
        self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.idle_steps >= self.restart_after
        if not dead.any():
            return
        replacements = _random_rows(flat, int(dead.sum()), generator)
        self.codebook.data[dead] = replacements.to(self.codebook.dtype)
        if self.ema_decay is not None:
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = replacements
        self.idle_steps.masked_fill_(dead, 0)
