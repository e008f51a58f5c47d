"""Mean-shift modes: the highest mode of multimodal samples, per observation, independent of chunking and units."""

import pytest
import torch

from sbi_inn.meanshift import mean_shift


def _bimodal(n: int, b: int, d: int, weight: float = 0.7, seed: int = 0) -> torch.Tensor:
    """``(n, b, d)``: a fraction ``weight`` of the mass at +2, the rest at -2, spread 0.3, in every dimension."""
    g = torch.Generator().manual_seed(seed)
    comp = (torch.rand(n, b, 1, generator=g) < weight).to(torch.float32)
    return 2.0 * comp - 2.0 * (1 - comp) + 0.3 * torch.randn(n, b, d, generator=g)


def test_finds_the_highest_mode_not_the_mean():
    samples = _bimodal(2000, 3, 2)
    mode = mean_shift(samples)
    assert mode.shape == (3, 2)
    assert (mode - 2.0).abs().max() < 0.15                 # the heavier mode
    assert (samples.mean(0) - 0.8).abs().max() < 0.15       # where the mean lies, far from either mode
    lighter = mean_shift(-samples)                          # mirrored: the heavier mode is now at -2
    assert (lighter + 2.0).abs().max() < 0.15


def test_gaussian_mode_is_its_mean():
    g = torch.Generator().manual_seed(1)
    loc, sd = torch.tensor([[1.0, -3.0], [10.0, 0.5]]), torch.tensor([0.5, 2.0])
    samples = loc + sd * torch.randn(5000, 2, 2, generator=g)
    assert ((mean_shift(samples) - loc) / sd).abs().max() < 0.15  # a kernel-density mode: within 0.15 sd


# iterations stop once a chunk's leading points move less than ``tol`` bandwidths, so results that should agree
# are compared with a tight ``tol``
def test_each_observation_uses_only_its_own_samples():
    samples = _bimodal(1000, 4, 2)
    samples[:, 2] = samples[:, 2] - 2.0  # shift observation 2's samples so its mode moves to (0, 0)
    mode = mean_shift(samples, tol=1e-7, max_iter=1000)
    assert (mode[2]).abs().max() < 0.15
    torch.testing.assert_close(mode[[0, 1, 3]], mean_shift(samples[:, [0, 1, 3]], tol=1e-7, max_iter=1000),
                               atol=1e-4, rtol=0)


def test_chunking_over_observations_does_not_change_the_modes():
    samples = _bimodal(500, 6, 3, seed=2)
    whole = mean_shift(samples, tol=1e-7, max_iter=1000)
    chunked = mean_shift(samples, tol=1e-7, max_iter=1000, max_elements=500 * 8 * 2)  # two observations per chunk
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=0)
    assert (mean_shift(samples, max_elements=500 * 8 * 2) - whole).abs().max() < 0.01  # default tol: close


def test_equivariant_to_units_and_default_bandwidth_is_scott():
    samples = _bimodal(800, 2, 2, seed=3)
    scale, shift = torch.tensor([100.0, 0.01]), torch.tensor([-5.0, 3.0])
    torch.testing.assert_close(mean_shift(samples * scale + shift), mean_shift(samples) * scale + shift,
                               rtol=1e-3, atol=1e-3 * 100)
    scott = 800 ** (-1.0 / (2 + 4))
    torch.testing.assert_close(mean_shift(samples), mean_shift(samples, bandwidth=scott))
    # a bandwidth wider than the mode separation merges the modes, so the result moves towards the mean
    wide = mean_shift(samples, bandwidth=5.0)
    assert (wide - samples.mean(0)).abs().max() < (mean_shift(samples) - samples.mean(0)).abs().min()


def test_bad_bandwidth():
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        mean_shift(torch.randn(10, 1, 2), bandwidth=0.0)
