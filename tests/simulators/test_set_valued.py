"""Tests for the set-valued simulators: conjugate Gaussian sets (exact NIG posterior) and the drift-diffusion model."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from simulators import get_simulator
from simulators.set_valued import ConjugateGaussianSets, DriftDiffusion, NormalInverseGamma, wiener_log_density

SIMS = {
    "gaussian_sets": lambda: ConjugateGaussianSets(min_size=3, max_size=12),
    "ddm": lambda: DriftDiffusion(min_size=3, max_size=12),
}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- shared contract ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SIMS)
def test_config_round_trip(name):
    sim = SIMS[name]()
    cfg = json.loads(json.dumps(sim.config()))
    again = get_simulator(name, **cfg)
    assert type(again) is type(sim) and again.config() == sim.config()
    assert sim.is_set_valued and len(sim.param_names) == sim.prior.event_shape[0] == len(sim.param_units)
    assert len(sim.obs_names) == len(sim.obs_units)


def test_config_round_trip_non_default():
    for name, sim in [("gaussian_sets", ConjugateGaussianSets(2, 7, dim=3, mu0=1.0, lambda0=2.0, a0=4.0, b0=0.5)),
                      ("ddm", DriftDiffusion(5, 50, dt=2e-3, max_time=4.0, fit_bias=True, v_range=(-2, 2)))]:
        again = get_simulator(name, **json.loads(json.dumps(sim.config())))
        assert again.config() == sim.config() and again.param_names == sim.param_names


@pytest.mark.parametrize("name", SIMS)
def test_shapes_and_padding(name):
    sim = SIMS[name]()
    x = sim.sample_prior(64, generator=_gen(1))
    y, sizes = sim.simulate(x, generator=_gen(2))
    assert y.shape == (64, sim.max_size, sim.obs_dim) and y.dtype == x.dtype
    assert sizes.dtype == torch.int64 and sizes.shape == (64,)
    assert sizes.min() >= sim.min_size and sizes.max() <= sim.max_size and len(sizes.unique()) > 3
    valid = torch.arange(sim.max_size) < sizes[:, None]
    assert (y[~valid] == 0).all() and torch.isfinite(y).all()
    assert (y[valid].abs().sum(-1) > 0).all()  # every member of a set is simulated (none left at zero)


@pytest.mark.parametrize("name", SIMS)
def test_fixed_sizes(name):
    sim = SIMS[name]()
    x = sim.sample_prior(3, generator=_gen(1))
    for k in (1, 10, 100):  # any K >= 1, also beyond max_size
        y, sizes = sim.simulate(x, generator=_gen(), sizes=k)
        assert y.shape == (3, k, sim.obs_dim) and (sizes == k).all()
    y, sizes = sim.simulate(x, generator=_gen(), sizes=torch.tensor([1, 10, 4]))
    assert y.shape == (3, 10, sim.obs_dim) and sizes.tolist() == [1, 10, 4]
    assert (y[0, 1:] == 0).all() and (y[2, 4:] == 0).all()
    y, _ = sim(x, generator=_gen(), sizes=2)  # __call__ takes the same keywords
    assert y.shape == (3, 2, sim.obs_dim)


@pytest.mark.parametrize("name", SIMS)
def test_determinism_and_global_rng(name):
    sim = SIMS[name]()
    x = sim.sample_prior(16, generator=_gen(3))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    y1, s1 = sim.simulate(x, generator=_gen(5))
    y2, s2 = sim.simulate(x, generator=_gen(5))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    y3, _ = sim.simulate(x, generator=_gen(6))
    assert not torch.equal(y1, y3)
    assert torch.equal(sim.sample_prior(16, generator=_gen(3)), x)


@pytest.mark.parametrize("name", SIMS)
def test_bad_sizes_and_inputs(name):
    sim = SIMS[name]()
    x = sim.sample_prior(2, generator=_gen())
    for sizes, err in [(0, ValueError), (torch.tensor([3, 0]), ValueError), (torch.tensor([2.0, 3.0]), TypeError),
                       (torch.tensor([1, 2, 3]), ValueError)]:
        with pytest.raises(err):
            sim.simulate(x, sizes=sizes)
    with pytest.raises(ValueError):
        sim.simulate(x[:, :-1])
    with pytest.raises(ValueError):
        sim.simulate(torch.full_like(x, math.nan))
    with pytest.raises(ValueError):
        type(sim)(min_size=5, max_size=4)
    with pytest.raises(ValueError):
        type(sim)(min_size=0)
    y, sizes = sim.simulate(x, generator=_gen(), sizes=3)
    with pytest.raises(ValueError):
        sim.log_likelihood(torch.zeros(3, sim.obs_dim + 1), x)  # wrong M
    with pytest.raises(ValueError):
        sim.log_likelihood(y[0], x, sizes=4)  # more rows claimed than given
    with pytest.raises(ValueError):
        sim.log_likelihood(torch.zeros(3, 2, sim.obs_dim), x)  # 3 sets for 2 parameter vectors
    bad = y[0].clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError):
        sim.log_likelihood(bad, x)


# -- conjugate Gaussian sets --------------------------------------------------------------------------------------
def test_gaussian_bad_config_and_support():
    for kw in [{"lambda0": 0.0}, {"a0": -1.0}, {"b0": math.inf}, {"dim": 0}, {"mu0": math.nan}]:
        with pytest.raises(ValueError):
            ConjugateGaussianSets(**kw)
    sim = ConjugateGaussianSets()
    y = torch.randn(5, 1, generator=_gen())
    for s2 in (0.0, -1.0):
        with pytest.raises(ValueError):
            sim.log_likelihood(y, torch.tensor([[0.0, s2]]))
        with pytest.raises(ValueError):
            sim.simulate(torch.tensor([[0.0, s2]]))


def test_nig_log_prob_matches_scipy():
    nig = NormalInverseGamma(torch.tensor([0.7]), 2.5, 2.0, 0.8)
    x = nig.sample((50,), generator=_gen())
    mu, s2 = x[:, 0].double().numpy(), x[:, 1].double().numpy()
    ref = stats.invgamma.logpdf(s2, 2.0, scale=0.8) + stats.norm.logpdf(mu, 0.7, np.sqrt(s2 / 2.5))
    np.testing.assert_allclose(nig.log_prob(x.double()).numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hyper", [(0.0, 1.0, 3.0, 2.0), (1.0, 2.5, 2.0, 0.7)])
def test_prior_normalised_on_grid(hyper):
    mu0, lam0, a0, b0 = hyper
    prior = ConjugateGaussianSets(mu0=mu0, lambda0=lam0, a0=a0, b0=b0).prior
    # integrate in (t, log sigma2) with mu = mu0 + t sqrt(sigma2 / lambda0): Jacobian sqrt(sigma2 / lambda0) sigma2
    t = torch.linspace(-12, 12, 481, dtype=torch.float64)
    u = torch.linspace(-9, 12, 2101, dtype=torch.float64)
    tt, uu = torch.meshgrid(t, u, indexing="ij")
    s2 = uu.exp()
    x = torch.stack([mu0 + tt * (s2 / lam0).sqrt(), s2], -1)
    dens = (prior.log_prob(x) + (s2 / lam0).sqrt().log() + uu).exp()
    total = torch.trapezoid(torch.trapezoid(dens, u, dim=1), t)
    assert abs(float(total) - 1) < 1e-3


def test_prior_support_mean_and_samples():
    sim = ConjugateGaussianSets(dim=2)
    prior = sim.prior
    assert prior.event_shape == (3,)
    assert prior.support.check(torch.tensor([-5.0, 3.0, 0.1])) and not prior.support.check(torch.tensor([0, 0, 0.0]))
    assert not prior.support.check(torch.tensor([0.0, 0.0, -1.0]))
    with pytest.raises(ValueError):  # validated like torch's own distributions
        prior.log_prob(torch.tensor([0.0, 0.0, -1.0]))
    assert NormalInverseGamma(0.0, 1.0, 3.0, 2.0, validate_args=False).log_prob(torch.tensor([0.0, -1.0])) == -math.inf
    x = prior.sample((20000,), generator=_gen())
    assert (x[:, -1] > 0).all() and prior.support.check(x).all()
    assert torch.equal(x, prior.sample((20000,), generator=_gen()))
    torch.testing.assert_close(x.mean(0), prior.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(x[:, :2].var(0), prior.variance[:2], atol=0, rtol=0.07)
    # small shape parameters exercise the a < 1 branch of the gamma sampler
    small = NormalInverseGamma(0.0, 1.0, 0.5, 1.0).sample((20000,), generator=_gen())
    ref = stats.invgamma(0.5, scale=1.0).cdf(1.0)
    assert abs(float((small[:, 1] < 1).double().mean()) - ref) < 0.015


def test_log_likelihood_matches_scipy_and_padding():
    sim = ConjugateGaussianSets(max_size=20)
    y, sizes = sim.simulate(torch.tensor([[0.3, 0.8]]), generator=_gen(4), sizes=torch.tensor([13]))
    x = sim.sample_prior(7, generator=_gen(5)).double()
    yv = y[0].double().numpy()[:, 0]
    ref = np.array([stats.norm.logpdf(yv, m, np.sqrt(s)).sum() for m, s in x.numpy()])
    np.testing.assert_allclose(sim.log_likelihood(y[0].double(), x).numpy(), ref, rtol=1e-10)
    padded = torch.cat([y[0], torch.zeros(7, 1)]).double()
    torch.testing.assert_close(sim.log_likelihood(padded, x, sizes=13), torch.as_tensor(ref))
    batch = padded[None].expand(7, -1, -1)
    torch.testing.assert_close(sim.log_likelihood(batch, x, sizes=torch.full((7,), 13)), torch.as_tensor(ref))


@pytest.fixture(scope="module")
def gaussian_case():
    sim = ConjugateGaussianSets(mu0=0.2, lambda0=1.5, a0=3.0, b0=2.0)
    y, sizes = sim.simulate(torch.tensor([[1.0, 2.0]]), generator=_gen(11), sizes=10)
    return sim, y[0].double(), sim.posterior(y[0].double())


def test_posterior_against_grid(gaussian_case):
    sim, y, post = gaussian_case
    m, v = post.mean.double(), post.variance.double()
    mu = torch.linspace(float(m[0] - 12 * v[0].sqrt()), float(m[0] + 12 * v[0].sqrt()), 601, dtype=torch.float64)
    s2 = torch.linspace(1e-3, float(m[1] + 25 * v[1].sqrt()), 1501, dtype=torch.float64)
    mm, ss = torch.meshgrid(mu, s2, indexing="ij")
    x = torch.stack([mm.reshape(-1), ss.reshape(-1)], -1)
    logp = (sim.prior.log_prob(x) + sim.log_likelihood(y, x)).reshape(mm.shape)
    w = (logp - logp.max()).exp()
    w = w / w.sum()
    grid_mean = torch.stack([(w * mm).sum(), (w * ss).sum()])
    grid_var = torch.stack([(w * (mm - grid_mean[0]) ** 2).sum(), (w * (ss - grid_mean[1]) ** 2).sum()])
    torch.testing.assert_close(grid_mean, m, rtol=0.01, atol=0)
    torch.testing.assert_close(grid_var, v, rtol=0.01, atol=0)
    i, j = divmod(int(logp.argmax()), logp.shape[1])
    assert abs(float(mu[i] - post.mode[0])) <= float(mu[1] - mu[0])
    assert abs(float(s2[j] - post.mode[1])) <= float(s2[1] - s2[0])
    # the analytic log density differs from prior + likelihood by a constant (the log evidence)
    diff = sim.log_posterior(x[::997], y) - (sim.prior.log_prob(x[::997]) + sim.log_likelihood(y, x[::997]))
    assert float(diff.max() - diff.min()) < 1e-4


def test_sample_posterior_moments(gaussian_case):
    sim, y, post = gaussian_case
    s = sim.sample_posterior(y, 40000, generator=_gen(2)).double()
    assert s.shape == (40000, 2) and (s[:, 1] > 0).all()
    se = (post.variance.double() / 40000).sqrt()
    assert ((s.mean(0) - post.mean.double()).abs() < 4 * se).all()
    torch.testing.assert_close(s.var(0), post.variance.double(), rtol=0.05, atol=0)
    torch.testing.assert_close(s, sim.sample_posterior(y, 40000, generator=_gen(2)).double())
    # padded set plus size gives the same posterior
    padded = torch.cat([y, torch.zeros(5, 1, dtype=y.dtype)])
    torch.testing.assert_close(sim.posterior(padded, size=10).mean, post.mean)


def test_posterior_concentrates_multivariate():
    sim = ConjugateGaussianSets(dim=2)
    truth = torch.tensor([[0.5, -1.0, 0.3]])
    y, _ = sim.simulate(truth, generator=_gen(8), sizes=2000)
    post = sim.posterior(y[0])
    torch.testing.assert_close(post.mean, truth[0], atol=0.05, rtol=0)
    x = sim.sample_prior(5, generator=_gen()).double()
    diff = sim.log_posterior(x, y[0].double()) - sim.prior.log_prob(x) - sim.log_likelihood(y[0].double(), x)
    assert float(diff.max() - diff.min()) < 1e-6 * float(diff.abs().max())


# -- drift-diffusion model ----------------------------------------------------------------------------------------
DDM_X = torch.tensor([[1.0, 1.5, 0.3], [-0.5, 1.0, 0.2]])
N_TRIALS = 20000


@pytest.fixture(scope="module")
def ddm_sets():
    sim = DriftDiffusion()
    y, sizes = sim.simulate(DDM_X, generator=_gen(21), sizes=N_TRIALS)
    return sim, y


def test_ddm_bad_config_and_params():
    for kw in [{"dt": 0.0}, {"max_time": -1.0}, {"z": 1.0}, {"a_range": (0.0, 1.0)}, {"v_range": (1.0, -1.0)},
               {"z_range": (0.2, 1.2)}, {"t0_range": (-0.1, 0.2)}]:
        with pytest.raises(ValueError):
            DriftDiffusion(**kw)
    with pytest.raises(TypeError):
        DriftDiffusion(fit_bias=1)
    sim = DriftDiffusion()
    for x in ([[1.0, 0.0, 0.3]], [[1.0, 1.0, -0.1]]):
        with pytest.raises(ValueError):
            sim.simulate(torch.tensor(x))
    with pytest.raises(ValueError):
        DriftDiffusion(fit_bias=True).log_likelihood(torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 1.0, 0.1, 1.2]]))
    with pytest.raises(ValueError):  # choices must be 0 or 1
        sim.log_likelihood(torch.tensor([[0.5, 2.0]]), DDM_X)


def test_ddm_rts_and_choices_valid():
    sim = DriftDiffusion(max_size=30)
    x = sim.sample_prior(100, generator=_gen(4))
    y, sizes = sim.simulate(x, generator=_gen(5))
    valid = torch.arange(30) < sizes[:, None]
    rt, choice = y[..., 0], y[..., 1]
    assert (rt[valid] > x[:, 2, None].expand(-1, 30)[valid]).all()
    assert set(choice[valid].unique().tolist()) == {0.0, 1.0}
    assert torch.isfinite(sim.log_likelihood(y, x, sizes=sizes)).all()


def test_ddm_closed_forms_match_simulation(ddm_sets):
    sim, y = ddm_sets
    p_up = y[..., 1].double().mean(1)
    p_ref = sim.choice_probability(DDM_X).double()
    torch.testing.assert_close(p_ref, 1 / (1 + torch.exp(-DDM_X[:, 0] * DDM_X[:, 1])).double())
    assert ((p_up - p_ref).abs() < 4 * (p_ref * (1 - p_ref) / N_TRIALS).sqrt()).all()
    mean_ref = (DDM_X[:, 1] / (2 * DDM_X[:, 0]) * torch.tanh(DDM_X[:, 0] * DDM_X[:, 1] / 2) + DDM_X[:, 2]).double()
    torch.testing.assert_close(sim.mean_rt(DDM_X).double(), mean_ref)
    rt = y[..., 0].double()
    assert ((rt.mean(1) - mean_ref).abs() < 4 * rt.std(1) / math.sqrt(N_TRIALS)).all()


def test_ddm_biased_start_and_tail_completion():
    # z != 1/2; max_time short enough that ~10 % of the walkers are completed by the large-time asymptotics
    sim = DriftDiffusion(fit_bias=True, max_time=0.6)
    x = torch.tensor([[1.5, 1.2, 0.25, 0.35]])
    y, _ = sim.simulate(x, generator=_gen(9), sizes=N_TRIALS)
    rt, choice = y[0, :, 0].double(), y[0, :, 1].double()
    assert (rt > 0.85).float().mean() > 0.05
    p_ref = float(sim.choice_probability(x))
    assert abs(p_ref - (1 - math.exp(-2 * 1.5 * 1.2 * 0.35)) / (1 - math.exp(-2 * 1.5 * 1.2))) < 1e-6
    assert abs(float(choice.mean()) - p_ref) < 4 * math.sqrt(p_ref * (1 - p_ref) / N_TRIALS)
    assert abs(float(rt.mean() - sim.mean_rt(x).double())) < 4 * float(rt.std()) / math.sqrt(N_TRIALS)


def _time_grid(t_max):
    """0 plus 20001 log-spaced times in [1e-6, t_max] (float64) for integrating densities."""
    return torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.logspace(-6, math.log10(t_max), 20001, dtype=torch.float64)])


def _reference_density(t, choice, v, a, w, terms=400):
    """Large-time series with many terms (numpy), an independent check of both expansions."""
    if choice == 1:
        v, w = -v, 1 - w
    k = np.arange(1, terms + 1)[:, None]
    u = t / a**2
    f = np.pi * (k * np.exp(-(k**2) * np.pi**2 * u / 2) * np.sin(k * np.pi * w)).sum(0)
    return f / a**2 * np.exp(-v * a * w - v**2 * t / 2)


@pytest.mark.parametrize("v,a,w", [(1.0, 1.5, 0.5), (-2.0, 0.7, 0.3), (0.0, 2.5, 0.8)])
def test_wiener_density_against_reference(v, a, w):
    t = np.geomspace(0.02, 5.0, 200) * a**2  # u = t / a^2 in [0.02, 5]: both expansions
    for c in (0, 1):
        ours = wiener_log_density(torch.as_tensor(t), c, v, a, w).exp().numpy()
        np.testing.assert_allclose(ours, _reference_density(t, c, v, a, w), rtol=1e-9, atol=1e-300)
    assert wiener_log_density(torch.tensor([0.0, -1.0]), 1, v, a, w).eq(-math.inf).all()


@pytest.mark.parametrize("v,a,w", [(1.0, 1.5, 0.5), (-2.0, 0.5, 0.3), (0.0, 2.5, 0.7), (3.0, 2.5, 0.5)])
def test_wiener_density_normalised(v, a, w):
    t = _time_grid(40.0)
    f_up, f_lo = (wiener_log_density(t, c, v, a, w).exp() for c in (1, 0))
    assert abs(float(torch.trapezoid(f_up + f_lo, t)) - 1) < 1e-5
    sim = DriftDiffusion(fit_bias=True, z_range=(0.1, 0.9))
    x = torch.tensor([[v, a, 0.0, w]], dtype=torch.float64)
    assert abs(float(torch.trapezoid(f_up, t) - sim.choice_probability(x))) < 1e-5
    assert abs(float(torch.trapezoid(t * (f_up + f_lo), t) - sim.mean_rt(x))) < 1e-4


def test_ddm_density_agrees_with_simulation(ddm_sets):
    sim, y = ddm_sets
    grid = _time_grid(15.0)
    for i, (v, a, t0) in enumerate(DDM_X.double().tolist()):
        rt, choice = y[i, :, 0].double(), y[i, :, 1]
        for c in (0, 1):
            dens = wiener_log_density(grid, c, v, a, 0.5).exp()
            steps = (dens[1:] + dens[:-1]) / 2 * grid.diff()
            cdf = torch.cat([torch.zeros(1, dtype=dens.dtype), torch.cumsum(steps, 0)])
            q = torch.quantile(rt, torch.linspace(0.02, 0.98, 49, dtype=torch.float64))
            emp = ((rt[None] <= q[:, None]) & (choice == c)).double().mean(1)
            model = torch.as_tensor(np.interp(q - t0, grid, cdf))
            assert float((emp - model).abs().max()) < 0.012, (i, c)


def test_ddm_log_likelihood_consistency(ddm_sets):
    sim, y = ddm_sets
    one = y[0, :300]
    x = torch.tensor([[1.0, 1.5, 0.3], [1.0, 1.5, 0.25], [-1.0, 1.5, 0.3], [1.0, 2.5, 0.3]])
    ll = sim.log_likelihood(one, x)
    assert ll.shape == (4,) and ll.argmax() == 0
    torch.testing.assert_close(sim.log_likelihood(one[None].expand(4, -1, -1), x), ll)
    padded = torch.cat([one, torch.zeros(20, 2)])
    torch.testing.assert_close(sim.log_likelihood(padded, x, sizes=300), ll)
    assert sim.log_likelihood(one, torch.tensor([[1.0, 1.5, 5.0]])) == -math.inf  # rt <= t0
