"""The five SBI-benchmark tasks re-implemented in ``benchmarks/sbibm_tasks.py``: shapes, seeding, likelihoods and ODEs.

Fast and offline: the checks against the benchmark's published reference posteriors are in
``python benchmarks/bench_sbibm.py --check``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sbibm_tasks  # noqa: E402
from sbibm_tasks import TASKS, get_task, solve_ode  # noqa: E402

DIMS = {"gaussian_linear": (10, 10), "gaussian_linear_uniform": (10, 10), "bernoulli_glm": (10, 10),
        "sir": (2, 10), "lotka_volterra": (4, 20)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TASKS)
def test_shapes_support_and_seeding(name):
    task = get_task(name)
    dx, dy = DIMS[name]
    assert (task.dim_x, task.dim_y) == (dx, dy) == (len(task.param_names), len(task.obs_names))
    x = task.sample_prior(64, generator=gen(0))
    assert x.shape == (64, dx) and task.prior.event_shape == (dx,)
    assert bool(task.prior.support.check(x).all())
    assert torch.isfinite(task.prior.log_prob(x)).all()
    y = task.simulate(x, generator=gen(1))
    assert y.shape == (64, dy) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert torch.equal(y, task.simulate(x, generator=gen(1)))          # same seed, same simulations
    assert not torch.equal(y, task.simulate(x, generator=gen(2)))
    assert torch.equal(x, task.sample_prior(64, generator=gen(0)))
    assert task.log_likelihood(y[0], x).shape == (64,)
    with pytest.raises(ValueError, match=r"shape \(n, "):
        task.simulate(torch.zeros(3, dx + 1))


def test_prior_sampler_matches_prior_distribution():
    """``sample_prior`` (seeded) draws from ``prior`` (moments of 20 000 draws)."""
    for name in ("gaussian_linear", "bernoulli_glm", "sir", "lotka_volterra"):
        task = get_task(name)
        x = task.sample_prior(20_000, generator=gen(3)).double()
        ref = task.prior.sample((20_000,)).double()
        if name in ("sir", "lotka_volterra"):
            x, ref = x.log(), ref.log()
        assert torch.allclose(x.mean(0), ref.mean(0), atol=0.05 * float(ref.std(0).max())), name
        assert torch.allclose(x.std(0), ref.std(0), rtol=0.05), name


def test_gaussian_linear_likelihood_and_posterior():
    task = get_task("gaussian_linear")
    x = task.sample_prior(20_000, generator=gen(0))
    noise = (task.simulate(x, generator=gen(1)) - x).double()
    assert noise.mean(0).abs().max() < 0.015
    assert torch.allclose(noise.var(0), torch.full((10,), 0.1, dtype=torch.float64), rtol=0.05)  # variance 0.1
    assert abs(float(torch.corrcoef(noise[:, :2].T)[0, 1])) < 0.03
    y = task.simulate(x[:1], generator=gen(2))[0]
    lik = torch.distributions.MultivariateNormal(x.double()[:5], 0.1 * torch.eye(10, dtype=torch.float64))
    assert torch.allclose(task.log_likelihood(y, x[:5]), lik.log_prob(y.double()), atol=1e-4)
    post = task.posterior(y)  # N(y / 2, 0.05 I): prior and noise variances both 0.1
    assert torch.allclose(post.mean, y.double() / 2, atol=1e-6)
    assert torch.allclose(post.covariance_matrix.diagonal(), torch.full((10,), 0.05, dtype=torch.float64))


def test_gaussian_linear_uniform_truncated_posterior():
    task = get_task("gaussian_linear_uniform")
    y = torch.tensor([0.0, 0.9, -1.2, 1.5, 0.3, -0.5, 2.0, -0.95, 0.1, 1.0])
    mean, std = task.posterior_moments(y)
    s = task.sample_posterior(y, 20_000, generator=gen(0)).double()
    assert ((s >= -1) & (s <= 1)).all()
    assert torch.allclose(s.mean(0), mean, atol=0.01) and torch.allclose(s.std(0), std, atol=0.01)
    assert abs(float(mean[0])) < 1e-9 and float(std[0]) < math.sqrt(0.1)


def test_bernoulli_glm_statistics_are_sbibm_conv1d():
    """``X^T s`` equals sbibm's ``conv1d(s, I, padding=8)[-9:]`` (lags 0..8) next to the spike count."""
    task = get_task("bernoulli_glm")
    x = task.sample_prior(8, generator=gen(0))
    spikes = task.spikes(x, gen(1))
    stats = task.summarize(spikes)
    for b in range(len(x)):
        conv = torch.nn.functional.conv1d(spikes[b].reshape(1, 1, -1), task.stimulus.reshape(1, 1, -1),
                                          padding=8).squeeze()[-9:]
        assert torch.allclose(stats[b], torch.cat([spikes[b].sum()[None], conv]), atol=1e-4)
    assert np.allclose(task.stimulus.numpy(), np.random.RandomState(42).randn(100).astype(np.float32))
    assert torch.linalg.eigvalsh(task.precision).min() > 0 and task.precision[0, 0] == 0.5
    # the likelihood of the statistics is the spike-train likelihood (up to a constant in x)
    rate = torch.sigmoid(x.double() @ task.design.double().T)
    exact = torch.distributions.Bernoulli(rate).log_prob(spikes[0].double()).sum(-1)
    ll = task.log_likelihood(stats[0], x)
    assert torch.allclose(ll - ll[0], exact - exact[0], atol=1e-6)


def test_sir_ode_conserves_population_and_matches_solve_ivp():
    from scipy.integrate import solve_ivp

    task = get_task("sir")
    x = task.sample_prior(200, generator=gen(0))
    u = task.trajectories(x)
    assert u.shape == (200, 10, 3) and np.isfinite(u).all()
    assert np.abs(u.sum(-1) - 1.0).max() < 1e-12          # S + I + R = N
    assert (u > -1e-12).all() and (u < 1 + 1e-12).all()
    assert np.allclose(u[:, 0], [1 - 1e-6, 1e-6, 0.0])    # one infected of 10^6 on day 0
    assert list(task.t_obs) == list(range(0, 154, 17))
    for i in range(3):
        p = x[i].double().numpy()
        ref = solve_ivp(lambda t, s, p=p: task._rhs(s[None], p[None])[0], (0, task.t_obs[-1]), u[i, 0],
                        t_eval=task.t_obs, method="DOP853", rtol=1e-12, atol=1e-14).y.T
        assert np.abs(ref - u[i]).max() < 1e-6
    y = task.simulate(x, generator=gen(1))
    assert ((y >= 0) & (y <= 1000) & (y == y.round())).all()


def test_lotka_volterra_ode_invariant_positive_and_matches_solve_ivp():
    from scipy.integrate import solve_ivp

    task = get_task("lotka_volterra")
    x = task.sample_prior(200, generator=gen(0)).double()
    lu = task.log_trajectories(x)
    assert lu.shape == (200, 10, 2) and np.isfinite(lu).all()
    assert np.allclose(task.t_obs, np.arange(10) * 2.1) and np.allclose(np.exp(lu[:, 0]), [30.0, 1.0])
    a, b, c, d = (x[:, k].numpy()[:, None] for k in range(4))
    u, v = np.exp(lu[..., 0]), np.exp(lu[..., 1])        # positive populations by construction
    invariant = d * u - c * lu[..., 0] + b * v - a * lu[..., 1]   # conserved along every orbit
    assert np.abs(invariant - invariant[:, :1]).max() < 1e-4 * np.abs(invariant).max()
    for i in range(3):
        p = x[i].numpy()
        ref = solve_ivp(lambda t, s, p=p: task._rhs(s[None], p[None])[0], (0, task.t_obs[-1]), lu[i, 0],
                        t_eval=task.t_obs, method="DOP853", rtol=1e-12, atol=1e-12).y.T
        assert np.abs(ref - lu[i]).max() < 1e-5
    y = task.simulate(x[:1].repeat(4000, 1), generator=gen(1)).double()
    m = task.log_mean(x[:1])[0]
    assert torch.allclose(y.log().mean(0), m, atol=0.01) and torch.allclose(y.log().std(0), torch.full_like(m, 0.1),
                                                                            rtol=0.06)
    lik = torch.distributions.LogNormal(m, 0.1).log_prob(y[0]).sum()
    assert torch.allclose(task.log_likelihood(y[0], x[:1])[0], lik, atol=1e-3)


def test_solve_ode_exponential_and_save_times():
    t = np.array([0.0, 0.5, 1.0, 2.0])
    k = np.array([[1.0], [-2.0], [0.0]])
    sol = solve_ode(lambda y, p: p * y, np.ones((3, 1)), k, t, rtol=1e-10, atol=1e-12)
    assert np.allclose(sol[:, :, 0], np.exp(k * t), rtol=1e-8)
    late = solve_ode(lambda y, p: p * y, np.ones((1, 1)), k[:1], np.array([1.0]), rtol=1e-10, atol=1e-12)
    assert np.allclose(late[0, 0, 0], math.e, rtol=1e-8)
    stuck = solve_ode(lambda y, p: y ** 2, np.ones((1, 1)), k[:1], np.array([2.0]))  # blows up at t = 1
    assert np.isnan(stuck).all()


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("slcp")
    assert set(sbibm_tasks.TASKS) == set(DIMS)
