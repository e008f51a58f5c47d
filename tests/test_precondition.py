"""The linear-Gaussian preconditioner of the cINN (``precondition="linear"``): its fit, exact densities, sampling,
saving, sets and mixtures, against known answers."""

import copy
import math

import pytest
import torch

from sbi_inn.cinn import ConditionalINN
from sbi_inn.flows import FlowConfig
from sbi_inn.mixture import MixtureModel
from sbi_inn.posterior import Posterior, load_posterior
from sbi_inn.transforms import LinearGaussian, standard_normal_log_prob

INF = math.inf


def gaussian_linear(n, D=3, seed=0):
    """theta ~ N(0, 0.1 I), y ~ N(theta, 0.1 I): posterior N(y / 2, 0.05 I)."""
    g = torch.Generator().manual_seed(seed)
    theta = math.sqrt(0.1) * torch.randn(n, D, generator=g)
    return theta, theta + math.sqrt(0.1) * torch.randn(n, D, generator=g)


def exact_log_post(theta, y):
    return torch.distributions.Normal(y / 2, math.sqrt(0.05)).log_prob(theta).sum(-1)


def test_linear_gaussian_fit_recovers_the_generating_model():
    g = torch.Generator().manual_seed(0)
    n = 50_000
    A = torch.tensor([[1.0, -0.5], [0.0, 2.0], [0.3, 0.0]])
    b = torch.tensor([0.5, -1.0])
    L = torch.tensor([[0.5, 0.0], [0.2, 0.3]])
    f = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    v = f @ A + b + torch.randn(n, 2, generator=g) @ L.T
    lg = LinearGaussian(3, 2).fit(v, f, ridge=1e-6)
    torch.testing.assert_close(lg.A, A, atol=0.01, rtol=0)
    torch.testing.assert_close(lg.b, b, atol=0.02, rtol=0)
    torch.testing.assert_close(lg.L, L, atol=0.01, rtol=0)
    torch.testing.assert_close(lg.L @ lg.L_inv, torch.eye(2), atol=1e-5, rtol=0)
    w = lg(v, lg.mean(f))
    torch.testing.assert_close(torch.cov(w.T), torch.eye(2), atol=0.02, rtol=0)
    torch.testing.assert_close(lg.inverse(w, lg.mean(f)), v, atol=1e-4, rtol=0)
    assert abs(lg.log_abs_det().item() + math.log(0.5 * 0.3)) < 0.05


def test_fresh_preconditioned_cinn_is_the_exact_linear_gaussian_posterior():
    """A fresh flow is the identity, so a model fitted on Gaussian-linear data already is its posterior."""
    theta, y = gaussian_linear(40_000)
    model = ConditionalINN(3, (3,), flow=FlowConfig(num_blocks=2, hidden=8), precondition="linear")
    model.fit_standardization(theta, y)
    yo, xo = gaussian_linear(200, seed=1)
    with torch.no_grad():
        logq = model.log_prob_given(xo, model.condition(yo))
        s = model.sample_given(model.condition(yo[:2]), 20_000, torch.Generator().manual_seed(0))  # (n, 2, D)
    err = (logq - exact_log_post(xo, yo)).abs()
    assert err.max() < 0.5 and err.mean() < 0.04  # estimation error of 40 000 rows, largest in the tails
    torch.testing.assert_close(s.mean(0), yo[:2] / 2, atol=0.01, rtol=0)
    torch.testing.assert_close(s.std(0), torch.full((2, 3), math.sqrt(0.05)), atol=0.01, rtol=0)
    # without the preconditioner the same fresh flow is the standardised prior, far from the posterior
    plain = ConditionalINN(3, (3,), flow=FlowConfig(num_blocks=2, hidden=8)).fit_standardization(theta, y)
    with torch.no_grad():
        assert (plain.log_prob_given(xo, plain.condition(yo)) - exact_log_post(xo, yo)).abs().mean() > 0.3


def _randomised(model, scale=0.15, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("precondition", ["linear", "shift"])
@pytest.mark.parametrize("lo, hi", [([-INF, -INF, -INF], [INF, INF, INF]), ([0.0, -1.0, -INF], [INF, 1.0, INF])])
def test_density_is_the_change_of_variables_of_the_whole_map(lo, hi, precondition, gen):
    lo, hi = torch.tensor(lo), torch.tensor(hi)
    theta = torch.rand(5000, 3, generator=gen) * 0.8 + torch.tensor([0.1, -0.4, 0.0])
    y = theta @ torch.randn(3, 4, generator=gen) + 0.1 * torch.randn(5000, 4, generator=gen)
    model = ConditionalINN(3, (4,), support_low=lo, support_high=hi, flow=FlowConfig(num_blocks=3, hidden=16),
                           summary_dim=4, summary_hidden=8, precondition=precondition).fit_standardization(theta, y)
    model = _randomised(model)
    c = model.condition(y[:4])
    with torch.no_grad():
        x = model.sample_given(c, 3, gen).reshape(12, 3)
    assert model.support.contains(x).all()
    cc = c.repeat(3, 1)
    logp = model.log_prob_given(x, cc).detach()
    md = copy.deepcopy(model).double()

    def z_of(a, ci):
        return md._to_latent(md.x_standardize(md.support.inverse(a[None])), ci)[0][0]

    for i in range(0, 12, 4):
        xi, ci = x[i].double(), cc[i:i + 1].detach().double()
        J = torch.autograd.functional.jacobian(lambda a, ci=ci: z_of(a, ci), xi)
        ref = standard_normal_log_prob(z_of(xi, ci)[None])[0] + torch.linalg.slogdet(J)[1]
        assert abs(logp[i].item() - ref.item()) < 1e-3 * (1 + abs(ref.item()))
    # samples map back to latents that the inverse produced: z -> x -> z round trip
    z = torch.randn(12, 3, generator=gen)
    with torch.no_grad():
        cs, mean = model._split(cc, z.shape[0])
        v = model.linear.inverse(model.flow.inverse(z, cs, jac=False)[0], mean)
        z2 = model._to_latent(v, cc)[0]
    torch.testing.assert_close(z2, z, atol=1e-4, rtol=1e-4)


def test_shift_subtracts_the_same_linear_prediction_without_whitening():
    theta, y = gaussian_linear(5000)
    lin = ConditionalINN(3, (3,), precondition="linear").fit_standardization(theta, y)
    shift = ConditionalINN(3, (3,), precondition="shift").fit_standardization(theta, y)
    torch.testing.assert_close(shift.linear.A, lin.linear.A)
    torch.testing.assert_close(shift.linear.L, torch.eye(3))
    assert shift.linear.log_abs_det().item() == 0.0 and lin.linear.log_abs_det().item() > 0.5  # L ~ 0.71 I


def test_chunked_sampling_and_save_load_round_trip(tmp_path, gen):
    theta, y = gaussian_linear(3000)
    model = ConditionalINN(3, (3,), flow=FlowConfig(num_blocks=2, hidden=8), summary_dim=4,
                           precondition="linear").fit_standardization(theta, y)
    model = _randomised(model)
    post = Posterior(model, param_names=["a", "b", "c"], obs_shape=(3,))
    yo = y[:5]
    whole = post.sample_batched(50, yo, seed=3)
    parts = post.sample_batched(50, yo, seed=3, max_rows=100)
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)  # float rounding of other batch sizes
    path = tmp_path / "p.sbi"
    post.save(path)
    loaded = load_posterior(path)
    assert loaded.model.precondition == "linear"
    torch.testing.assert_close(loaded.sample_batched(50, yo, seed=3), whole, atol=0, rtol=0)
    torch.testing.assert_close(loaded.log_prob(theta[:7], y[:7]), post.log_prob(theta[:7], y[:7]))
    config = model.config()
    del config["precondition"]  # a file written before the option
    assert ConditionalINN.from_config(config).linear is None


def test_set_valued_features_are_the_member_mean_and_permutation_invariant(gen):
    n, K = 4000, 6
    theta = torch.randn(n, 2, generator=gen)
    y = theta[:, None, :] + torch.randn(n, K, 2, generator=gen)
    sizes = torch.randint(2, K + 1, (n,), generator=gen)
    mask = torch.arange(K)[None, :] < sizes[:, None]
    y = torch.where(mask[..., None], y, torch.zeros(()))
    model = ConditionalINN(2, (2,), is_set_valued=True, flow=FlowConfig(num_blocks=2, hidden=8), summary_dim=4,
                           precondition="linear").fit_standardization(theta, y, sizes)
    # posterior mean of theta given a set of size k under N(0, I) prior and unit noise: k / (k + 1) * set mean;
    # the fitted slope over the mixed sizes lies between the smallest and largest k / (k + 1) (standardised scale)
    slope = model.linear.A.diagonal() * model.x_standardize.std / model.y_standardize.std
    assert ((slope > 0.5) & (slope < 0.95)).all()
    perm = torch.randperm(K, generator=gen)
    full = torch.full((3,), K)
    c1 = model.condition(y[:3], full)
    c2 = model.condition(y[:3, perm], full)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=1e-5)


def test_mixture_splits_members_with_and_without_the_preconditioner(gen):
    theta, y = gaussian_linear(3000)
    kw = dict(flow=FlowConfig(num_blocks=2, hidden=8), summary_dim=4)
    a = _randomised(ConditionalINN(3, (3,), precondition="linear", **kw).fit_standardization(theta, y), seed=1)
    b = _randomised(ConditionalINN(3, (3,), **kw).fit_standardization(theta, y), seed=2)
    mix = MixtureModel([a, b])
    c = mix.condition(y[:4])
    assert c.shape == (4, a.cond_dim + b.cond_dim) and a.cond_dim == 4 + 3 and b.cond_dim == 4
    with torch.no_grad():
        got = mix.log_prob_given(theta[:4], c)
        want = torch.logsumexp(torch.stack([a.log_prob_given(theta[:4], a.condition(y[:4])),
                                            b.log_prob_given(theta[:4], b.condition(y[:4]))]), 0) - math.log(2)
        s = mix.sample_given(c, 100, gen)
    torch.testing.assert_close(got, want)
    assert s.shape == (100, 4, 3) and torch.isfinite(s).all()


def test_bad_precondition_is_refused():
    with pytest.raises(ValueError, match="precondition"):
        ConditionalINN(2, (3,), precondition="quadratic")
    from sbi_inn.config import FitConfig

    with pytest.raises(ValueError, match="precondition"):
        FitConfig(precondition="nonlinear")
