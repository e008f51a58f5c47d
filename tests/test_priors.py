"""Priors: BoxUniform, IndependentPrior, as_prior / prior_for validation, support bounds and descriptions."""

import json
import math

import pytest
import torch
from torch.distributions import Gamma, Independent, LogNormal, Normal, Uniform

from sbi_inn.priors import BoxUniform, IndependentPrior, as_prior, describe_prior, prior_for, support_bounds

INF = math.inf


def test_box_uniform_density_and_samples():
    prior = BoxUniform([0.0, -1.0], [2.0, 1.0])
    assert prior.event_shape == (2,) and prior.batch_shape == ()
    inside = prior.log_prob(torch.tensor([[1.0, 0.0], [0.1, -0.9]]))
    torch.testing.assert_close(inside, torch.full((2,), -math.log(4.0)))  # 1 / area of the 2 x 2 box
    x = prior.sample((5000,))
    assert (x[:, 0] >= 0).all() and (x[:, 0] <= 2).all() and (x[:, 1] >= -1).all() and (x[:, 1] <= 1).all()
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, 0.0]), atol=0.05, rtol=0)


def test_independent_prior_is_the_product_of_its_marginals():
    marginals = [Uniform(0.0, 2.0), LogNormal(0.0, 1.0), Normal(1.0, 3.0)]
    prior = as_prior(marginals)
    assert isinstance(prior, IndependentPrior) and prior.event_shape == (3,)
    x = torch.tensor([[1.0, 0.5, -2.0], [0.3, 4.0, 7.0]])
    expected = sum(m.log_prob(x[:, i]) for i, m in enumerate(marginals))
    torch.testing.assert_close(prior.log_prob(x), expected)
    torch.testing.assert_close(prior.mean, torch.tensor([1.0, math.exp(0.5), 1.0]))
    torch.testing.assert_close(prior.variance, torch.tensor([1 / 3, (math.e - 1) * math.e, 9.0]))
    s = prior.sample((20000,))
    assert s.shape == (20000, 3) and s.dtype == torch.get_default_dtype()
    assert (s[:, 1] > 0).all() and abs(float(s[:, 2].std()) - 3.0) < 0.1


def test_support_bounds_of_box_independent_and_nig_priors():
    lo, hi = support_bounds(BoxUniform([0.0, -1.0], [1.0, 1.0]))
    assert lo.tolist() == [0.0, -1.0] and hi.tolist() == [1.0, 1.0]
    lo, hi = support_bounds([Uniform(0.0, 2.0), LogNormal(0.0, 1.0), Normal(0.0, 1.0), Gamma(2.0, 1.0)])
    assert lo.tolist() == [0.0, 0.0, -INF, 0.0] and hi.tolist() == [2.0, INF, INF, INF]
    lo, hi = support_bounds(Independent(Normal(torch.zeros(2), 1.0), 1))
    assert lo.tolist() == [-INF, -INF] and hi.tolist() == [INF, INF]
    from simulators.set_valued import NormalInverseGamma  # a product prior with a constraints.cat support

    lo, hi = support_bounds(NormalInverseGamma(torch.zeros(2), 1.0, 3.0, 2.0))
    assert lo.tolist() == [-INF, -INF, 0.0] and hi.tolist() == [INF, INF, INF]


def test_describe_prior_is_json_and_names_the_parameters():
    d = describe_prior(BoxUniform([0.0, 1.0], [1.0, 3.0]))
    assert json.loads(json.dumps(d)) == d
    assert d["class"] == "BoxUniform" and d["event_dim"] == 2
    assert d["params"] == {"low": [0.0, 1.0], "high": [1.0, 3.0]}
    assert d["support_low"] == [0.0, 1.0] and d["support_high"] == [1.0, 3.0]
    d = describe_prior([Uniform(0.0, 2.0), LogNormal(0.0, 1.0), Normal(0.0, 1.0)])
    assert d["class"] == "IndependentPrior" and len(d["marginals"]) == 3 and d["support_high"][0] == 2.0


def test_prior_for_resolves_a_missing_prior_to_the_simulators():
    class Sim:
        prior = BoxUniform([0.0], [1.0])

        def __call__(self, x):
            return x

    sim = Sim()
    assert prior_for(sim, None) is sim.prior
    explicit = Independent(Normal(torch.zeros(1), 1.0), 1)
    assert prior_for(sim, explicit) is explicit
    with pytest.raises(TypeError, match="prior is missing"):
        prior_for(lambda x: x, None)


def test_bad_priors():
    with pytest.raises(TypeError, match="Distribution"):
        as_prior("normal")
    with pytest.raises(ValueError, match="event shape"):
        as_prior(Normal(torch.zeros(3), 1.0))
    with pytest.raises(ValueError, match="scalar"):
        IndependentPrior([Normal(torch.zeros(2), 1.0)])
    with pytest.raises(TypeError, match="entry 1"):
        IndependentPrior([Normal(0.0, 1.0), "uniform"])
    with pytest.raises(ValueError, match="at least one"):
        IndependentPrior([])
    with pytest.raises(ValueError, match="high"):
        BoxUniform([1.0], [0.0])
    with pytest.raises(ValueError, match="1-D of equal length"):
        BoxUniform([0.0, 0.0], [1.0])
