"""Support transforms and standardisation: round trips, log-determinants, densities, buffers."""

import math

import pytest
import scipy.special
import torch

from sbi_inn.transforms import INTERVAL_MAPS, Standardize, SupportTransform, standard_normal_log_prob

INF = math.inf


def _mixed(interval="logit"):
    return SupportTransform(torch.tensor([0.0, 0.0, -INF, -INF]), torch.tensor([1.0, INF, INF, 2.0]), interval)


@pytest.mark.parametrize("interval", INTERVAL_MAPS)
def test_support_transform_round_trip_and_support(interval):
    t = _mixed(interval)
    # |u| <= 8 (logit) or 4 (probit): further out, float32 x next to the upper bound 1 is too coarse to give u
    bound = 8 if interval == "logit" else 4
    u = (3 * torch.randn(200, 4, generator=torch.Generator().manual_seed(0))).clamp(-bound, bound)
    x = t(u)
    assert t.contains(x).all()
    assert torch.allclose(t.inverse(x), u, atol=1e-3, rtol=1e-3)
    assert (x[:, 0] > 0).all() and (x[:, 0] < 1).all() and (x[:, 1] > 0).all() and (x[:, 3] < 2).all()


@pytest.mark.parametrize("interval", INTERVAL_MAPS)
def test_support_transform_log_det_matches_autograd(interval):
    t = _mixed(interval)
    u = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: t(v[None])[0], u[i])
        assert torch.allclose(torch.slogdet(jac)[1], t.log_abs_det(u[i : i + 1])[0], atol=1e-5)


@pytest.mark.parametrize("interval", INTERVAL_MAPS)
def test_density_through_transform_integrates_to_one(interval):
    """A standard normal pushed through the logit or probit transform of [0, 2] is a proper density on [0, 2]."""
    t = SupportTransform(torch.tensor([0.0]), torch.tensor([2.0]), interval)
    x = torch.linspace(1e-4, 2 - 1e-4, 20001)[:, None]
    u = t.inverse(x)
    logq = standard_normal_log_prob(u) - t.log_abs_det(u)
    assert abs(torch.trapezoid(logq.exp(), x[:, 0]).item() - 1.0) < 1e-3


def test_probit_map_is_the_normal_cdf_and_sends_a_uniform_to_a_standard_normal():
    """x = lo + (hi - lo) Phi(u), exact in the far tails next to both bounds (torch's float32 ``ndtr`` is 0 below
    u = -5.5); the pushforward density of N(0, 1) is then uniform on the box: 1 / (hi - lo) everywhere."""
    t = SupportTransform(torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 1.0]), "probit")
    u = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-9.0, -12.0], [4.0, 5.0]], dtype=torch.float64)
    phi = torch.from_numpy(scipy.special.ndtr(u.numpy()))  # scipy's is accurate in the far tails
    expected = torch.stack([-1 + 4 * phi[:, 0], phi[:, 1]], 1)
    torch.testing.assert_close(SupportTransform(t.lo, t.hi, "probit").double()(u), expected, rtol=1e-12, atol=0)
    x32 = t(torch.tensor([[0.0, -12.0], [0.0, 12.0]]))  # float32: Phi(-12) = 1.8e-33 next to the bound 0, not 0
    assert x32[0, 1] / 1.7764821e-33 == pytest.approx(1, rel=1e-4)
    assert x32[1, 1] == torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))  # next to 1: the last number inside
    uu = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    logq = standard_normal_log_prob(uu) - t.log_abs_det(uu)
    torch.testing.assert_close(logq, torch.full((1000,), -math.log(4.0)), rtol=0, atol=1e-5)


def test_unknown_interval_map_is_refused():
    with pytest.raises(ValueError, match="interval must be one of"):
        SupportTransform(torch.zeros(1), torch.ones(1), "tanh")


def test_standardize_fit_and_mask():
    data = torch.randn(1000, 3) * torch.tensor([1.0, 5.0, 0.0]) + torch.tensor([2.0, -1.0, 7.0])
    s = Standardize(3).fit(data)
    out = s(data)
    assert torch.allclose(out[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert s.std[2] == 1.0 and torch.allclose(out[:, 2], torch.zeros(1000), atol=1e-5)  # a constant column: std 1
    assert torch.allclose(s.inverse(out), data, atol=1e-4)
    assert s.log_abs_det() == pytest.approx(-math.log(float(s.std[0])) - math.log(float(s.std[1])), rel=1e-6)
    sets = torch.randn(50, 10, 2) + 3
    mask = torch.arange(10)[None] < torch.randint(1, 11, (50,))[:, None]
    sets_padded = torch.where(mask[..., None], sets, torch.zeros_like(sets))
    s2 = Standardize(2).fit(sets_padded, mask)
    assert torch.allclose(s2.mean, sets[mask].mean(0), atol=1e-5)
    assert torch.allclose(s2.std, sets[mask].std(0, unbiased=False), atol=1e-5)  # padding rows are not counted


def test_bounds_map_each_kind_of_dimension_by_its_formula():
    """[0, 1]: sigmoid; [0, inf): lo + exp(u); (-inf, inf): identity; (-inf, 2]: hi - exp(u)."""
    t = _mixed()
    u = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 5.0, 1.0]])
    expected = torch.stack([torch.sigmoid(u[:, 0]), torch.exp(u[:, 1]), u[:, 2], 2 - torch.exp(u[:, 3])], 1)
    torch.testing.assert_close(t(u), expected)
    # points on or outside the boundary are clipped just inside, so their u is finite
    edge = torch.tensor([[0.0, 0.0, 1.0, 2.0], [1.5, -1.0, 1.0, 3.0]])
    assert torch.isfinite(t.inverse(edge)).all()
    assert t.contains(edge).tolist() == [True, False]


def test_bounds_are_buffers_that_follow_the_module():
    t = SupportTransform(torch.tensor([0.0, -math.inf]), torch.tensor([1.0, math.inf]))
    s = Standardize((2, 3))
    assert set(t.state_dict()) == {"lo", "hi"} and set(s.state_dict()) == {"mean", "std"}
    assert t.double().lo.dtype == torch.float64 and s.double().std.shape == (2, 3)


def test_bad_bounds():
    with pytest.raises(ValueError, match="1-D of equal length"):
        SupportTransform(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="must exceed"):
        SupportTransform(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]))


def test_standard_normal_log_prob():
    z = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(standard_normal_log_prob(z), expected)
