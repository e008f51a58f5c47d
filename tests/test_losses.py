"""MMD estimator and kernels (sbi_inn.losses): hand-computed values, zero for equal samples, growth with a shift."""

import math

import pytest
import torch

from sbi_inn.losses import KERNELS, kernel_matrix, mmd


def _kernel_py(kind: str, d: float, h: float) -> float:
    return {"imq": 1 / (1 + d**2 / h**2), "rbf": math.exp(-(d**2) / (2 * h**2)), "exp": math.exp(-d / h),
            "energy": -((d / h) ** 0.5)}[kind]


def _mmd_py(a, b, kind, widths, unbiased):
    """Loop implementation of the V- and U-statistics (Gretton et al. 2012, eq. 3 / Lemma 6)."""

    def k(p, q):
        return sum(_kernel_py(kind, math.dist(p, q), h) for h in widths)

    n, m = len(a), len(b)
    if not unbiased:
        return (sum(k(p, q) for p in a for q in a) / n**2 + sum(k(p, q) for p in b for q in b) / m**2
                - 2 * sum(k(p, q) for p in a for q in b) / (n * m))
    aa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    bb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    if n == m:
        ab = sum(k(a[i], b[j]) for i in range(n) for j in range(m) if i != j) / (n * (n - 1))
    else:
        ab = sum(k(p, q) for p in a for q in b) / (n * m)
    return aa + bb - 2 * ab


def test_mmd_hand_computed_1d():
    # a = {0, 2}, b = {1, 1}, IMQ with h = 1: k(0) = 1, k(1) = 1/2, k(2) = 1/5
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]])
    # V: (1 + 1 + .2 + .2) / 4 + 1 - 2 * 0.5 = 0.6
    assert mmd(a, b, widths=[1.0]).item() == pytest.approx(0.6, abs=1e-6)
    # U: 0.2 + 1 - 2 * 0.5 = 0.2
    assert mmd(a, b, widths=[1.0], unbiased=True).item() == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("kind", ["imq", "rbf", "exp", "energy"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_loop_on_three_points(kind, unbiased):
    a = [(0.0, 0.0), (1.0, 0.5), (-0.5, 2.0)]
    b = [(0.3, -0.2), (2.0, 1.0), (1.0, 1.0)]
    widths = (0.5, 1.3)
    got = mmd(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), kernel=kind,
              widths=widths, unbiased=unbiased).item()
    assert got == pytest.approx(_mmd_py(a, b, kind, widths, unbiased), rel=1e-9, abs=1e-12)
    # different sample sizes (eq. 3 for the cross term)
    got = mmd(torch.tensor(a, dtype=torch.float64), torch.tensor(b[:2], dtype=torch.float64), kernel=kind,
              widths=widths, unbiased=unbiased).item()
    assert got == pytest.approx(_mmd_py(a, b[:2], kind, widths, unbiased), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind", sorted(KERNELS))
@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_zero_for_equal_samples_and_grows_with_shift(kind, unbiased, gen):
    a = torch.randn(100, 3, generator=gen)
    assert mmd(a, a.clone(), kernel=kind, unbiased=unbiased).abs().item() < 1e-5
    values = [mmd(a, torch.randn(100, 3, generator=gen) + s, kernel=kind, widths=(0.2, 0.9), unbiased=unbiased)
              for s in (0.0, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]
    if unbiased:  # centred at 0 for equal distributions; the V-statistic has a positive bias
        assert values[1] > 5 * abs(values[0])


@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_mmd_gradients_finite_with_duplicate_points(kind):
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    mmd(a, b, kernel=kind).backward()
    assert torch.isfinite(a.grad).all()


def test_kernel_matrix_shape_and_errors():
    a, b = torch.zeros(4, 2), torch.ones(3, 2)
    assert kernel_matrix(a, b).shape == (4, 3)
    with pytest.raises(ValueError, match="unknown kernel"):
        mmd(a, b, kernel="nope")
    with pytest.raises(ValueError, match="widths"):
        mmd(a, b, widths=[0.0])
    with pytest.raises(ValueError, match="samples"):
        mmd(a, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(a[:1], b, unbiased=True)


@pytest.mark.parametrize("kind", ["imq", "rbf"])
def test_fast_kernel_gradient_matches_autograd(kind):
    from sbi_inn.losses import KERNELS, _sq_dists

    a = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64)
    torch.autograd.gradcheck(lambda t: kernel_matrix(t, b, kernel=kind, widths=(0.3, 1.1)), (a,))
    plain = sum(KERNELS[kind](_sq_dists(a, b), h) for h in (0.3, 1.1))
    assert torch.allclose(kernel_matrix(a, b, kernel=kind, widths=(0.3, 1.1)), plain)
