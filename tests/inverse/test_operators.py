"""Measurement operators against dense linear algebra, closed forms and hand-written filters."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffusekit.errors import InverseProblemError, UserError
from diffusekit.inverse.operators import Blur, Downsample, Inpaint, Matrix, conjugate_gradient

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed), dtype=F64)


def _image_mask(*shape, seed=1):
    mask = torch.rand(*shape, generator=_gen(seed)) < 0.6
    mask.view(-1)[0] = True
    return mask


def _full_rank_matrix(m, d, seed=2):
    return _randn(m, d, seed=seed)


# (name, factory, per-sample shape): every operator kind, every mask layout
CASES = [
    ("inpaint-hw", lambda: Inpaint(_image_mask(6, 5)), (3, 6, 5)),
    ("inpaint-1hw", lambda: Inpaint(_image_mask(1, 6, 5).float()), (2, 6, 5)),
    ("inpaint-chw", lambda: Inpaint(_image_mask(2, 6, 5)), (2, 6, 5)),
    ("inpaint-vector", lambda: Inpaint(_image_mask(7)), (7,)),
    ("box-2", lambda: Downsample(2), (2, 8, 6)),
    ("box-3", lambda: Downsample(3), (1, 9, 6)),
    ("bicubic-2", lambda: Downsample(2, "bicubic"), (2, 8, 6)),
    ("bicubic-4", lambda: Downsample(4, "bicubic"), (1, 8, 8)),
    ("blur", lambda: Blur(1.0), (2, 7, 6)),
    ("blur-size3", lambda: Blur(0.7, size=3), (1, 5, 6)),
    ("matrix-wide", lambda: Matrix(_full_rank_matrix(4, 7)), (7,)),
    ("matrix-tall", lambda: Matrix(_full_rank_matrix(9, 5)), (5,)),
]
IDS = [case[0] for case in CASES]
FULL_ROW_RANK = ["inpaint-hw", "inpaint-chw", "inpaint-vector", "box-2", "box-3", "bicubic-2", "bicubic-4",
                 "matrix-wide"]


def _tight(op):
    op.cg_tolerance = 1e-13
    op.cg_max_iterations = 2000
    return op


def _pair(factory, shape, n=3):
    op = _tight(factory())
    x = _randn(n, *shape, seed=3)
    y = _randn(n, *op.measurement_shape(shape), seed=4)
    return op, x, y


@pytest.mark.parametrize("name, factory, shape", CASES, ids=IDS)
def test_adjoint_is_the_exact_transpose(name, factory, shape):
    op, x, y = _pair(factory, shape)
    lhs = (op.forward(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)


@pytest.mark.parametrize("name, factory, shape", CASES, ids=IDS)
def test_matrix_matches_forward_and_adjoint(name, factory, shape):
    op, x, y = _pair(factory, shape)
    matrix = op.matrix(shape)
    assert matrix.dtype == F64 and matrix.shape[1] == math.prod(shape)
    torch.testing.assert_close(op.flatten(op.forward(x)), x.reshape(len(x), -1) @ matrix.T)
    torch.testing.assert_close(op.adjoint(y).reshape(len(y), -1), op.flatten(y) @ matrix)


def test_inpaint_matrix_rows_are_the_observed_identity_rows():
    mask = _image_mask(1, 4, 3)
    op = Inpaint(mask)
    matrix = op.matrix((2, 4, 3))
    observed = mask.expand(2, 4, 3).reshape(-1).nonzero().squeeze(1)
    assert torch.equal(matrix, torch.eye(24, dtype=F64)[observed])
    x = _randn(2, 2, 4, 3)
    assert torch.equal(op.flatten(x), x.reshape(2, -1)[:, observed])


@pytest.mark.parametrize("name, factory, shape", [c for c in CASES if not c[0].startswith("blur")],
                         ids=[i for i in IDS if not i.startswith("blur")])
def test_pinv_is_the_moore_penrose_pseudo_inverse(name, factory, shape):
    op, _, y = _pair(factory, shape)
    reference = op.flatten(y) @ torch.linalg.pinv(op.matrix(shape)).T
    torch.testing.assert_close(op.pinv(y).reshape(len(y), -1), reference, rtol=1e-9, atol=1e-9)


def test_matrix_pinv_of_a_rank_deficient_matrix():
    a = _randn(6, 2) @ _randn(2, 5, seed=1)  # rank 2
    op = Matrix(a)
    y = _randn(3, 6, seed=5)
    torch.testing.assert_close(op.pinv(y), y @ torch.linalg.pinv(a).T)
    # gram_solve without shift falls back to the least-norm solution of the singular A A^T z = v
    torch.testing.assert_close(op.gram_solve(y), y @ torch.linalg.pinv(a @ a.T).T)


@pytest.mark.parametrize("name, factory, shape", [c for c in CASES if c[0].startswith("blur")],
                         ids=[i for i in IDS if i.startswith("blur")])
def test_blur_pinv_is_damped_least_squares(name, factory, shape):
    op, _, y = _pair(factory, shape)
    matrix = op.matrix(shape)
    normal = matrix.T @ matrix + 1e-3 * torch.eye(matrix.shape[1], dtype=F64)
    reference = torch.linalg.solve(normal, matrix.T @ y.reshape(len(y), -1).T).T
    torch.testing.assert_close(op.pinv(y).reshape(len(y), -1), reference, rtol=1e-8, atol=1e-8)


def test_default_cg_tolerance_is_accurate_enough():
    """With the default tolerance (1e-6 relative residual) the solves are accurate to ~1e-5 on these shapes."""
    for op, shape in [(Downsample(2, "bicubic"), (1, 8, 8)), (Blur(1.0), (1, 6, 6))]:
        y = _randn(2, *op.measurement_shape(shape))
        matrix = op.matrix(shape)
        gram = matrix @ matrix.T + 0.1 * torch.eye(len(matrix), dtype=F64)
        reference = torch.linalg.solve(gram, y.reshape(2, -1).T).T
        torch.testing.assert_close(op.gram_solve(y, 0.1).reshape(2, -1), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, factory, shape", [c for c in CASES if c[0] in FULL_ROW_RANK],
                         ids=FULL_ROW_RANK)
def test_project_is_the_nearest_consistent_point(name, factory, shape):
    op, x, y = _pair(factory, shape)
    projected = op.project(x, y)
    # consistent: A x' = y (Inpaint: on the observed entries)
    torch.testing.assert_close(op.flatten(op.forward(projected)), op.flatten(y), rtol=1e-9, atol=1e-9)
    # nearest: x' = x + M^T (M M^T)^{-1} (y - M x), the minimum-norm correction, written out densely
    matrix = op.matrix(shape)
    flat_x = x.reshape(len(x), -1)
    correction = matrix.T @ torch.linalg.solve(matrix @ matrix.T, (op.flatten(y) - flat_x @ matrix.T).T)
    torch.testing.assert_close(projected.reshape(len(x), -1), flat_x + correction.T, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, factory, shape", CASES, ids=IDS)
def test_gram_solve_against_a_dense_solve(name, factory, shape):
    op, _, v = _pair(factory, shape)
    matrix = op.matrix(shape)
    gram = matrix @ matrix.T
    # a blur's A A^T is nearly singular: solve it only with a shift, as posterior sampling does (sigma_y^2)
    shifts = (0.05, 0.5) if name.startswith("blur") or name == "matrix-tall" else (0.0, 0.5)
    for shift in shifts:
        reference = torch.linalg.solve(gram + shift * torch.eye(len(gram), dtype=F64), op.flatten(v).T).T
        torch.testing.assert_close(op.flatten(op.gram_solve(v, shift)), reference, rtol=1e-8, atol=1e-8)


def test_inpaint_closed_forms():
    mask = _image_mask(5, 4)
    op = Inpaint(mask)
    x = _randn(2, 3, 5, 4)
    m = mask.to(F64)
    assert torch.equal(op.forward(x), m * x)
    assert torch.equal(op.adjoint(x), m * x)
    assert torch.equal(op.pinv(x), m * x)
    assert torch.equal(op.lift(x), m * x)
    torch.testing.assert_close(op.gram_solve(x, 0.25), m * x / 1.25)
    # the projection replaces the observed entries and keeps the rest
    y = _randn(2, 3, 5, 4, seed=9)
    torch.testing.assert_close(op.project(x, y), m * y + (1 - m) * x)


def test_box_downsample_is_block_averaging():
    x = _randn(2, 3, 12, 8)
    for factor in (2, 4):
        op = Downsample(factor)
        blocks = x.reshape(2, 3, 12 // factor, factor, 8 // factor, factor).mean(dim=(3, 5))
        torch.testing.assert_close(op.forward(x), blocks)
        # pinv = lift = nearest upsampling: every pixel of a block takes the block's value
        y = _randn(2, 3, 12 // factor, 8 // factor, seed=1)
        up = y[:, :, :, None, :, None].expand(2, 3, 12 // factor, factor, 8 // factor, factor).reshape(2, 3, 12, 8)
        torch.testing.assert_close(op.pinv(y), up)
        torch.testing.assert_close(op.lift(y), up)
        torch.testing.assert_close(op.adjoint(y), up / factor**2)
        torch.testing.assert_close(op.gram_solve(y, 0.1), y / (1 / factor**2 + 0.1))


def _keys_cubic(s, a=-0.5):
    """Keys' cubic convolution kernel ("Cubic convolution interpolation for digital image processing", 1981)
    with a = -0.5."""
    s = abs(s)
    if s <= 1:
        return (a + 2) * s**3 - (a + 3) * s**2 + 1
    if s < 2:
        return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return 0.0


def _antialiased_bicubic_weights(size, factor):
    """[size // factor, size]: the cubic kernel stretched by the factor (antialiasing), centred on each output
    pixel's centre, cut at the border and renormalised to sum to 1."""
    weights = torch.zeros(size // factor, size, dtype=F64)
    for i in range(size // factor):
        centre = (i + 0.5) * factor
        for j in range(size):
            weights[i, j] = _keys_cubic((j + 0.5 - centre) / factor)
        weights[i] /= weights[i].sum()
    return weights


def test_bicubic_downsample_is_the_antialiased_cubic_filter_written_out():
    x = _randn(2, 3, 12, 8)
    for factor in (2, 4):
        op = Downsample(factor, "bicubic")
        rows, cols = _antialiased_bicubic_weights(12, factor), _antialiased_bicubic_weights(8, factor)
        reference = torch.einsum("ih,nchw,jw->ncij", rows, x, cols)
        torch.testing.assert_close(op.forward(x), reference, rtol=1e-12, atol=1e-12)
        expected = F.interpolate(x, size=(12 // factor, 8 // factor), mode="bicubic", antialias=True,
                                 align_corners=False)
        torch.testing.assert_close(op.forward(x), expected)
    # lift: bicubic upsampling back to the full resolution
    y = _randn(1, 2, 4, 3)
    torch.testing.assert_close(Downsample(2, "bicubic").lift(y),
                               F.interpolate(y, size=(8, 6), mode="bicubic", align_corners=False))


def test_bicubic_adjoint_works_without_gradients():
    op = Downsample(2, "bicubic")
    y = _randn(1, 1, 4, 4)
    with torch.no_grad():
        inside = op.adjoint(y)
    torch.testing.assert_close(inside, op.adjoint(y))
    torch.testing.assert_close(inside.reshape(1, -1), y.reshape(1, -1) @ op.matrix((1, 8, 8)))


def test_blur_kernel_and_one_pixel_by_hand():
    sigma = 1.3
    op = Blur(sigma)
    assert op.size == 2 * math.ceil(3 * sigma) + 1 == 9
    torch.testing.assert_close(op.kernel.sum(), torch.tensor(1.0, dtype=F64))
    x = _randn(1, 2, 10, 11)
    out = op.forward(x)
    r = op.size // 2
    norm = sum(math.exp(-(a * a + b * b) / (2 * sigma**2)) for a in range(-r, r + 1) for b in range(-r, r + 1))
    for c, i, j in [(0, 5, 5), (1, 1, 9), (0, 0, 0)]:  # interior, near a corner, a corner (zero padding)
        value = sum(math.exp(-(a * a + b * b) / (2 * sigma**2)) * x[0, c, i + a, j + b].item()
                    for a in range(-r, r + 1) for b in range(-r, r + 1)
                    if 0 <= i + a < 10 and 0 <= j + b < 11) / norm
        assert out[0, c, i, j].item() == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert Blur(0.5, size=5).size == 5


def test_measure_adds_sigma_y_times_standard_noise():
    mask = _image_mask(1, 4, 4)
    x = _randn(1, 2, 4, 4).expand(4000, 2, 4, 4)
    sigma_y = 0.3
    op = Inpaint(mask, sigma_y=sigma_y)
    noise = (op.measure(x, _gen(1)) - op.forward(x)) / sigma_y
    off = ~mask.expand(2, 4, 4)
    assert torch.equal(noise[:, off], torch.zeros_like(noise[:, off]))
    observed = noise[:, ~off]
    assert abs(observed.mean().item()) < 0.01  # 4000 * 2 * observed entries: standard error ~0.003
    assert abs(observed.std().item() - 1) < 0.01
    # independent across entries
    corr = torch.corrcoef(observed[:, :2].T)[0, 1]
    assert abs(corr.item()) < 0.06
    assert torch.equal(op.measure(x, _gen(1)), op.measure(x, _gen(1)))  # reproducible from the generator
    assert torch.equal(op.measurement_noise(x[:3], _gen(2))[:, off], torch.zeros(3, int(off.sum()), dtype=F64))


def test_measure_for_vectors_and_noise_free_measurements():
    a = _full_rank_matrix(3, 5)
    x = _randn(1, 5).expand(5000, 5)
    op = Matrix(a, sigma_y=2.0)
    y = op.measure(x, _gen(3))
    assert y.shape == (5000, 3)
    noise = (y - x @ a.T) / 2.0
    assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1) < 0.02
    assert torch.equal(Matrix(a).measure(x), Matrix(a).forward(x))
    assert torch.equal(Downsample(2).measure(_randn(2, 1, 4, 4)), Downsample(2).forward(_randn(2, 1, 4, 4)))


def test_vectors():
    mask = torch.tensor([True, False, True, True, False])
    op = Inpaint(mask)
    x = _randn(4, 5)
    assert torch.equal(op.forward(x), x * mask)
    assert torch.equal(op.flatten(x), x[:, [0, 2, 3]])
    assert torch.equal(op.matrix((5,)), torch.eye(5, dtype=F64)[[0, 2, 3]])
    a = _full_rank_matrix(3, 5)
    mat = Matrix(a)
    torch.testing.assert_close(mat.forward(x), x @ a.T)
    torch.testing.assert_close(mat.adjoint(x[:, :3]), x[:, :3] @ a)
    assert torch.equal(mat.matrix((5,)), a)
    assert mat.measurement_shape((5,)) == (3,) and op.measurement_shape((5,)) == (5,)


def test_residual_is_the_euclidean_norm_over_measurements():
    op = Downsample(2)
    x, y = _randn(3, 1, 4, 4), _randn(3, 1, 2, 2, seed=1)
    expected = torch.sqrt(((op.forward(x) - y) ** 2).sum(dim=(1, 2, 3)))
    torch.testing.assert_close(op.residual(x, y), expected)
    # Inpaint: entries of y outside the mask are not measurements and do not count
    mask = _image_mask(4, 4)
    inpaint = Inpaint(mask)
    x, y = _randn(3, 2, 4, 4), _randn(3, 2, 4, 4, seed=1)
    expected = torch.sqrt((((x - y) * mask) ** 2).sum(dim=(1, 2, 3)))
    torch.testing.assert_close(inpaint.residual(x, y), expected)


def test_residual_gradient_is_the_adjoint_of_the_residual():
    """d/dx ||A x - y||^2 / 2 = A^T (A x - y): the gradient DPS follows, through autograd."""
    for op, shape in [(Downsample(2, "bicubic"), (1, 8, 8)), (Blur(1.0), (1, 6, 6)),
                      (Inpaint(_image_mask(6, 6)), (2, 6, 6)), (Matrix(_full_rank_matrix(3, 4)), (4,))]:
        x = _randn(2, *shape).requires_grad_(True)
        y = _randn(2, *op.measurement_shape(shape), seed=1)
        (grad,) = torch.autograd.grad((op.residual(x, y) ** 2).sum() / 2, x)
        torch.testing.assert_close(grad, op.adjoint(op.forward(x.detach()) - y))


@pytest.mark.parametrize("name, factory, shape", CASES, ids=IDS)
def test_dtype_is_kept(name, factory, shape):
    op = factory()
    x = _randn(2, *shape).float()
    y = _randn(2, *op.measurement_shape(shape)).float()
    for out in (op.forward(x), op.adjoint(y), op.pinv(y), op.gram_solve(y, 0.1), op.project(x, y), op.lift(y),
                op.measure(x, _gen()), op.residual(x, y), op.measurement_noise(y, _gen())):
        assert out.dtype == torch.float32


def test_conjugate_gradient_per_sample():
    m = _randn(6, 6)
    spd = m @ m.T + 0.5 * torch.eye(6, dtype=F64)
    b = _randn(3, 6, seed=1)
    b[1] = 0  # a zero right-hand side is solved at once and does not stall the others
    z = conjugate_gradient(lambda v: v @ spd, b, tolerance=1e-12, max_iterations=100)
    torch.testing.assert_close(z, torch.linalg.solve(spd, b.T).T, rtol=1e-9, atol=1e-9)
    assert torch.equal(z[1], torch.zeros(6, dtype=F64))


def _raises(match, call):
    with pytest.raises(InverseProblemError, match=match) as info:
        call()
    assert isinstance(info.value, UserError)


def test_errors_name_the_numbers():
    _raises(r"\(4, 4\) does not fit samples of shape \(3, 5, 5\)", lambda: Inpaint(torch.ones(4, 4)).check((3, 5, 5)))
    _raises(r"\(2, 4, 4\) does not fit samples of shape \(3, 4, 4\)",
            lambda: Inpaint(torch.ones(2, 4, 4)).forward(torch.zeros(1, 3, 4, 4)))
    _raises(r"\(5,\) does not fit samples of shape \(4,\)", lambda: Inpaint(torch.ones(5)).forward(torch.zeros(2, 4)))
    _raises("observes nothing", lambda: Inpaint(torch.zeros(4, 4, dtype=torch.bool)))
    _raises("0/1.*0.5", lambda: Inpaint(torch.full((2, 2), 0.5)))
    _raises(r"factor 3 does not divide the resolution 8x9", lambda: Downsample(3).check((1, 8, 9)))
    _raises(r"factor 3 does not divide the resolution 9x8", lambda: Downsample(3).forward(torch.zeros(1, 1, 9, 8)))
    _raises("integer >= 2, got 1", lambda: Downsample(1))
    _raises("integer >= 2, got 2.5", lambda: Downsample(2.5))
    _raises("unknown downsampling kind 'bilinear'", lambda: Downsample(2, "bilinear"))
    _raises(r"images \[C, H, W\], got samples of shape \(16,\)", lambda: Downsample(2).check((16,)))
    _raises(r"images \[C, H, W\], got samples of shape \(4, 4\)", lambda: Blur(1.0).forward(torch.zeros(2, 4, 4)))
    _raises("sigma must be > 0.*got 0.0", lambda: Blur(0))
    _raises("sigma must be > 0.*got -1.0", lambda: Blur(-1.0))
    _raises("odd integer >= 1, got 4", lambda: Blur(1.0, size=4))
    _raises(r"2-D \[m, d\].*got shape \(3,\)", lambda: Matrix(torch.ones(3)))
    _raises(r"3x5 measurement matrix acts on vectors of shape \(5,\), got samples of shape \(4,\)",
            lambda: Matrix(torch.ones(3, 5)).forward(torch.zeros(2, 4)))
    _raises(r"measurements \[N, 3\], got shape \(2, 4\)", lambda: Matrix(torch.ones(3, 5)).adjoint(torch.zeros(2, 4)))
    _raises("sigma_y.*>= 0, got -0.1", lambda: Inpaint(torch.ones(3), sigma_y=-0.1))
