"""Linear measurement operators for inverse problems: ``y = A x + sigma_y n`` with ``n`` standard normal.

Every operator acts on a batch ``x [N, *shape]`` (``shape`` is ``[d]`` for vectors, ``[C, H, W]`` for images)
and returns batched results in ``x``'s dtype and device. Besides ``A`` it gives what the posterior samplers
need: the exact transpose ``A^T`` (``<A x, y> == <x, A^T y>``), the Moore-Penrose pseudo-inverse ``A^+``, the
projection onto the measurement-consistent set, ``(A A^T + s I)^{-1}`` and the dense matrix for small shapes.

- :class:`Inpaint`: keep the observed entries (a 0/1 mask); measurements stay embedded at ``x``'s shape.
- :class:`Downsample`: average pooling ("box") or antialiased bicubic downsampling by an integer factor.
- :class:`Blur`: Gaussian blur with zero padding (a symmetric ``A``).
- :class:`Matrix`: a dense ``[m, d]`` matrix on vectors.

These are the linear operators of the diffusion inverse-problem literature (Chung et al., "Diffusion posterior
sampling for general noisy inverse problems", ICLR 2023; Kawar et al., "Denoising diffusion restoration models",
NeurIPS 2022). Where no closed form exists, ``(A A^T + s I)^{-1}`` is solved by conjugate
gradients (:func:`conjugate_gradient`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InverseProblemError

__all__ = ["LinearOperator", "Inpaint", "Downsample", "Blur", "Matrix", "conjugate_gradient"]


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, tolerance: float = 1e-6,
                       max_iterations: int = 500) -> Tensor:
    """Solve ``apply(z) = b`` for a symmetric positive (semi-)definite linear ``apply``, each sample of the batch
    ``b [N, ...]`` on its own (its own step sizes and its own stopping point).

    Conjugate gradients as in Nocedal & Wright, "Numerical Optimization" (2nd ed.), Algorithm 5.2, started at
    ``z = 0``. A sample stops once its residual ``||b - apply(z)|| <= tolerance * ||b||``; the loop ends when all
    have stopped or after ``max_iterations`` steps (then the last iterate is returned, not an error: a
    near-singular system still gets its best approximation so far)."""
    dims = tuple(range(1, b.ndim))

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum(dims, keepdim=True)

    z = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = dot(r, r)
    stop = tolerance**2 * rr
    for _ in range(max_iterations):
        active = rr > stop  # b == 0 gives rr == stop == 0: that sample is solved by z = 0 at once
        if not bool(active.any()):
            break
        q = apply(p)
        pq = dot(p, q)
        step = active & (pq > 0)  # pq <= 0 only for a direction in the null space of a singular system
        alpha = torch.where(step, rr / torch.where(step, pq, torch.ones_like(pq)), torch.zeros_like(pq))
        z = z + alpha * p
        r = r - alpha * q
        rr_new = dot(r, r)
        beta = torch.where(step, rr_new / torch.where(step, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = r + beta * p
        rr = torch.where(step, rr_new, torch.zeros_like(rr))  # a sample that cannot step is done
    return z


def _shape(sample_shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in sample_shape)


class LinearOperator:
    """A linear measurement operator ``A`` with measurement noise std ``sigma_y``: ``y = A x + sigma_y n``.

    Subclasses implement :meth:`forward`, :meth:`adjoint`, :meth:`check` and :meth:`measurement_shape`, and
    override the rest where they have a closed form. The defaults here hold for any ``A``: :meth:`gram_solve`
    by conjugate gradients on ``A A^T + shift I``, :meth:`pinv` as ``A^T (A A^T)^{-1}`` (the pseudo-inverse of
    an ``A`` with full row rank), :meth:`lift` as :meth:`pinv`, :meth:`matrix` by applying :meth:`forward` to
    the identity basis. The conjugate-gradient solves stop at ``cg_tolerance`` (relative residual) or after
    ``cg_max_iterations`` steps; set either on an instance to trade accuracy for time.
    """

    cg_tolerance: float = 1e-6
    cg_max_iterations: int = 500

    def __init__(self, sigma_y: float = 0.0):
        try:
            sigma_y = float(sigma_y)
        except (TypeError, ValueError):
            raise InverseProblemError(f"sigma_y must be a number >= 0, got {sigma_y!r}") from None
        if not (math.isfinite(sigma_y) and sigma_y >= 0):
            raise InverseProblemError(f"sigma_y (the measurement noise std) must be finite and >= 0, got {sigma_y}")
        self.sigma_y = sigma_y
        self._cache: dict[tuple, Tensor] = {}

    def _like(self, name: str, tensor: Tensor, like: Tensor) -> Tensor:
        """``tensor`` in ``like``'s dtype and device, converted once per (dtype, device)."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tensor.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _check_batch(self, x: Tensor) -> None:
        if x.ndim < 1:
            raise InverseProblemError(f"{type(self).__name__} acts on a batch [N, ...], got a scalar")
        self.check(x.shape[1:])

    # -- what every subclass defines --------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """``A x`` for ``x [N, *sample_shape]``: ``[N, *measurement_shape]``."""
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``, the exact transpose of :meth:`forward`: ``<A x, y> == <x, A^T y>``."""
        raise NotImplementedError

    def check(self, sample_shape: Sequence[int]) -> None:
        """Raise :class:`~diffusekit.errors.InverseProblemError` if the operator cannot act on samples of
        ``sample_shape`` (the per-sample shape, without the batch dimension)."""
        raise NotImplementedError

    def measurement_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        """The per-sample shape of ``y = A x`` for samples of ``sample_shape``."""
        raise NotImplementedError

    # -- defaults, overridden where a closed form exists ------------------------------------------------------

    def gram_solve(self, v: Tensor, shift: float = 0.0) -> Tensor:
        """``(A A^T + shift I)^{-1} v`` for ``v`` in measurement space (``shift >= 0``)."""
        if shift < 0:
            raise ValueError(f"gram_solve needs shift >= 0 (A A^T + shift I must be positive definite), got {shift}")
        return conjugate_gradient(lambda u: self.forward(self.adjoint(u)) + shift * u, v,
                                  self.cg_tolerance, self.cg_max_iterations)

    def pinv(self, y: Tensor) -> Tensor:
        """``A^+ y``, the Moore-Penrose pseudo-inverse; here ``A^T (A A^T)^{-1} y``, exact for full row rank."""
        return self.adjoint(self.gram_solve(y))

    def lift(self, y: Tensor) -> Tensor:
        """Measurement space -> sample space: the "up" half of ILVR's low-pass filter (Choi et al., "ILVR:
        Conditioning method for denoising diffusion probabilistic models", ICCV 2021); :meth:`pinv` unless
        overridden."""
        return self.pinv(y)

    def measurement_noise(self, y_like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise shaped like ``y_like``, drawn on the generator's device and moved to ``y_like``'s."""
        device = generator.device if generator is not None else y_like.device
        noise = torch.randn(y_like.shape, generator=generator, device=device, dtype=y_like.dtype)
        return noise.to(y_like.device)

    def flatten(self, y: Tensor) -> Tensor:
        """Measurements ``[N, *measurement_shape]`` as vectors ``[N, m]`` in the order of :meth:`matrix`'s rows."""
        return y.reshape(y.shape[0], -1)

    def matrix(self, sample_shape: Sequence[int]) -> Tensor:
        """The dense ``A`` ``[m, d]`` (float64, CPU) on the flattened sample: column ``j`` is ``A e_j``. Memory
        grows as ``d^2``: for small shapes (tests, exact posteriors) only."""
        shape = _shape(sample_shape)
        self.check(shape)
        d = math.prod(shape)
        basis = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
        return self.flatten(self.forward(basis)).T.contiguous()

    # -- built from the above ---------------------------------------------------------------------------------

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """``x + A^+ (y - A x)``: the point nearest ``x`` with ``A x' = y`` (for an ``A`` with full row rank;
        otherwise the nearest least-squares solution). This is the range-null space decomposition
        ``A^+ y + (I - A^+ A) x`` of Wang et al., "Zero-shot image restoration using denoising diffusion null-space
        model", ICLR 2023."""
        return x + self.pinv(y - self.forward(x))

    def measure(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulated measurements ``A x + sigma_y n`` (no noise is drawn when ``sigma_y == 0``)."""
        y = self.forward(x)
        if self.sigma_y > 0:
            y = y + self.sigma_y * self.measurement_noise(y, generator)
        return y

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        """``[N]``: ``||A x - y||``, the Euclidean norm over the measurement vector of :meth:`flatten`."""
        return self.flatten(self.forward(x) - y).norm(dim=1)


class Inpaint(LinearOperator):
    """Observe the entries where ``mask`` is True: ``A x = mask * x``.

    ``mask`` (bool or 0/1, True = observed) broadcasts against the per-sample shape: ``[d]`` for vectors,
    ``[H, W]``, ``[1, H, W]`` or ``[C, H, W]`` for images. Measurements stay embedded at ``x``'s shape with
    zeros where nothing is observed, so ``A`` is an orthogonal projection: ``A = A^T = A^+`` and
    ``(A A^T + s I)^{-1} v = mask * v / (1 + s)`` for ``v`` in the measurement space. :meth:`flatten` and
    :meth:`matrix` keep the observed entries only (``m`` = the number observed per sample).
    """

    def __init__(self, mask, sigma_y: float = 0.0):
        super().__init__(sigma_y)
        mask = torch.as_tensor(mask)
        if mask.ndim == 0:
            raise InverseProblemError("the inpainting mask is a single value: give one of shape [H, W] or [C, H, W]")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                bad = mask[(mask != 0) & (mask != 1)].reshape(-1)[0].item()
                raise InverseProblemError(f"the inpainting mask must hold only 0/1 or False/True, found {bad}")
            mask = mask != 0
        if not bool(mask.any()):
            raise InverseProblemError(f"the mask of shape {tuple(mask.shape)} observes nothing: mark at least one "
                                      f"entry True (observed)")
        self.mask = mask

    def __repr__(self) -> str:
        return f"Inpaint(mask={tuple(self.mask.shape)}, observed={int(self.mask.sum())}, sigma_y={self.sigma_y})"

    def check(self, sample_shape: Sequence[int]) -> None:
        shape = _shape(sample_shape)
        try:
            fits = torch.broadcast_shapes(self.mask.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise InverseProblemError(f"the mask of shape {tuple(self.mask.shape)} does not fit samples of shape "
                                      f"{shape}: give a mask of the samples' shape, or [H, W] / [1, H, W] for images")

    def measurement_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        self.check(sample_shape)
        return _shape(sample_shape)

    def _mask(self, x: Tensor) -> Tensor:
        self._check_batch(x)
        return self._like("mask", self.mask, x)

    def forward(self, x: Tensor) -> Tensor:
        return self._mask(x) * x

    def adjoint(self, y: Tensor) -> Tensor:
        return self._mask(y) * y

    def pinv(self, y: Tensor) -> Tensor:
        return self._mask(y) * y

    def lift(self, y: Tensor) -> Tensor:
        return self.adjoint(y)

    def gram_solve(self, v: Tensor, shift: float = 0.0) -> Tensor:
        if shift < 0:
            raise ValueError(f"gram_solve needs shift >= 0, got {shift}")
        return self._mask(v) * v / (1.0 + shift)

    def measurement_noise(self, y_like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal on the observed entries, zero elsewhere (noise never leaks into unobserved pixels)."""
        return self._mask(y_like) * super().measurement_noise(y_like, generator)

    def flatten(self, y: Tensor) -> Tensor:
        self._check_batch(y)
        observed = self.mask.to(y.device).expand(y.shape[1:])
        return y[:, observed]


class Downsample(LinearOperator):
    """Downsample images ``[N, C, H, W] -> [N, C, H/f, W/f]`` by an integer ``factor`` f >= 2 dividing H and W.

    ``kind="box"``: average pooling over f x f blocks. Its rows are disjoint and each has squared norm
    ``1/f^2``, so ``A A^T = I / f^2``: the adjoint is nearest upsampling divided by ``f^2``, the pseudo-inverse
    nearest upsampling, ``(A A^T + s I)^{-1} = 1 / (1/f^2 + s)``.

    ``kind="bicubic"``: ``F.interpolate(x, mode="bicubic", antialias=True, align_corners=False)``, the antialiased
    bicubic filter of image libraries. Its adjoint is the vector-Jacobian product of that linear map (exact);
    ``(A A^T + s I)^{-1}`` and ``A^+ = A^T (A A^T)^{-1}`` use conjugate gradients (``A A^T`` is well conditioned:
    its rows are normalised, overlapping filters).

    :meth:`lift` upsamples with the operator's own kind: nearest for box, bicubic for bicubic (ILVR's filter).
    """

    KINDS = ("box", "bicubic")

    def __init__(self, factor: int, kind: str = "box", sigma_y: float = 0.0):
        super().__init__(sigma_y)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 2:
            raise InverseProblemError(f"the downsampling factor must be an integer >= 2, got {factor!r}")
        factor = int(factor)
        if kind not in self.KINDS:
            raise InverseProblemError(f"unknown downsampling kind {kind!r}: use one of {', '.join(self.KINDS)}")
        self.factor = factor
        self.kind = kind

    def __repr__(self) -> str:
        return f"Downsample(factor={self.factor}, kind={self.kind!r}, sigma_y={self.sigma_y})"

    def check(self, sample_shape: Sequence[int]) -> None:
        shape = _shape(sample_shape)
        if len(shape) != 3:
            raise InverseProblemError(f"Downsample acts on images [C, H, W], got samples of shape {shape}")
        _, h, w = shape
        if h % self.factor or w % self.factor:
            raise InverseProblemError(f"the downsampling factor {self.factor} does not divide the resolution "
                                      f"{h}x{w}: pick a factor dividing both sides")

    def measurement_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        self.check(sample_shape)
        c, h, w = _shape(sample_shape)
        return c, h // self.factor, w // self.factor

    def _check_measurements(self, y: Tensor) -> None:
        if y.ndim != 4:
            raise InverseProblemError(f"Downsample's measurements are images [N, C, h, w], got shape "
                                      f"{tuple(y.shape)}")

    def _bicubic(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // self.factor, x.shape[-1] // self.factor
        return F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)

    def _nearest_up(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        self._check_batch(x)
        if self.kind == "box":
            return F.avg_pool2d(x, self.factor)
        return self._bicubic(x)

    def adjoint(self, y: Tensor) -> Tensor:
        self._check_measurements(y)
        if self.kind == "box":
            return self._nearest_up(y) / self.factor**2
        n, c, h, w = y.shape
        # A is linear, so its vector-Jacobian product at any point (zero here) is exactly A^T y
        _, pullback = torch.func.vjp(self._bicubic, y.new_zeros(n, c, h * self.factor, w * self.factor))
        return pullback(y)[0]

    def gram_solve(self, v: Tensor, shift: float = 0.0) -> Tensor:
        if self.kind == "box":
            if shift < 0:
                raise ValueError(f"gram_solve needs shift >= 0, got {shift}")
            self._check_measurements(v)
            return v / (1.0 / self.factor**2 + shift)
        return super().gram_solve(v, shift)

    def pinv(self, y: Tensor) -> Tensor:
        if self.kind == "box":
            self._check_measurements(y)
            return self._nearest_up(y)
        return super().pinv(y)

    def lift(self, y: Tensor) -> Tensor:
        self._check_measurements(y)
        if self.kind == "box":
            return self._nearest_up(y)
        size = (y.shape[-2] * self.factor, y.shape[-1] * self.factor)
        return F.interpolate(y, size=size, mode="bicubic", align_corners=False)


class Blur(LinearOperator):
    """Gaussian blur of images ``[N, C, H, W]``, each channel on its own, with zero padding.

    The kernel is ``g(i) g(j)`` with ``g(i) proportional to exp(-i^2 / (2 sigma^2))`` for ``|i| <= size // 2``,
    normalised to sum to 1; ``size`` is odd, by default ``2 ceil(3 sigma) + 1``. The kernel is symmetric and the
    padding zero, so ``A`` is a symmetric matrix and :meth:`adjoint` is :meth:`forward`. Blur loses the high
    frequencies almost entirely, so ``A`` is badly conditioned: :meth:`pinv` is the damped least-squares
    (Tikhonov) inverse ``(A^T A + damping I)^{-1} A^T y`` with ``damping = 1e-3``, and :meth:`gram_solve`
    (conjugate gradients) should be given a ``shift > 0`` (``sigma_y^2`` in posterior sampling).
    """

    damping: float = 1e-3

    def __init__(self, sigma: float, size: int | None = None, sigma_y: float = 0.0):
        super().__init__(sigma_y)
        try:
            sigma = float(sigma)
        except (TypeError, ValueError):
            raise InverseProblemError(f"the blur sigma must be a number > 0, got {sigma!r}") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise InverseProblemError(f"the blur sigma must be > 0 (pixels), got {sigma}")
        if size is None:
            size = 2 * math.ceil(3 * sigma) + 1
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1 or size % 2 == 0:
            raise InverseProblemError(f"the blur kernel size must be an odd integer >= 1, got {size!r}")
        size = int(size)
        self.sigma = sigma
        self.size = size
        offsets = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-offsets**2 / (2 * sigma**2))
        self._g = g / g.sum()

    def __repr__(self) -> str:
        return f"Blur(sigma={self.sigma}, size={self.size}, sigma_y={self.sigma_y})"

    @property
    def kernel(self) -> Tensor:
        """The 2-D kernel ``[size, size]`` (float64), summing to 1."""
        return torch.outer(self._g, self._g)

    def check(self, sample_shape: Sequence[int]) -> None:
        shape = _shape(sample_shape)
        if len(shape) != 3:
            raise InverseProblemError(f"Blur acts on images [C, H, W], got samples of shape {shape}")

    def measurement_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        self.check(sample_shape)
        return _shape(sample_shape)

    def forward(self, x: Tensor) -> Tensor:
        self._check_batch(x)
        c, r = x.shape[1], self.size // 2
        g = self._like("g", self._g, x)
        # separable: a row pass then a column pass, each a grouped (per-channel) convolution
        x = F.conv2d(x, g.reshape(1, 1, 1, -1).expand(c, 1, 1, self.size), padding=(0, r), groups=c)
        return F.conv2d(x, g.reshape(1, 1, -1, 1).expand(c, 1, self.size, 1), padding=(r, 0), groups=c)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.forward(y)

    def pinv(self, y: Tensor) -> Tensor:
        """Damped least squares ``(A^T A + damping I)^{-1} A^T y`` (``damping = 1e-3``), by conjugate gradients."""
        return conjugate_gradient(lambda u: self.forward(self.forward(u)) + self.damping * u, self.adjoint(y),
                                  self.cg_tolerance, self.cg_max_iterations)


class Matrix(LinearOperator):
    """A dense matrix ``A [m, d]`` acting on vectors ``x [N, d]``: ``y = x A^T``, ``[N, m]``.

    The pseudo-inverse is computed once (``torch.linalg.pinv``, float64); ``(A A^T + s I)^{-1}`` by a Cholesky
    solve, or through the pseudo-inverse of ``A A^T + s I`` when that is singular (rank-deficient ``A``, s = 0).
    """

    def __init__(self, A, sigma_y: float = 0.0):
        super().__init__(sigma_y)
        A = torch.as_tensor(A)
        if A.ndim != 2 or A.shape[0] < 1 or A.shape[1] < 1:
            raise InverseProblemError(f"the measurement matrix must be 2-D [m, d] with m, d >= 1, got shape "
                                      f"{tuple(A.shape)}")
        if not A.is_floating_point():
            A = A.to(torch.float64)
        if not bool(torch.isfinite(A).all()):
            raise InverseProblemError("the measurement matrix has non-finite entries (nan or inf)")
        self.A = A
        a64 = A.to(torch.float64)
        self._pinv = torch.linalg.pinv(a64)
        self._gram = a64 @ a64.T

    def __repr__(self) -> str:
        return f"Matrix(shape={tuple(self.A.shape)}, sigma_y={self.sigma_y})"

    def check(self, sample_shape: Sequence[int]) -> None:
        shape = _shape(sample_shape)
        if shape != (self.A.shape[1],):
            raise InverseProblemError(f"the {self.A.shape[0]}x{self.A.shape[1]} measurement matrix acts on vectors "
                                      f"of shape ({self.A.shape[1]},), got samples of shape {shape}")

    def measurement_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        self.check(sample_shape)
        return (self.A.shape[0],)

    def _check_measurements(self, y: Tensor) -> None:
        if y.ndim != 2 or y.shape[1] != self.A.shape[0]:
            raise InverseProblemError(f"the {self.A.shape[0]}x{self.A.shape[1]} measurement matrix gives "
                                      f"measurements [N, {self.A.shape[0]}], got shape {tuple(y.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_batch(x)
        return x @ self._like("A", self.A, x).T

    def adjoint(self, y: Tensor) -> Tensor:
        self._check_measurements(y)
        return y @ self._like("A", self.A, y)

    def pinv(self, y: Tensor) -> Tensor:
        self._check_measurements(y)
        return y @ self._like("pinv", self._pinv, y).T

    def gram_solve(self, v: Tensor, shift: float = 0.0) -> Tensor:
        if shift < 0:
            raise ValueError(f"gram_solve needs shift >= 0, got {shift}")
        self._check_measurements(v)
        gram = self._gram.to(v.device) + shift * torch.eye(self._gram.shape[0], dtype=torch.float64, device=v.device)
        factor, info = torch.linalg.cholesky_ex(gram)
        rhs = v.to(torch.float64).T
        if int(info) == 0:
            solution = torch.cholesky_solve(rhs, factor)
        else:  # singular: the least-norm solution
            solution = torch.linalg.pinv(gram, hermitian=True) @ rhs
        return solution.T.to(v.dtype)
