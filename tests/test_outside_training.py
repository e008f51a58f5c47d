"""Posteriors asked about what they never saw: a warning, and never a non-finite sample or one outside the support."""

import math
import warnings

import pytest
import torch
from torch.distributions import Independent, Normal, Uniform

from sbi_inn import fit_posterior, load_posterior
from sbi_inn.posterior import OutsideTrainingWarning
from sbi_inn.priors import BoxUniform
from sbi_inn.transforms import INTERVAL_MAPS, SupportTransform

SMALL = {"flow": {"num_blocks": 2, "hidden": 16}, "train": {"epochs": 2}}


class HalfBounded(torch.distributions.Distribution):
    """Exponential(1) in the first coordinate, standard normal in the second: support [0, inf) x R."""

    arg_constraints = {}
    support = torch.distributions.constraints.independent(
        torch.distributions.constraints.interval(torch.tensor([0.0, -math.inf]), torch.tensor([math.inf, math.inf])),
        1)

    def __init__(self):
        super().__init__(event_shape=(2,), validate_args=False)

    def sample(self, sample_shape=()):
        e = torch.distributions.Exponential(torch.tensor(1.0)).sample((*sample_shape, 1))
        return torch.cat([e, torch.randn(*sample_shape, 1)], -1)

    def log_prob(self, x):
        return -x[..., 0] - 0.5 * x[..., 1] ** 2 - 0.5 * math.log(2 * math.pi)


def _linear(x):
    return x + 0.1 * torch.randn_like(x)


@pytest.fixture(scope="module")
def box_posterior():
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    return fit_posterior(_linear, prior, num_simulations=500, config=SMALL, seed=0, show_progress=False)


@pytest.fixture(scope="module")
def half_posterior():
    return fit_posterior(_linear, HalfBounded(), num_simulations=500, config=SMALL, seed=0, show_progress=False)


def test_in_range_observations_pass_quietly(box_posterior):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutsideTrainingWarning)
        box_posterior.sample((10,), torch.tensor([0.5, 0.5]), seed=0)
        box_posterior.sample_batched((10,), torch.rand(50, 2, generator=torch.Generator().manual_seed(0)), seed=0)


@pytest.mark.parametrize("which", ["box", "half"])
def test_far_observations_warn_and_samples_stay_finite_and_strictly_inside(box_posterior, half_posterior, which):
    post = box_posterior if which == "box" else half_posterior
    far = torch.tensor([[1e4, -1e4], [-1e6, 1e6], [0.5, 0.5]])
    with pytest.warns(OutsideTrainingWarning, match=r"2 of 3 observation\(s\) \(e\.g\. row 0\).*y0, y1"):
        samples = post.sample_batched((2000,), far, seed=0)
    assert torch.isfinite(samples).all()
    lo, hi = post.model.support.lo, post.model.support.hi
    assert ((samples > lo) & (samples < hi)).all(), "a sample on or outside the support's edge"


def test_the_range_survives_save_and_load(box_posterior, tmp_path):
    box_posterior.save(tmp_path / "p.sbi")
    loaded = load_posterior(tmp_path / "p.sbi")
    assert loaded.metadata["training_range"] == box_posterior.metadata["training_range"]
    with pytest.warns(OutsideTrainingWarning):
        loaded.log_prob(torch.tensor([[0.5, 0.5]]), torch.tensor([50.0, 0.5]))


def _gaussian_sets(x, generator=None):
    sizes = torch.randint(1, 11, (len(x),), generator=generator)
    y = x[:, None, :] + torch.randn(len(x), 10, 1, generator=generator)
    return y, sizes


def test_a_set_size_beyond_training_warns_naming_it():
    prior = Independent(Normal(torch.zeros(1), torch.ones(1)), 1)
    post = fit_posterior(_gaussian_sets, prior, num_simulations=300, config=SMALL, seed=0, show_progress=False)
    assert post.metadata["training_range"]["set_size_max"] == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutsideTrainingWarning)
        post.sample((5,), torch.zeros(10, 1), sizes=10, seed=0)
    with pytest.warns(OutsideTrainingWarning, match=r"set sizes \[500\].*sizes trained on \(1 to 10\)"):
        post.sample((5,), torch.zeros(500, 1), seed=0)


@pytest.mark.parametrize("interval", INTERVAL_MAPS)
def test_support_transform_never_returns_an_edge_or_inf(interval):
    t = SupportTransform(torch.tensor([0.0, 0.0, -math.inf, -math.inf]),
                         torch.tensor([1.0, math.inf, 5.0, math.inf]), interval)
    u = torch.tensor([[40.0, 100.0, 100.0, 1e38], [-40.0, -200.0, -100.0, -1e38]])
    x = t(u)
    assert torch.isfinite(x).all() and ((x > t.lo) & (x < t.hi)).all()
    x64 = t(u.double())
    assert x64.dtype == torch.float64 and ((x64 > t.lo.double()) & (x64 < t.hi.double())).all()


def test_nan_weights_never_give_nan_samples(box_posterior, tmp_path):
    import copy

    broken = copy.deepcopy(box_posterior)
    with torch.no_grad():
        next(p for p in broken.model.parameters() if p.ndim == 2).fill_(math.nan)
    with pytest.raises(FloatingPointError, match="weights hold NaN or inf"):
        broken.sample((10,), torch.tensor([0.5, 0.5]), seed=0)
    broken.save(tmp_path / "nan.sbi")
    with pytest.raises(ValueError, match="hold NaN or inf"):
        load_posterior(tmp_path / "nan.sbi")


def test_uniform_independent_prior_box_is_also_covered():
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    post = fit_posterior(_linear, prior, num_simulations=300, config=SMALL, seed=1, show_progress=False)
    with pytest.warns(OutsideTrainingWarning):
        s = post.sample((500,), torch.tensor([30.0, -30.0]), seed=0)
    assert ((s > 0) & (s < 1)).all()


@pytest.mark.parametrize("interval", INTERVAL_MAPS)
def test_a_posterior_piled_against_an_edge_stays_inside_with_finite_densities(interval):
    """y = x + noise(0.1) on [0, 1]^2, observed at the corner (1, 0): the posterior (a normal truncated at the
    corner, 68 % of its mass within 0.1 of each edge) piles against two edges. Every sample lies strictly inside the
    box and has a finite log density (issue 15: tails and support)."""
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    post = fit_posterior(_linear, prior, num_simulations=3000, seed=0, show_progress=False,
                         config={"flow": {"num_blocks": 3, "hidden": 32}, "train": {"epochs": 40, "patience": None},
                                 "interval_map": interval})
    y = torch.tensor([1.0, 0.0])
    samples = post.sample((20_000,), y, seed=0)
    assert ((samples > 0) & (samples < 1)).all()
    assert (samples[:, 0] > 0.9).float().mean() > 0.5 and (samples[:, 1] < 0.1).float().mean() > 0.5  # piled up
    logp = post.log_prob(samples, y)
    assert torch.isfinite(logp).all()


def test_probit_interval_map_survives_save_and_load(tmp_path):
    """A cINN fitted with ``interval_map="probit"`` saves the map in its JSON configuration and loads with it (same
    densities and samples); a file written before the option loads with the logit map it was trained with."""
    from sbi_inn.cinn import ConditionalINN

    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    post = fit_posterior(_linear, prior, num_simulations=300, config={**SMALL, "interval_map": "probit"}, seed=0,
                         show_progress=False)
    assert post.model.support.interval == "probit"
    path = tmp_path / "probit.sbi"
    post.save(path)
    loaded = load_posterior(path)
    assert loaded.model.support.interval == "probit"
    y = torch.tensor([0.3, 0.9])
    torch.testing.assert_close(loaded.sample((100,), y, seed=1), post.sample((100,), y, seed=1), atol=0, rtol=0)
    x = torch.tensor([[0.2, 0.7], [0.99, 0.01]])
    torch.testing.assert_close(loaded.log_prob(x, y), post.log_prob(x, y))
    config = post.model.config()
    del config["interval_map"]
    assert ConditionalINN.from_config(config).support.interval == "logit"
