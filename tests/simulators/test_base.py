"""The Simulator contract (simulators/base.py): explicit generators, input checks, defaults that refuse."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from simulators.base import Simulator


class Shift(Simulator):
    """y = x + N(0, 1) in two dimensions: the smallest simulator with randomness."""

    name = "shift"
    param_names = ["a", "b"]
    obs_names = ["y_a", "y_b"]

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)

    def config(self) -> dict:
        return {"scale": self.scale}

    def _simulate(self, x, generator):
        return x + self.scale * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def test_dimensions_repr_and_call():
    sim = Shift(0.5)
    assert sim.param_dim == 2 and sim.obs_dim == 2 and not sim.is_set_valued
    assert repr(sim) == "Shift(scale=0.5)"
    x = torch.zeros(3, 2)
    assert torch.equal(sim(x, generator=torch.Generator().manual_seed(1)),
                       sim.simulate(x, generator=torch.Generator().manual_seed(1)))


def test_sample_prior_is_reproducible_and_leaves_the_global_rng_alone():
    sim = Shift()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = sim.sample_prior(1000, generator=torch.Generator().manual_seed(3))
    b = sim.sample_prior(1000, generator=torch.Generator().manual_seed(3))
    c = sim.sample_prior(1000, generator=torch.Generator().manual_seed(4))
    assert torch.equal(state, torch.get_rng_state())
    assert a.shape == (1000, 2) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a.mean(0).abs() < 0.15).all() and ((a.std(0) - 1).abs() < 0.1).all()  # draws of the prior N(0, I)


def test_simulate_draws_from_the_generator_or_fresh_randomness():
    sim = Shift()
    x = torch.zeros(500, 2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    y1 = sim.simulate(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(y1, sim.simulate(x, generator=torch.Generator().manual_seed(7)))
    fresh1, fresh2 = sim.simulate(x), sim.simulate(x)  # generator=None: a freshly seeded generator each call
    assert not torch.equal(fresh1, fresh2) and not torch.equal(fresh1, y1)
    assert torch.equal(state, torch.get_rng_state())
    assert abs(float(fresh1.std()) - 1) < 0.1


def test_check_parameters_and_observations():
    sim = Shift()
    assert sim.check_parameters([[0.0, 1.0]]).dtype == torch.get_default_dtype()  # lists become tensors
    with pytest.raises(TypeError, match="shift: parameters must be a floating-point tensor"):
        sim.simulate(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"shape \(n, 2\) \(a, b\), got \(3,\)"):
        sim.simulate(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        sim.simulate(torch.tensor([[0.0, math.inf]]))
    assert sim.check_observation(torch.tensor([1.0, 2.0])).shape == (1, 2)  # one observation -> a batch of one
    assert sim.check_observation(torch.zeros(4, 2)).shape == (4, 2)
    with pytest.raises(ValueError, match="M=2"):
        sim.check_observation(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        sim.check_observation(torch.tensor([math.nan, 0.0]))


def test_defaults_refuse_with_the_simulators_name():
    sim = Shift()
    with pytest.raises(NotImplementedError, match="'shift' has no tractable likelihood"):
        sim.log_likelihood(torch.zeros(2), torch.zeros(1, 2))
    with pytest.raises(NotImplementedError, match="'shift' has no analytic posterior"):
        sim.sample_posterior(torch.zeros(2), 10)
    with pytest.raises(NotImplementedError):
        Simulator()._simulate(torch.zeros(1, 0), torch.Generator())
    assert Simulator().config() == {}
