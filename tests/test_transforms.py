"""Support transforms and standardisation: round trips, log-determinants, densities, buffers."""

import math

import pytest
import torch

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
