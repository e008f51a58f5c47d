"""Exact rejection sampling under Gaussian noise (``reference.likelihood_rejection``) against analytic posteriors.

The oracle: ``x ~ N(0, 1)`` per dimension and ``y = x + N(0, sigma^2)``, whose posterior is
``N(y / (1 + sigma^2), sigma^2 / (1 + sigma^2))`` per dimension and whose evidence is ``N(y; 0, 1 + sigma^2)``.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Independent, Normal

from sbi_inn import reference

PRIOR_1D = Independent(Normal(torch.zeros(1), torch.ones(1)), 1)
PRIOR_2D = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)


def identity(x):
    return x


def posterior_moments(y, sigma):
    y, sigma = np.asarray(y, dtype=float), np.asarray(sigma, dtype=float)
    return y / (1 + sigma**2), np.sqrt(sigma**2 / (1 + sigma**2))


def test_samples_follow_the_analytic_posterior_in_one_dimension():
    sigma, y = 0.5, 1.0
    res = reference.likelihood_rejection(identity, PRIOR_1D, torch.tensor([y]), 20_000, noise_std=sigma,
                                         chunk_size=50_000, seed=0)
    mean, std = posterior_moments(y, sigma)                 # 0.8 and 0.447
    s = res.samples[:, 0].double().numpy()
    assert res.samples.shape == (20_000, 1)
    # standard errors with 20 000 draws: 0.003 for the mean, 0.0022 for the std
    assert abs(s.mean() - mean) < 0.012
    assert abs(s.std() - std) < 0.01
    assert stats.kstest(s, stats.norm(mean, std).cdf).pvalue > 1e-3
    # the acceptance rate estimates the evidence over the likelihood's maximum, p(y) * sqrt(2 pi) sigma
    evidence = stats.norm(0, math.sqrt(1 + sigma**2)).pdf(y) * math.sqrt(2 * math.pi) * sigma
    assert res.acceptance_rate == pytest.approx(evidence, rel=0.03)
    assert res.num_simulations % 50_000 == 0 and res.num_simulations * res.acceptance_rate >= 20_000


def test_per_dimension_noise_in_two_dimensions():
    sigma, y = np.array([0.3, 0.8]), np.array([-0.5, 1.5])
    res = reference.likelihood_rejection(lambda x: x.numpy(), PRIOR_2D, torch.tensor(y), 10_000,
                                         noise_std=torch.tensor(sigma), seed=3)  # numpy output accepted
    mean, std = posterior_moments(y, sigma)
    s = res.samples.double().numpy()
    assert np.abs(s.mean(0) - mean).max() < 0.02
    assert np.abs(s.std(0) - std).max() < 0.015
    assert abs(np.corrcoef(s.T)[0, 1]) < 0.05               # independent dimensions stay independent


@pytest.mark.parametrize("wrong", ["no_half", "distance_not_squared"])
def test_a_wrong_acceptance_rule_fails_the_moment_checks(wrong):
    """The checks above are sharp enough: the same sampler with a wrong acceptance exponent fails them."""
    sigma, y = 0.5, 1.0
    if wrong == "no_half":       # exp(-r^2): the noise std seen is sigma / sqrt(2)
        res = reference.likelihood_rejection(identity, PRIOR_1D, torch.tensor([y]), 20_000,
                                             noise_std=sigma / math.sqrt(2), seed=0)
        s = res.samples[:, 0].double().numpy()
    else:                        # exp(-|r| / 2) by hand: heavier-tailed (Laplace) likelihood
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(400_000, generator=gen, dtype=torch.float64)
        keep = torch.rand(len(x), generator=gen, dtype=torch.float64).log() < -0.5 * (x - y).abs() / sigma
        s = x[keep][:20_000].numpy()
    mean, std = posterior_moments(y, sigma)
    assert abs(s.mean() - mean) >= 0.012 or abs(s.std() - std) >= 0.01


def test_seeded_and_global_rng_untouched():
    torch.manual_seed(99)
    state = torch.get_rng_state()
    a = reference.likelihood_rejection(identity, PRIOR_1D, torch.tensor([0.3]), 500, noise_std=0.2, seed=7,
                                       chunk_size=5000)
    assert torch.equal(torch.get_rng_state(), state)
    b = reference.likelihood_rejection(identity, PRIOR_1D, torch.tensor([0.3]), 500, noise_std=0.2, seed=7,
                                       chunk_size=5000)
    c = reference.likelihood_rejection(identity, PRIOR_1D, torch.tensor([0.3]), 500, noise_std=0.2, seed=8,
                                       chunk_size=5000)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)


def test_nan_simulations_are_never_accepted():
    def half_nan(x):
        y = x.clone()
        y[x[:, 0] > 0] = math.nan
        return y

    res = reference.likelihood_rejection(half_nan, PRIOR_1D, torch.tensor([0.0]), 1000, noise_std=1.0, seed=0)
    assert (res.samples <= 0).all()


def test_an_unreachable_observation_raises_with_the_rate():
    with pytest.raises(RuntimeError, match="only 0 of 10 samples accepted after 20000 simulations"):
        reference.likelihood_rejection(identity, PRIOR_1D, torch.tensor([40.0]), 10, noise_std=0.01,
                                       chunk_size=10_000, max_simulations=20_000)


def test_argument_errors():
    y = torch.tensor([0.0])
    with pytest.raises(ValueError, match="noise_std"):
        reference.likelihood_rejection(identity, PRIOR_1D, y, 10, noise_std=0.0)
    with pytest.raises(ValueError, match="noise_std"):
        reference.likelihood_rejection(identity, PRIOR_1D, y, 10, noise_std=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one observation"):
        reference.likelihood_rejection(identity, PRIOR_1D, torch.zeros(2, 1), 10, noise_std=0.1)
    with pytest.raises(ValueError, match="num_samples"):
        reference.likelihood_rejection(identity, PRIOR_1D, y, 0, noise_std=0.1)
    with pytest.raises(ValueError, match=r"\(N, M\) = \(100, 1\)"):
        reference.likelihood_rejection(lambda x: torch.cat([x, x], 1), PRIOR_1D, y, 10, noise_std=0.1,
                                       chunk_size=100)
    with pytest.raises(TypeError, match="callable"):
        reference.likelihood_rejection("identity", PRIOR_1D, y, 10, noise_std=0.1)
