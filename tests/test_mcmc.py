"""sbi_inn.mcmc: emcee reference posteriors (also reference.mcmc)."""

import math
import warnings

import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn import reference

NOISE = 0.5
PRIOR_1D = Independent(Normal(torch.zeros(1), torch.ones(1)), 1)


A = torch.tensor([1.0, 1.0])
PRIOR_2D = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)


def linear_log_likelihood(y, x):
    """y = x1 + x2 + N(0, s^2): a correlated Gaussian posterior under a N(0, I) prior."""
    return Normal((x * A).sum(-1, keepdim=True), NOISE).log_prob(y).sum(-1)


def test_mcmc_recovers_gaussian_posterior_mean_and_covariance():
    y_obs = torch.tensor([1.2])
    cov = torch.linalg.inv(torch.eye(2) + torch.outer(A, A) / NOISE**2)
    mean = cov @ A * y_obs / NOISE**2
    res = reference.mcmc(linear_log_likelihood, PRIOR_2D, y_obs, 4000, seed=1)
    assert res.samples.shape == (4000, 2)
    torch.testing.assert_close(res.samples.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(res.samples.T), cov, atol=0.05, rtol=0)
    assert 0.2 < res.acceptance_fraction < 0.9
    assert res.tau.shape == (2,) and res.num_steps >= 50 * float(res.tau.max()) * 0.9
    assert res.burn_in >= 1 and res.thin >= 1 and res.num_likelihood_evaluations >= res.num_steps * res.num_walkers


@pytest.mark.filterwarnings("ignore:mcmc. chain of:RuntimeWarning")
def test_mcmc_same_seed_same_samples():
    y_obs = torch.tensor([0.4])
    kwargs = dict(num_walkers=16, burn_in=50, thin=2, seed=5)
    a = reference.mcmc(linear_log_likelihood, PRIOR_2D, y_obs, 200, **kwargs)
    b = reference.mcmc(linear_log_likelihood, PRIOR_2D, y_obs, 200, **kwargs)
    c = reference.mcmc(linear_log_likelihood, PRIOR_2D, y_obs, 200, **{**kwargs, "seed": 6})
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert a.num_steps == 50 + 2 * math.ceil(200 / 16)


def test_mcmc_respects_bounded_support_and_warns_on_short_chains():
    from sbi_inn.priors import BoxUniform

    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    calls = []

    def loglik(y, x):
        calls.append(x)
        return -0.5 * ((x - y) ** 2).sum(-1) / 0.3**2

    with pytest.warns(RuntimeWarning, match="shorter than 50 autocorrelation times"):
        res = reference.mcmc(loglik, prior, torch.tensor([0.9, 0.9]), 100, num_walkers=8, burn_in=10, thin=1)
    assert ((res.samples >= 0) & (res.samples <= 1)).all()
    evaluated = torch.cat(calls)
    assert ((evaluated >= 0) & (evaluated <= 1)).all()        # never evaluated outside the support


def test_mcmc_bad_arguments():
    with pytest.raises(ValueError, match="num_walkers must be at least"):
        reference.mcmc(linear_log_likelihood, PRIOR_2D, torch.tensor([0.0]), 10, num_walkers=2)
    with pytest.raises(ValueError, match="initial must have shape"):
        reference.mcmc(linear_log_likelihood, PRIOR_2D, torch.tensor([0.0]), 10, num_walkers=8,
                       initial=torch.zeros(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="burn_in must be"):
            reference.mcmc(linear_log_likelihood, PRIOR_2D, torch.tensor([0.0]), 10, burn_in=-1)


# -- exact -----------------------------------------------------------------------------------------------------------


def test_mcmc_refuses_starts_and_likelihoods_with_no_posterior_density():
    """Walkers started outside the support, or a log-likelihood that is -inf everywhere, give no reference: an
    error naming the cause instead of samples."""
    box = torch.distributions.Independent(torch.distributions.Uniform(torch.zeros(2), torch.ones(2)), 1)
    y = torch.tensor([0.5])
    with pytest.raises(ValueError, match="none of the 32 starting points has a finite posterior density"):
        reference.mcmc(linear_log_likelihood, box, y, 100, initial=torch.full((32, 2), 5.0), seed=0)
    with pytest.raises(ValueError, match="log_likelihood is -inf"):
        reference.mcmc(lambda y, x: torch.full((len(x),), -math.inf), PRIOR_2D, y, 100, seed=0)
