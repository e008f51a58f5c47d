"""Reference posteriors against the exact conjugate Normal posterior: rejection ABC, emcee MCMC, exact samplers."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn import reference
from simulators.gaussian_mixture import GaussianMixture

NOISE = 0.5
PRIOR_1D = Independent(Normal(torch.zeros(1), torch.ones(1)), 1)


def simulate(x, generator=None):
    """y = x + N(0, s^2) noise; draws from ``generator`` like the package's simulators."""
    return x + NOISE * torch.randn(x.shape, generator=generator)


def exact_moments(y: float) -> tuple[float, float]:
    return y / (1 + NOISE**2), math.sqrt(NOISE**2 / (1 + NOISE**2))


# -- rejection ABC ---------------------------------------------------------------------------------------------------
def test_abc_threshold_converges_to_the_exact_posterior_as_epsilon_shrinks():
    y_obs = torch.tensor([0.8])
    mean, std = exact_moments(0.8)
    errors = []
    for eps in (1.0, 0.3, 0.05):
        res = reference.abc_rejection(simulate, PRIOR_1D, y_obs, 2000, epsilon=eps, chunk_size=50_000, seed=0)
        assert res.samples.shape == (2000, 1) and res.distances.shape == (2000,)
        assert (res.distances < eps).all() and res.epsilon == eps
        assert res.num_simulations % 50_000 == 0 and 0 < res.acceptance_rate < 1
        errors.append(abs(float(res.samples.mean()) - mean) + abs(float(res.samples.std()) - std))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.04


def test_abc_quantile_runs_exactly_n_over_q_simulations_and_keeps_the_closest():
    calls = []

    def counting(x, generator=None):
        calls.append(len(x))
        return simulate(x, generator)

    res = reference.abc_rejection(counting, PRIOR_1D, torch.tensor([0.8]), 200, quantile=0.01, chunk_size=3000)
    assert res.num_simulations == 20_000 and sum(calls) == 20_000 and max(calls) == 3000
    assert res.acceptance_rate == pytest.approx(0.01)
    assert res.samples.shape == (200, 1)
    assert torch.all(res.distances[1:] >= res.distances[:-1]) and res.epsilon == float(res.distances[-1])
    mean, std = exact_moments(0.8)
    assert abs(float(res.samples.mean()) - mean) < 0.1 and abs(float(res.samples.std()) - std) < 0.1


def test_abc_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = reference.abc_rejection(simulate, PRIOR_1D, torch.tensor([0.3]), 50, quantile=0.05, chunk_size=400, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = reference.abc_rejection(simulate, PRIOR_1D, torch.tensor([0.3]), 50, quantile=0.05, chunk_size=400, seed=7)
    c = reference.abc_rejection(simulate, PRIOR_1D, torch.tensor([0.3]), 50, quantile=0.05, chunk_size=400, seed=8)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)


def test_abc_batch_matches_single_observation_runs():
    y_obs = torch.tensor([[-1.0], [0.0], [1.5]])
    batch = reference.abc_rejection_batch(simulate, PRIOR_1D, y_obs, 40, quantile=0.02, chunk_size=700, seed=3)
    assert batch.samples.shape == (40, 3, 1) and batch.distances.shape == (40, 3) and batch.epsilon.shape == (3,)
    assert batch.num_simulations == 2000
    for i in range(3):
        single = reference.abc_rejection(simulate, PRIOR_1D, y_obs[i], 40, quantile=0.02, chunk_size=700, seed=3)
        torch.testing.assert_close(batch.samples[:, i], single.samples)
        torch.testing.assert_close(batch.distances[:, i], single.distances)
    # the kept samples are the closest simulations: each observation's posterior mean moves with it
    means = batch.samples.mean(0)[:, 0]
    assert means[0] < means[1] < means[2]


def test_abc_distance_options_and_scaling():
    prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    scale_sim = lambda x: x * torch.tensor([1.0, 100.0])    # noqa: E731
    y = torch.tensor([0.5, 50.0])
    for distance in ("euclidean", "manhattan", "chebyshev", lambda a, b: (a - b).abs().sum(-1)):
        res = reference.abc_rejection(scale_sim, prior, y, 30, quantile=0.01, distance=distance, scale="mad",
                                      chunk_size=1000)
        # with MAD scaling both parameters are constrained equally
        assert (res.samples - torch.tensor([0.5, 0.5])).abs().max() < 0.5
        assert res.scale.shape == (2,) and res.scale[1] > 50 * res.scale[0]
    fixed = reference.abc_rejection(scale_sim, prior, y, 10, quantile=0.01, scale=torch.tensor([1.0, 100.0]))
    torch.testing.assert_close(fixed.scale, torch.tensor([1.0, 100.0]))


def test_abc_errors():
    y = torch.tensor([0.0])
    with pytest.raises(RuntimeError, match="acceptance rate so far"):
        reference.abc_rejection(simulate, PRIOR_1D, y, 10, epsilon=1e-6, chunk_size=500, max_simulations=1000)
    with pytest.raises(ValueError, match="exactly one of epsilon"):
        reference.abc_rejection(simulate, PRIOR_1D, y, 10)
    with pytest.raises(ValueError, match="exactly one of epsilon"):
        reference.abc_rejection(simulate, PRIOR_1D, y, 10, epsilon=0.1, quantile=0.1)
    with pytest.raises(ValueError, match="quantile must be in"):
        reference.abc_rejection(simulate, PRIOR_1D, y, 10, quantile=1.5)
    with pytest.raises(ValueError, match="y_obs contains NaN"):
        reference.abc_rejection(simulate, PRIOR_1D, torch.tensor([math.nan]), 10, quantile=0.1)
    with pytest.raises(ValueError, match="dimension 1, y_obs has 2"):
        reference.abc_rejection(simulate, PRIOR_1D, torch.zeros(2), 10, quantile=0.1)
    with pytest.raises(ValueError, match="abc_rejection_batch"):
        reference.abc_rejection(simulate, PRIOR_1D, torch.zeros(3, 1), 10, quantile=0.1)


def test_abc_never_accepts_nan_simulations():
    def broken(x):
        y = x.clone()
        y[::2] = math.nan
        return y

    res = reference.abc_rejection(broken, PRIOR_1D, torch.tensor([0.0]), 20, quantile=0.1, chunk_size=100)
    assert torch.isfinite(res.distances).all()
    nan_above = reference.abc_rejection(lambda x: torch.where(x > 0, math.nan, x), PRIOR_1D, torch.tensor([0.0]),
                                        20, quantile=0.1, chunk_size=100)
    assert (nan_above.samples <= 0).all()  # draws whose simulation was NaN are never accepted, however close
    # a simulator that is NaN everywhere has no accepted samples to return: an error, not samples at epsilon = inf
    with pytest.raises(ValueError, match="finite observations"):
        reference.abc_rejection(lambda x: torch.full_like(x, math.nan), PRIOR_1D, torch.tensor([0.0]), 20,
                                quantile=0.1, chunk_size=100)
    with pytest.raises(RuntimeError, match="acceptance rate so far 0"):
        reference.abc_rejection(lambda x: torch.full_like(x, math.nan), PRIOR_1D, torch.tensor([0.0]), 20,
                                epsilon=0.5, chunk_size=100, max_simulations=1000)


def test_exact_uses_the_simulators_posterior():
    sim = GaussianMixture()
    y = torch.eye(4)
    one = reference.exact(sim, y[3], 100, seed=0)
    assert one.shape == (100, 2)
    torch.testing.assert_close(one, reference.exact(sim, y[3], 100, seed=0))
    batch = reference.exact_batch(sim, y, 50, seed=1)
    assert batch.shape == (50, 4, 2)
    # label 3 is the last component alone: all samples near its mean
    assert (one - sim.means[7]).norm(dim=-1).max() < 1.5
