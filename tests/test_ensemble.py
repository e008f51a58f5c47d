"""Ensembles of cINNs (sbi_inn.ensemble) against known answers.

Hand-made members: a fresh cINN is the identity flow (zero-initialised last layers), so after fitting its
standardisation to draws of ``N(mu, s^2 I)`` its density is exactly that Gaussian, whatever ``y``; a mixture of two
such members has a known density and known samples. Trained members: the linear-Gaussian problem of
``test_posterior.py`` (posterior ``N(0.8 y, 0.2 I)``).
"""

import math

import pytest
import torch
from scipy import stats
from torch.distributions import Independent, Normal

from sbi_inn import fit_posterior
from sbi_inn.cinn import ConditionalINN
from sbi_inn.ensemble import fit_ensemble
from sbi_inn.flows import FlowConfig
from sbi_inn.mixture import MixtureModel
from sbi_inn.posterior import Posterior, load_posterior

PRIOR = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
TINY = {"flow": {"num_blocks": 2, "hidden": 16}, "summary_dim": 4, "summary_hidden": 16,
        "train": {"epochs": 3, "batch_size": 64}}


def gaussian_member(mu: float, s: float, seed: int) -> ConditionalINN:
    g = torch.Generator().manual_seed(seed)
    m = ConditionalINN(2, (2,), flow=FlowConfig(num_blocks=2, hidden=8), summary="none")
    x = torch.randn(200_000, 2, generator=g)
    x = (x - x.mean(0)) / x.std(0) * s + mu  # exact moments, so the density is N(mu, s^2) to float precision
    m.fit_standardization(x, torch.randn(1000, 2, generator=g))
    return m


def wrap(model) -> Posterior:
    return Posterior(model, param_names=["a", "b"], obs_shape=(2,), is_set_valued=False)


def mixture_log_pdf(x: torch.Tensor, parts) -> torch.Tensor:
    logs = torch.stack([Normal(mu, s).log_prob(x.double()).sum(-1) for mu, s in parts])
    return torch.logsumexp(logs, 0) - math.log(len(parts))


PARTS = [(-2.0, 0.5), (3.0, 1.5)]


@pytest.fixture(scope="module")
def two_gaussians():
    return wrap(MixtureModel([gaussian_member(mu, s, k) for k, (mu, s) in enumerate(PARTS)]))


def test_log_prob_is_the_mixture_density(two_gaussians):
    x = torch.randn(500, 2) * 3
    got = two_gaussians.log_prob(x, torch.zeros(2)).double()
    torch.testing.assert_close(got, mixture_log_pdf(x, PARTS), atol=2e-4, rtol=1e-5)


def test_samples_follow_the_mixture(two_gaussians):
    s = two_gaussians.sample((20_000,), torch.tensor([0.3, -0.1]), seed=1)[:, 0].double().numpy()
    cdf = lambda v: 0.5 * stats.norm.cdf(v, -2.0, 0.5) + 0.5 * stats.norm.cdf(v, 3.0, 1.5)  # noqa: E731
    assert stats.kstest(s, cdf).pvalue > 0.01
    assert abs((s < 0.5).mean() - cdf(0.5)) < 0.012  # 3.4 standard errors: each member draws half of the samples


def test_one_member_mixture_is_that_member():
    m = gaussian_member(1.0, 2.0, 0)
    single, mixed = wrap(m), wrap(MixtureModel([m]))
    y = torch.randn(3, 2)
    torch.testing.assert_close(mixed.sample_batched((50,), y, seed=4), single.sample_batched((50,), y, seed=4),
                               rtol=0, atol=0)
    x = torch.randn(10, 2)
    torch.testing.assert_close(mixed.log_prob(x, y[0]), single.log_prob(x, y[0]))


def test_samples_do_not_depend_on_chunking(two_gaussians):
    y = torch.randn(7, 2)
    a = two_gaussians.sample_batched((30,), y, seed=2, max_rows=30)
    b = two_gaussians.sample_batched((30,), y, seed=2, max_rows=10_000)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # the same draws; matmuls of other sizes round differently


def test_members_must_be_fits_of_the_same_problem():
    with pytest.raises(ValueError, match="member 1 differs"):
        MixtureModel([ConditionalINN(2, (2,)), ConditionalINN(2, (3,))])
    with pytest.raises(ValueError, match="at least one member"):
        MixtureModel([])
    with pytest.raises(TypeError, match="only conditional INNs"):
        MixtureModel([torch.nn.Linear(2, 2)])


def test_save_and_load_round_trip(two_gaussians, tmp_path):
    path = two_gaussians.save(tmp_path / "mix.sbi")
    loaded = load_posterior(path, device="cpu")
    assert isinstance(loaded.model, MixtureModel) and loaded.model.num_members == 2
    y = torch.randn(2)
    torch.testing.assert_close(loaded.sample((100,), y, seed=3), two_gaussians.sample((100,), y, seed=3))


@pytest.mark.parametrize("members, match", [([], "model.members must be a non-empty list"),
                                            (["cinn"], "model.members must be a non-empty list")])
def test_a_crafted_mixture_header_is_refused(two_gaussians, tmp_path, members, match):
    from sbi_inn.model_files import write_model_file
    from sbi_inn.posterior import FORMAT_NAME, FORMAT_VERSION

    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "package_version": "0",
              "model": {"type": "mixture", "members": members}, "param_names": ["a", "b"], "obs_shape": [2],
              "is_set_valued": False, "metadata": {}}
    path = write_model_file(tmp_path / "bad.sbi", header, two_gaussians.model.state_dict())
    with pytest.raises(ValueError, match=match):
        load_posterior(path, device="cpu")


def test_a_member_header_asking_for_more_than_its_weights_is_refused(two_gaussians, tmp_path):
    from sbi_inn.model_files import write_model_file
    from sbi_inn.posterior import FORMAT_NAME, FORMAT_VERSION

    config = two_gaussians.model.config()
    config["members"][1]["flow"]["hidden"] = 10**9
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "package_version": "0", "model": config,
              "param_names": ["a", "b"], "obs_shape": [2], "is_set_valued": False, "metadata": {}}
    path = write_model_file(tmp_path / "big.sbi", header, two_gaussians.model.state_dict())
    with pytest.raises(ValueError, match="hidden"):
        load_posterior(path, device="cpu")


def linear_gaussian(x, generator=None):
    return x + 0.5 * torch.randn(x.shape, generator=generator)


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = {"flow": {"num_blocks": 4, "hidden": 32},
               "train": {"epochs": 20, "batch_size": 128, "lr": 2e-3, "lr_final": 1e-4, "patience": None}}
        ens = fit_ensemble(linear_gaussian, PRIOR, num_simulations=2000, members=2, config=cfg, summary="none",
                           seed=0, show_progress=False)
        single = fit_posterior(linear_gaussian, PRIOR, num_simulations=2000, config=cfg, summary="none", seed=0,
                               show_progress=False)
        return ens, single
    finally:
        torch.set_num_threads(threads)


def test_member_zero_is_the_single_fit_and_the_rest_differ(trained):
    ens, single = trained
    members = ens.model.members
    for name, w in single.model.state_dict().items():
        torch.testing.assert_close(members[0].state_dict()[name], w, rtol=0, atol=0)
    assert not torch.equal(next(members[1].parameters()), next(members[0].parameters()))
    info = ens.metadata["ensemble"]
    assert [r["seed"] for r in info["members"]][0] == 0 and len({r["seed"] for r in info["members"]}) == 2
    assert info["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in info["members"]))


def test_trained_mixture_recovers_the_analytic_posterior(trained):
    ens, _ = trained
    y = torch.tensor([1.0, -0.5])
    s = ens.sample((20_000,), y, seed=0).double()
    torch.testing.assert_close(s.mean(0), 0.8 * y.double(), atol=0.06, rtol=0)
    torch.testing.assert_close(s.std(0), torch.full((2,), math.sqrt(0.2), dtype=torch.float64), atol=0.05, rtol=0)
    x = 0.8 * y + math.sqrt(0.2) * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    exact = Normal(0.8 * y, math.sqrt(0.2)).log_prob(x).sum(-1)
    assert (exact - ens.log_prob(x, y)).mean().abs() < 0.05  # KL(p || q) estimate in nats


def test_best_keeps_the_member_of_lowest_validation_loss():
    cfgs = [{**TINY, "train": {"epochs": 1, "batch_size": 64, "lr": 1e-5}}, {**TINY, "train": {"epochs": 6}}]
    post = fit_ensemble(linear_gaussian, PRIOR, num_simulations=600, members=cfgs, combine="best", seed=0,
                        show_progress=False)
    info = post.metadata["ensemble"]
    vals = [r["best_val_loss"] for r in info["members"]]
    assert info["kept"] == vals.index(min(vals)) == 1
    assert isinstance(post.model, ConditionalINN)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"members": 0}, ValueError, "members must be >= 1"),
    ({"members": True}, TypeError, "members must be an integer"),
    ({"members": 2, "combine": "best"}, ValueError, "list of configurations"),
    ({"members": 2, "combine": "vote"}, ValueError, "combine must be one of"),
    ({"members": [{}, {}], "config": {}}, TypeError, "not both"),
    ({"members": []}, ValueError, "empty list"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_ensemble(linear_gaussian, PRIOR, num_simulations=100, show_progress=False, **kwargs)
