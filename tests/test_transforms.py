import math

import torch

from sbi_inn.priors import BoxUniform, IndependentPrior, as_prior, describe_prior, support_bounds
from sbi_inn.transforms import Standardize, SupportTransform, standard_normal_log_prob

INF = math.inf


def _mixed():
    return SupportTransform(torch.tensor([0.0, 0.0, -INF, -INF]), torch.tensor([1.0, INF, INF, 2.0]))


def test_support_transform_round_trip_and_support():
    t = _mixed()
    # |u| <= 8: beyond that sigmoid(u) rounds to 0 or 1 in float32 and the logit cannot recover u
    u = (3 * torch.randn(200, 4, generator=torch.Generator().manual_seed(0))).clamp(-8, 8)
    x = t(u)
    assert t.contains(x).all()
    assert torch.allclose(t.inverse(x), u, atol=1e-3, rtol=1e-3)
    assert (x[:, 0] > 0).all() and (x[:, 0] < 1).all() and (x[:, 1] > 0).all() and (x[:, 3] < 2).all()


def test_support_transform_log_det_matches_autograd():
    t = _mixed()
    u = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: t(v[None])[0], u[i])
        assert torch.allclose(torch.slogdet(jac)[1], t.log_abs_det(u[i : i + 1])[0], atol=1e-5)


def test_density_through_transform_integrates_to_one():
    """A standard normal pushed through the logit transform of [0, 2] is a proper density on [0, 2]."""
    t = SupportTransform(torch.tensor([0.0]), torch.tensor([2.0]))
    x = torch.linspace(1e-4, 2 - 1e-4, 20001)[:, None]
    u = t.inverse(x)
    logq = standard_normal_log_prob(u) - t.log_abs_det(u)
    assert abs(torch.trapezoid(logq.exp(), x[:, 0]).item() - 1.0) < 1e-3


def test_standardize_fit_and_mask():
    data = torch.randn(1000, 3) * torch.tensor([1.0, 5.0, 0.0]) + torch.tensor([2.0, -1.0, 7.0])
    s = Standardize(3).fit(data)
    out = s(data)
    assert torch.allclose(out[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.isfinite(out).all()  # a constant column keeps std 1
    assert torch.allclose(s.inverse(out), data, atol=1e-4)
    sets = torch.randn(50, 10, 2) + 3
    mask = torch.arange(10)[None] < torch.randint(1, 11, (50,))[:, None]
    sets_padded = torch.where(mask[..., None], sets, torch.zeros_like(sets))
    s2 = Standardize(2).fit(sets_padded, mask)
    assert torch.allclose(s2.mean, sets[mask].mean(0), atol=1e-5)


def test_support_bounds_and_describe():
    lo, hi = support_bounds(BoxUniform([0.0, -1.0], [1.0, 1.0]))
    assert lo.tolist() == [0.0, -1.0] and hi.tolist() == [1.0, 1.0]
    prior = as_prior([torch.distributions.Uniform(0.0, 2.0), torch.distributions.LogNormal(0.0, 1.0),
                      torch.distributions.Normal(0.0, 1.0)])
    assert isinstance(prior, IndependentPrior)
    lo, hi = support_bounds(prior)
    assert lo.tolist() == [0.0, 0.0, -INF] and hi.tolist() == [2.0, INF, INF]
    assert prior.sample((7,)).shape == (7, 3)
    assert prior.log_prob(torch.tensor([[1.0, 1.0, 0.0]])).shape == (1,)
    d = describe_prior(prior)
    assert d["class"] == "IndependentPrior" and len(d["marginals"]) == 3


def test_bad_priors():
    import pytest

    with pytest.raises(TypeError, match="Distribution"):
        as_prior("normal")
    with pytest.raises(ValueError, match="event shape"):
        as_prior(torch.distributions.Normal(torch.zeros(3), 1.0))
    with pytest.raises(ValueError, match="scalar"):
        IndependentPrior([torch.distributions.Normal(torch.zeros(2), 1.0)])
    with pytest.raises(ValueError, match="high"):
        BoxUniform([1.0], [0.0])
