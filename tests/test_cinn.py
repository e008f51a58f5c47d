"""The conditional INN model: invertibility, exact densities, support, 1-D flow, configuration round trip."""

import copy
import json
import math

import pytest
import torch

from sbi_inn.cinn import ConditionalINN, rq_spline
from sbi_inn.flows import FlowConfig
from sbi_inn.posterior import Posterior, load_posterior
from sbi_inn.transforms import standard_normal_log_prob

INF = math.inf


def make_model(D, lo=None, hi=None, *, seed=0, scale=0.15, blocks=3, obs_dim=3, **kw):
    """A small model whose weights are randomised (a fresh flow is the identity), standardisation included."""
    torch.manual_seed(seed)
    model = ConditionalINN(D, (obs_dim,), support_low=lo, support_high=hi,
                           flow=FlowConfig(num_blocks=blocks, hidden=16), summary_dim=4, summary_hidden=8, **kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
        model.x_standardize.mean.copy_(0.1 * torch.randn(D))
        model.x_standardize.std.copy_(0.5 + torch.rand(D))
    return model.eval()


def z_of_x(model, x, c):
    return model.flow(model.x_standardize(model.support.inverse(x)), c)[0]


@pytest.mark.parametrize("D, lo, hi", [
    (1, [0.0], [2.0]),
    (2, [-INF, -INF], [INF, INF]),
    (3, [0.0, -INF, 1.0], [1.0, INF, INF]),
    (4, [-1.0, 0.0, -INF, -INF], [1.0, INF, 0.5, INF]),
])
def test_invertible_and_logdet_matches_autograd(D, lo, hi, gen):
    model = make_model(D, torch.tensor(lo), torch.tensor(hi))
    c = model.condition(torch.randn(6, 3, generator=gen))
    x = model.sample_given(c, 2, gen).reshape(12, D)
    cc = c.repeat(2, 1)
    assert model.support.contains(x).all()
    # forward then inverse returns the input (in the unconstrained, standardised space)
    v = model.x_standardize(model.support.inverse(x))
    z, logdet = model.flow(v, cc)
    v2, logdet_inv = model.flow.inverse(z, cc)
    torch.testing.assert_close(v2, v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=1e-4, atol=1e-4)
    # the density of the whole pipeline x -> z equals log N(z) + log|det dz/dx| from autograd (in float64)
    logp = model.log_prob_given(x, cc).detach()
    md = copy.deepcopy(model).double()
    for i in range(0, 12, 3):
        xi, ci = x[i].detach().double(), cc[i:i + 1].detach().double()
        J = torch.autograd.functional.jacobian(lambda a, ci=ci: z_of_x(md, a[None], ci)[0], xi)
        ref = standard_normal_log_prob(z_of_x(md, xi[None], ci))[0] + torch.linalg.slogdet(J)[1]
        assert abs(logp[i].item() - ref.item()) < 1e-3 * (1 + abs(ref.item()))
        torch.testing.assert_close(md.log_prob_given(xi[None], ci)[0], ref.detach())


def _grid(lo, hi, n):
    g = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    centers = 0.5 * (g[1:] + g[:-1])
    xx, yy = torch.meshgrid(centers, centers, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], -1), (hi - lo) / n, g


@pytest.mark.parametrize("bounded", [True, False])
def test_density_normalised_and_matches_samples(bounded, gen):
    lo, hi = (torch.tensor([0.0, -1.0]), torch.tensor([1.0, 2.0])) if bounded else (None, None)
    model = make_model(2, lo, hi, scale=0.2).double()
    c = model.condition(torch.randn(1, 3, generator=gen, dtype=torch.float64))
    if bounded:
        a, b = 0.0, 1.0  # integrate over the box [0, 1] x [-1, 2] through a rescaled second axis
        pts, h, edges = _grid(a, b, 300)
        pts = pts * torch.tensor([1.0, 3.0]) + torch.tensor([0.0, -1.0])
        cell = h * h * 3.0
    else:
        pts, h, edges = _grid(-12.0, 12.0, 400)
        cell = h * h
    with torch.no_grad():
        p = model.log_prob_given(pts, c.expand(len(pts), -1)).exp()
    assert abs(p.sum().item() * cell - 1) < 0.01
    # histogram of samples on a coarse grid against the integrated density
    n = 200_000
    with torch.no_grad():
        s = model.sample_given(c, n, torch.Generator().manual_seed(3))[:, 0]
    coarse = 10
    fine = int(math.isqrt(len(p)))
    P = p.reshape(fine, fine).reshape(coarse, fine // coarse, coarse, fine // coarse).sum((1, 3)) * cell
    if bounded:
        s = (s - torch.tensor([0.0, -1.0])) / torch.tensor([1.0, 3.0])
        lo_, hi_ = 0.0, 1.0
    else:
        lo_, hi_ = -12.0, 12.0
    idx = ((s - lo_) / (hi_ - lo_) * coarse).floor().long().clamp(0, coarse - 1)
    H = torch.zeros(coarse, coarse, dtype=torch.float64)
    H.index_put_((idx[:, 0], idx[:, 1]), torch.ones(n, dtype=torch.float64), accumulate=True)
    H = H / n
    assert 0.5 * (H - P).abs().sum().item() < 0.02  # total variation distance between binned distributions


def test_one_dimensional_flow_is_exact(gen):
    model = make_model(1, torch.tensor([-INF]), torch.tensor([INF]), scale=0.2, blocks=2).double()
    c = model.condition(torch.randn(1, 3, generator=gen, dtype=torch.float64))
    x = torch.linspace(-15, 15, 30001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        p = model.log_prob_given(x, c.expand(len(x), -1)).exp()
        s = model.sample_given(c, 100_000, torch.Generator().manual_seed(0))[:, 0, 0]
    dx = 30 / 30000
    assert abs(p.sum().item() * dx - 1) < 1e-3
    cdf = torch.cumsum(p, 0) * dx
    for q in (0.1, 0.5, 0.9):
        xq = s.quantile(q).item()
        assert abs(cdf[int((xq + 15) / dx)].item() - q) < 0.01


def test_spline_inverse_and_logdet(gen):
    n, K = 1000, 6
    x = 6 * torch.randn(n, generator=gen, dtype=torch.float64)
    params = [torch.randn(n, k, generator=gen, dtype=torch.float64) for k in (K, K, K - 1)]
    y, ld = rq_spline(x, *params, bound=5.0)
    x2, ld_inv = rq_spline(y, *params, bound=5.0, inverse=True)
    torch.testing.assert_close(x2, x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ld_inv, -ld)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rq_spline(xr, *params, bound=5.0)[0].sum(), xr)
    torch.testing.assert_close(grad.log(), ld)
    assert (y[x.abs() > 5] == x[x.abs() > 5]).all()  # identity tails


def test_samples_inside_box_even_with_extreme_weights(gen):
    lo, hi = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 2.001, 1.0])
    model = make_model(3, lo, hi, scale=5.0)
    c = model.condition(100 * torch.randn(50, 3, generator=gen))
    with torch.no_grad():
        x = model.sample_given(c, 200, gen)
    assert torch.isfinite(x).all()
    assert model.support.contains(x.reshape(-1, 3)).all()
    moderate = make_model(3, lo, hi)
    c = moderate.condition(torch.randn(2, 3, generator=gen))
    logp = moderate.log_prob_given(torch.tensor([[1.5, 2.0, 0.0], [0.5, 2.0005, 0.0]]), c)
    assert logp[0] == -math.inf and torch.isfinite(logp[1])


def test_config_round_trip_gives_identical_outputs(gen):
    for D, kw in [(3, {}), (1, {}), (2, {"is_set_valued": True}), (2, {"summary": "none"})]:
        lo = torch.tensor([0.0, -INF, 0.0][:D])
        hi = torch.tensor([1.0, INF, INF][:D])
        model = make_model(D, lo, hi, **kw)
        cfg = json.loads(json.dumps(model.config()))  # JSON-clean: infinite bounds are encoded
        twin = ConditionalINN.from_config(cfg)
        twin.load_state_dict(model.state_dict())
        twin.eval()
        if kw.get("is_set_valued"):
            y, sizes = torch.randn(4, 5, 3, generator=gen), torch.tensor([1, 5, 3, 2])
        else:
            y, sizes = torch.randn(4, 3, generator=gen), None
        c, c2 = model.condition(y, sizes), twin.condition(y, sizes)
        torch.testing.assert_close(c2, c)
        s = model.sample_given(c, 5, torch.Generator().manual_seed(1))
        torch.testing.assert_close(twin.sample_given(c2, 5, torch.Generator().manual_seed(1)), s)
        x = s.reshape(-1, D)
        torch.testing.assert_close(twin.log_prob_given(x, c2.repeat(5, 1)), model.log_prob_given(x, c.repeat(5, 1)))
        assert twin.config() == cfg


def test_loss_is_per_dimension_nll(gen):
    model = make_model(2, None, None)
    x, y = torch.randn(64, 2, generator=gen), torch.randn(64, 3, generator=gen)
    loss, parts = model.loss((x, y))
    c = model.condition(y)
    logq_v = model.log_prob_given(x, c) - model.x_standardize.log_abs_det()  # unbounded: u = x
    torch.testing.assert_close(loss, -logq_v.mean() / 2, rtol=1e-5, atol=1e-5)
    assert parts["nll_per_dim"] == pytest.approx(loss.item())
    # the per-row values that the trimmed validation loss averages
    torch.testing.assert_close(model.nll_rows((x, y)), -logq_v / 2, rtol=1e-5, atol=1e-5)


def test_set_valued_loss_accepts_sizes_or_mask(gen):
    model = make_model(2, None, None, is_set_valued=True)
    x, y = torch.randn(8, 2, generator=gen), torch.randn(8, 4, 3, generator=gen)
    sizes = torch.randint(1, 5, (8,), generator=gen)
    mask = torch.arange(4)[None, :] < sizes[:, None]
    torch.testing.assert_close(model.loss((x, y, sizes))[0], model.loss((x, y, mask))[0])


def test_constructor_errors():
    with pytest.raises(ValueError, match="summary"):
        ConditionalINN(2, (3,), summary="transformer")
    with pytest.raises(ValueError, match="deepset"):
        ConditionalINN(2, (3,), summary="deepset")
    with pytest.raises(ValueError, match="permutation-invariant"):
        ConditionalINN(2, (3,), is_set_valued=True, summary="mlp")
    with pytest.raises(ValueError, match="bounds"):
        ConditionalINN(2, (3,), support_low=torch.zeros(3), support_high=torch.ones(3))
    with pytest.raises(ValueError, match="not a cinn"):
        ConditionalINN.from_config({"type": "inn"})


def test_custom_summary_saves_weights_and_loads_with_the_module(tmp_path):
    class Net(torch.nn.Module):
        out_dim = 4

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, y):
            return torch.tanh(self.lin(y))

    torch.manual_seed(0)
    model = ConditionalINN(2, (3,), summary=Net(), flow=FlowConfig(num_blocks=1, hidden=4))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    post = Posterior(model, param_names=["a", "b"], obs_shape=(3,))
    y = torch.tensor([0.1, -0.2, 0.3])
    assert "Posterior(method='cinn'" in repr(post)
    path = post.save(tmp_path / "p.sbi")
    with pytest.raises(ValueError, match="custom summary network .*Net"):
        load_posterior(path)
    back = load_posterior(path, device="cpu", summary=Net())  # fresh weights, overwritten from the file
    assert torch.equal(back.sample((20,), y, seed=3), post.sample((20,), y, seed=3))
    x = post.sample((5,), y, seed=1)
    assert torch.allclose(back.log_prob(x, y), post.log_prob(x, y))
    wrong = torch.nn.Linear(3, 5)
    wrong.out_dim = 5
    with pytest.raises(ValueError, match="out_dim"):
        load_posterior(path, summary=wrong)
    plain = Posterior(ConditionalINN(2, (3,), flow=FlowConfig(num_blocks=1, hidden=4)), param_names=["a", "b"],
                      obs_shape=(3,)).save(tmp_path / "q.sbi")
    with pytest.raises(ValueError, match="only for posteriors trained with a custom"):
        load_posterior(plain, summary=Net())


# -- the summary network inside the model -----------------------------------------------------------------------------
def test_model_condition_on_sets_is_invariant(gen):
    torch.manual_seed(1)
    model = ConditionalINN(2, (3,), is_set_valued=True, flow=FlowConfig(num_blocks=2, hidden=8), summary_dim=4,
                           summary_hidden=8)
    y = torch.randn(50, 6, 3, generator=gen)
    sizes = torch.randint(1, 7, (50,), generator=gen)
    model.fit_standardization(torch.randn(50, 2, generator=gen), y, sizes)
    c = model.condition(y, sizes)
    # padded entries are ignored even when they hold garbage and the padding grows
    y2 = torch.cat([y, torch.randn(50, 3, 3, generator=gen)], 1)
    torch.testing.assert_close(model.condition(y2, sizes), c, rtol=1e-5, atol=1e-6)
    perm = torch.randperm(6, generator=gen)
    full = torch.full((50,), 6)
    torch.testing.assert_close(model.condition(y[:, perm], full), model.condition(y, full), rtol=1e-5, atol=1e-6)


def test_custom_summary_module_is_used():
    class Mean(torch.nn.Module):
        out_dim = 3

        def forward(self, y, mask):
            w = mask[..., None].float()
            return (y * w).sum(1) / w.sum(1)

    model = ConditionalINN(2, (3,), is_set_valued=True, summary=Mean(), flow=FlowConfig(num_blocks=1, hidden=4))
    y = torch.arange(24.0).reshape(2, 4, 3)
    c = model.condition(y, torch.tensor([1, 4]))  # standardisation not fitted: the identity
    torch.testing.assert_close(c, torch.stack([y[0, 0], y[1].mean(0)]))  # the module, with the sizes' mask
    assert model.config()["summary"] == {"kind": "custom", "dim": 3, "class": f"{__name__}.{Mean.__qualname__}"}
    with pytest.raises(ValueError, match="out_dim"):
        ConditionalINN(2, (3,), summary=torch.nn.Linear(3, 2))


def test_summary_pool_is_saved_and_old_configs_load_as_the_mean_pool():
    model = ConditionalINN(2, (3,), is_set_valued=True, flow=FlowConfig(num_blocks=1, hidden=4), summary_hidden=8,
                           summary_pool="mean")
    cfg = model.config()
    assert cfg["summary"]["pool"] == "mean"
    assert ConditionalINN.from_config(cfg).summary.pool == "mean"
    assert ConditionalINN(2, (3,), is_set_valued=True, summary_hidden=8).config()["summary"]["pool"] == "mean_std"
    del cfg["summary"]["pool"]  # a file written before the spread pool existed
    assert ConditionalINN.from_config(cfg).summary.pool == "mean"
    assert "pool" not in ConditionalINN(2, (3,), summary_hidden=8).config()["summary"]  # MLP summaries have none


def test_fit_standardization_works_in_the_unconstrained_space_and_summary_none_is_the_standardised_y(gen):
    lo, hi = torch.tensor([0.0, -INF]), torch.tensor([1.0, INF])
    model = ConditionalINN(2, (3,), support_low=lo, support_high=hi, summary="none",
                           flow=FlowConfig(num_blocks=1, hidden=4))
    x = torch.stack([torch.rand(500, generator=gen), 3 + 2 * torch.randn(500, generator=gen)], 1)
    y = 5 + 10 * torch.randn(500, 3, generator=gen)
    model.fit_standardization(x, y)
    u = model.support.inverse(x)  # logit of the first parameter, identity for the second
    torch.testing.assert_close(model.x_standardize.mean, u.mean(0))
    torch.testing.assert_close(model.x_standardize.std, u.std(0, unbiased=False))
    torch.testing.assert_close(model.condition(y[:4]), (y[:4] - y.mean(0)) / y.std(0, unbiased=False))
    sets = ConditionalINN(2, (3,), is_set_valued=True, flow=FlowConfig(num_blocks=1, hidden=4), summary_hidden=8)
    ys = torch.randn(200, 6, 3, generator=gen) + 4
    sizes = torch.randint(1, 7, (200,), generator=gen)
    ys[torch.arange(6)[None] >= sizes[:, None]] = 1e6  # padding must not enter the statistics
    sets.fit_standardization(torch.randn(200, 2, generator=gen), ys, sizes)
    valid = ys[torch.arange(6)[None] < sizes[:, None]]
    torch.testing.assert_close(sets.y_standardize.mean, valid.mean(0))


@pytest.mark.parametrize("B", [1, 4])
def test_sample_given_is_the_reference_computation_bit_for_bit(B):
    """sample_given (the fast inverse) draws exactly what the documented reference computes: per observation a
    generator seeded from ``generator`` in observation order, N(0, I) noise of shape (n, D) from it, rows laid out
    (n, B), then support(unstandardise(flow.inverse(z, c))); bounded and unbounded axes."""
    model = make_model(3, torch.tensor([0.0, -INF, -1.0]), torch.tensor([1.0, INF, INF]), blocks=4)
    c = model.condition(torch.randn(B, 3, generator=torch.Generator().manual_seed(5)))
    n = 700
    with torch.inference_mode():
        fast = model.sample_given(c, n, torch.Generator().manual_seed(11))
        seeds = torch.randint(0, 2**62, (B,), generator=torch.Generator().manual_seed(11)).tolist()
        z = torch.stack([torch.randn(n, 3, generator=torch.Generator().manual_seed(s)) for s in seeds], 1)
        v, _ = model.flow.inverse(z.reshape(n * B, 3), c, jac=False)
        ref = model.support(model.x_standardize.inverse(v)).reshape(n, B, 3)
    assert torch.equal(fast, ref)
    assert fast.std(0).min() > 0.05  # real samples, not a constant
