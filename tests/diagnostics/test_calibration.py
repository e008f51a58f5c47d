"""Calibration, SBC and HPD coverage on a conjugate Normal model whose exact posterior is known."""

import math

import numpy as np
import pytest
import torch

from sbi_inn import diagnostics

NOISE = 0.5


def conjugate(num_obs: int, num_samples: int, widen: float = 1.0, dim: int = 2, seed: int = 0):
    """x* ~ N(0, 1), y = x* + N(0, s^2); samples from N(y / (1 + s^2), widen^2 s^2 / (1 + s^2)) per dimension."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_obs, dim, generator=g)
    y = x + NOISE * torch.randn(num_obs, dim, generator=g)
    mean = y / (1 + NOISE**2)
    std = math.sqrt(NOISE**2 / (1 + NOISE**2))
    samples = mean + widen * std * torch.randn(num_samples, num_obs, dim, generator=g)
    return samples, x, mean, widen * std


def test_calibrated_posterior_has_small_calibration_error():
    samples, x, _, _ = conjugate(2000, 500)
    err = diagnostics.calibration_error(samples, x)
    assert err < 0.02
    summary = diagnostics.calibration_summary(samples, x)
    assert summary["median"] == pytest.approx(err)
    assert abs(summary["signed_mean"]) < 0.02
    assert summary["median_per_parameter"].shape == (2,)
    assert diagnostics.calibration_error(samples, x, reduce="mean") < 0.02


@pytest.mark.parametrize("widen, sign", [(0.5, -1), (2.0, 1)])
def test_over_and_under_confidence_have_the_right_sign(widen, sign):
    samples, x, _, _ = conjugate(1000, 200, widen=widen)
    summary = diagnostics.calibration_summary(samples, x)
    assert sign * summary["signed_mean"] > 0.05
    assert (sign * summary["signed_mean_per_parameter"] > 0.05).all()
    assert summary["median"] > 0.05
    alphas, inl = diagnostics.calibration_curve(samples, x)
    assert (sign * (inl - alphas[:, None])[10:-10] > 0).all()


def test_calibration_curve_shapes_and_numpy_input():
    samples, x, _, _ = conjugate(50, 40, dim=3)
    alphas, inl = diagnostics.calibration_curve(samples.numpy(), x.numpy(), alphas=np.array([0.1, 0.5, 0.9]))
    assert isinstance(inl, torch.Tensor) and inl.shape == (3, 3)
    assert torch.equal(alphas, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    torch.testing.assert_close(inl, diagnostics.calibration_curve(samples, x, alphas=[0.1, 0.5, 0.9])[1])
    # alpha_inl is the mean over observations of the per-observation inclusion indicators
    ind = diagnostics.coverage_indicators(samples, x, alphas)
    torch.testing.assert_close(inl, ind.double().mean(0))
    torch.testing.assert_close(diagnostics.calibration_curve(samples, x)[0], torch.arange(1, 100) / 100,
                               check_dtype=False)
    # params restricts the pool to those parameters: the same as dropping the others
    one = diagnostics.calibration_error(samples, x, params=[1])
    assert one == diagnostics.calibration_error(samples[..., 1:2], x[:, 1:2])
    assert one != diagnostics.calibration_error(samples[..., 0:1], x[:, 0:1])


def test_summary_reductions_follow_their_definitions():
    samples, x, _, _ = conjugate(300, 100, widen=0.7, dim=2)
    alphas, inl = diagnostics.calibration_curve(samples, x)
    dev = inl - alphas[:, None]
    summary = diagnostics.calibration_summary(samples, x)
    assert summary["median"] == pytest.approx(float(dev.abs().quantile(0.5)))
    assert summary["mean"] == pytest.approx(float(dev.abs().mean()))
    assert summary["signed_mean"] == pytest.approx(float(dev.mean())) and summary["signed_mean"] < -0.05
    assert summary["max"] == pytest.approx(float(dev.abs().max()))
    torch.testing.assert_close(summary["median_per_parameter"], dev.abs().quantile(0.5, dim=0))
    torch.testing.assert_close(summary["mean_per_parameter"], dev.abs().mean(0))
    torch.testing.assert_close(summary["signed_mean_per_parameter"], dev.mean(0))
    assert diagnostics.calibration_error(samples, x, reduce="mean") == pytest.approx(summary["mean"])


def test_interval_inclusion_matches_numpy_quantiles():
    g = torch.Generator().manual_seed(3)
    samples = torch.randn(101, 30, 2, generator=g, dtype=torch.float64)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    alphas = torch.tensor([0.3, 0.8], dtype=torch.float64)
    ind = diagnostics.coverage_indicators(samples, x, alphas)
    for k, a in enumerate(alphas.tolist()):
        lo = np.quantile(samples.numpy(), (1 - a) / 2, axis=0)
        hi = np.quantile(samples.numpy(), (1 + a) / 2, axis=0)
        expected = (lo <= x.numpy()) & (x.numpy() <= hi)
        assert np.array_equal(ind[:, k].numpy(), expected)


def test_sbc_ranks_uniform_when_calibrated_and_not_when_over_confident():
    n = 100
    samples, x, _, _ = conjugate(1000, n)
    ranks = diagnostics.sbc_ranks(samples, x)
    assert ranks.shape == (1000, 2) and ranks.dtype == torch.int64
    # uniform on {0, ..., n}: mean n / 2 (standard error 29 / sqrt(1000) ~ 0.9), both ends reached
    assert (ranks.double().mean(0) - n / 2).abs().max() < 4
    assert int(ranks.min()) == 0 and int(ranks.max()) == n
    assert (diagnostics.sbc_uniformity(ranks, n) > 0.01).all()
    assert (diagnostics.sbc_uniformity(ranks, n, test="ks") > 0.01).all()
    bad, x_bad, _, _ = conjugate(1000, n, widen=0.5)
    bad_ranks = diagnostics.sbc_ranks(bad, x_bad)
    assert (diagnostics.sbc_uniformity(bad_ranks, n) < 1e-6).all()
    assert (diagnostics.sbc_uniformity(bad_ranks, n, test="ks") < 1e-6).all()


def test_sbc_ranks_count_samples_below_truth():
    samples = torch.tensor([[[0.0]], [[1.0]], [[2.0]]])
    assert diagnostics.sbc_ranks(samples, torch.tensor([[1.5]])).item() == 2
    with pytest.raises(ValueError, match="ranks must be integers in"):
        diagnostics.sbc_uniformity(torch.tensor([[5]]), n=3)


def test_expected_coverage_of_calibrated_gaussian_matches_alpha():
    samples, x, mean, std = conjugate(2000, 300, dim=1)
    dist = torch.distributions.Normal(mean[:, 0], std)
    lp_samples = dist.log_prob(samples[..., 0])            # (n, B)
    lp_true = dist.log_prob(x[:, 0])                        # (B,)
    alphas, cov = diagnostics.expected_coverage(lp_samples, lp_true)
    assert cov.shape == alphas.shape == (99,)
    assert (cov - alphas).abs().max() < 0.05
    # an over-confident posterior covers less
    narrow = torch.distributions.Normal(mean[:, 0], 0.5 * std)
    _, cov_narrow = diagnostics.expected_coverage(narrow.log_prob(mean[:, 0] + 0.5 * (samples[..., 0] - mean[:, 0])),
                                                  narrow.log_prob(x[:, 0]))
    assert (cov_narrow - alphas)[10:-10].max() < 0 and (cov_narrow - alphas).mean() < -0.1


@pytest.mark.parametrize(
    "samples, x_true, match",
    [
        (torch.zeros(10, 4, 2), torch.zeros(4, 3), r"x_true must have shape \(B, D\) = \(4, 2\)"),
        (torch.zeros(10, 4, 2), torch.zeros(5, 2), r"got \(5, 2\)"),
        (torch.zeros(10, 2), torch.zeros(10, 2), r"samples must have 3 dimensions"),
        (torch.zeros(0, 4, 2), torch.zeros(4, 2), "samples is empty"),
        (torch.zeros(1, 4, 2), torch.zeros(4, 2), "at least 2 draws"),
        (torch.full((10, 4, 2), math.nan), torch.zeros(4, 2), "samples contains NaN or inf"),
        (torch.zeros(10, 4, 2), torch.full((4, 2), math.inf), "x_true contains NaN or inf"),
    ],
)
def test_bad_input_raises_clear_errors(samples, x_true, match):
    with pytest.raises(ValueError, match=match):
        diagnostics.calibration_error(samples, x_true)


def test_bad_alphas_and_reduce():
    samples, x, _, _ = conjugate(10, 10)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        diagnostics.calibration_curve(samples, x, alphas=[0.0, 0.5])
    with pytest.raises(ValueError, match="reduce must be"):
        diagnostics.calibration_error(samples, x, reduce="max")
    with pytest.raises(ValueError, match="log_prob_true must have shape"):
        diagnostics.expected_coverage(torch.zeros(10, 3), torch.zeros(4))
