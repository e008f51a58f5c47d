"""C2ST and MMD: chance level for equal distributions, separation for disjoint ones, a hand-computed MMD."""

import math

import numpy as np
import pytest
import torch

from sbi_inn import diagnostics


def _normal(n, dim=2, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) + shift


def test_c2st_is_chance_for_one_distribution_with_benchmark_defaults():
    acc = diagnostics.c2st(_normal(300, seed=1), _normal(300, seed=2))
    assert isinstance(acc, float)
    assert abs(acc - 0.5) < 0.05


def test_c2st_separates_disjoint_samples_and_is_reproducible():
    a, b = _normal(200, seed=1), _normal(200, shift=8.0, seed=2)
    acc = diagnostics.c2st(a, b, max_iter=200)
    assert acc > 0.95
    assert diagnostics.c2st(a.numpy(), b.numpy(), max_iter=200) == acc
    # a partial shift lies in between
    mid = diagnostics.c2st(a, _normal(200, shift=1.0, seed=3), early_stopping=True)
    assert 0.55 < mid < 0.95


def test_c2st_balance_removes_the_majority_class_advantage():
    """Same distribution, 300 against 100 samples: the classifier learns nothing but the class sizes, so its accuracy
    is the majority share 0.75; balanced (100 against 100), chance 0.5."""
    a, b = _normal(300, seed=1), _normal(100, seed=2)
    assert abs(diagnostics.c2st(a, b, max_iter=200) - 0.75) < 0.05
    assert abs(diagnostics.c2st(a, b, max_iter=200, balance=True) - 0.5) < 0.1


def test_c2st_z_scores_with_the_statistics_of_a():
    """Tiny-scale data: without z-scoring the default MLP barely separates two shifted sets; z-scored, it does."""
    a, b = 1e-4 * _normal(300, seed=1), 1e-4 * _normal(300, shift=3.0, seed=2)
    assert diagnostics.c2st(a, b, max_iter=300) > 0.9
    assert diagnostics.c2st(a, b, max_iter=300, z_score=False) < 0.75


def test_c2st_batched_and_1d_input():
    a = torch.stack([_normal(100, seed=1), _normal(100, seed=2) + 6.0], 1)     # (n, B=2, D)
    b = torch.stack([_normal(100, seed=3), _normal(100, seed=4)], 1)
    acc = diagnostics.c2st_batched(a, b, folds=3, max_iter=100)
    assert acc.shape == (2,) and acc[0] < 0.7 and acc[1] > 0.95
    assert float(acc[1]) == diagnostics.c2st(a[:, 1], b[:, 1], folds=3, max_iter=100)  # observation by observation
    assert diagnostics.c2st(_normal(50, dim=1)[:, 0], _normal(50, dim=1, shift=10.0)[:, 0], folds=2) > 0.9


def test_mmd_hand_computed_three_points():
    a = torch.tensor([[0.0], [1.0], [3.0]])
    b = torch.tensor([[0.0], [2.0], [2.0]])
    imq = lambda d: 1.0 / (1.0 + d**2)          # noqa: E731, bandwidth 1
    kxx = 2 * (imq(1) + imq(3) + imq(2)) / 6
    kyy = 2 * (imq(2) + imq(2) + imq(0)) / 6
    kxy = sum(imq(abs(p - q)) for p in (0, 1, 3) for q in (0, 2, 2)) / 9
    expected = kxx + kyy - 2 * kxy
    assert diagnostics.mmd(a, b, bandwidths=[1.0]) == pytest.approx(expected, rel=1e-10)
    rbf = lambda d, h: math.exp(-(d**2) / (2 * h**2))  # noqa: E731
    h = (0.5, 2.0)
    k = lambda d: (rbf(d, h[0]) + rbf(d, h[1])) / 2    # noqa: E731
    expected_rbf = (2 * (k(1) + k(3) + k(2)) / 6 + 2 * (k(2) + k(2) + k(0)) / 6
                    - 2 * sum(k(abs(p - q)) for p in (0, 1, 3) for q in (0, 2, 2)) / 9)
    assert diagnostics.mmd(a, b, kernel="rbf", bandwidths=h) == pytest.approx(expected_rbf, rel=1e-10)


def test_mmd_near_zero_for_one_distribution_and_positive_otherwise():
    same = diagnostics.mmd(_normal(400, seed=1), _normal(400, seed=2))
    diff = diagnostics.mmd(_normal(400, seed=1), _normal(400, shift=1.0, seed=2))
    assert abs(same) < 0.005
    assert diff > 0.05
    # unequal sample sizes, numpy input, blocked kernel sums
    assert abs(diagnostics.mmd(np.random.default_rng(0).normal(size=(300, 2)), _normal(2100, seed=3))) < 0.01
    batched = diagnostics.mmd_batched(torch.stack([_normal(50, seed=1), _normal(50, seed=2)], 1),
                                      torch.stack([_normal(50, seed=3), _normal(50, shift=3.0, seed=4)], 1))
    assert batched.shape == (2,) and batched[1] > batched[0]
    assert float(batched[1]) == pytest.approx(diagnostics.mmd(_normal(50, seed=2), _normal(50, shift=3.0, seed=4)))


@pytest.mark.parametrize("fn", [diagnostics.c2st, diagnostics.mmd])
def test_two_sample_bad_input(fn):
    with pytest.raises(ValueError, match="same dimension D"):
        fn(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="a contains NaN or inf"):
        fn(torch.full((10, 2), math.nan), torch.zeros(10, 2))
    with pytest.raises(ValueError, match="b is empty"):
        fn(torch.zeros(10, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        fn(torch.zeros(1, 2), torch.zeros(10, 2))


def test_bad_options():
    with pytest.raises(ValueError, match="kernel must be"):
        diagnostics.mmd(torch.zeros(5, 1), torch.ones(5, 1), kernel="laplace")
    with pytest.raises(ValueError, match="folds must be"):
        diagnostics.c2st(torch.zeros(5, 1), torch.ones(5, 1), folds=10)
    with pytest.raises(ValueError, match="share B and D"):
        diagnostics.c2st_batched(torch.zeros(5, 2, 1), torch.zeros(5, 3, 1))
