"""Summary networks: shapes, deep-set permutation and padding invariance, dependence on the set size."""

import pytest
import torch

from sbi_inn.summary import DeepSetSummary, MLPSummary, mlp


@pytest.fixture
def deepset():
    torch.manual_seed(0)
    return DeepSetSummary(3, 5, hidden=16, num_layers=2).eval()


def test_mlp_summary_shapes_and_flattening(gen):
    net = MLPSummary(6, 4, hidden=8, num_layers=1)
    y = torch.randn(7, 2, 3, generator=gen)
    out = net(y)
    assert out.shape == (7, 4)
    torch.testing.assert_close(out, net(y.reshape(7, 6)))  # observations of any shape are flattened row-major
    torch.testing.assert_close(out[2:3], net(y[2:3]))      # each row on its own: no mixing across the batch
    with pytest.raises(ValueError, match="MLPSummary"):
        MLPSummary(0, 4)


def test_mlp_builder_depth_and_activation():
    net = mlp(3, 2, hidden=5, num_layers=2, activation="tanh")
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert (net[0].in_features, net[-1].out_features) == (3, 2)
    assert len(mlp(3, 2, hidden=5, num_layers=0)) == 1  # no hidden layer: one linear map
    with pytest.raises(ValueError, match="activation"):
        mlp(3, 2, 5, 1, activation="swish")


def test_deepset_permutation_invariance(deepset, gen):
    y = torch.randn(4, 9, 3, generator=gen)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 5, 1, 7])[:, None]
    out = deepset(y, mask)
    for b, k in enumerate([9, 5, 1, 7]):
        perm = torch.randperm(k, generator=gen)
        y2 = y.clone()
        y2[b, :k] = y[b, perm]
        torch.testing.assert_close(deepset(y2, mask)[b], out[b], rtol=1e-5, atol=1e-6)


def test_deepset_padding_invariance(deepset, gen):
    y = torch.randn(3, 4, 3, generator=gen)
    sizes = torch.tensor([4, 2, 3])
    mask = torch.arange(4)[None, :] < sizes[:, None]
    y = y * mask[..., None]
    out = deepset(y, mask)
    # more padded rows, filled with garbage (NaN included), change nothing
    y_pad = torch.cat([y, 1e3 * torch.randn(3, 6, 3, generator=gen)], 1)
    y_pad[:, -1] = float("nan")
    y_pad[1, 2:4] = 7.0
    mask_pad = torch.arange(10)[None, :] < sizes[:, None]
    torch.testing.assert_close(deepset(y_pad, mask_pad), out, rtol=1e-5, atol=1e-6)


def test_deepset_depends_on_set_size(deepset):
    a = torch.tensor([[0.3, -1.0, 2.0]])
    one = deepset(a[None], torch.ones(1, 1, dtype=torch.bool))
    two = deepset(a.repeat(2, 1)[None], torch.ones(1, 2, dtype=torch.bool))  # same mean, twice the size
    assert not torch.allclose(one, two)


def test_deepset_shape_errors(deepset):
    with pytest.raises(ValueError, match="DeepSetSummary"):
        deepset(torch.randn(2, 4, 2), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="DeepSetSummary"):
        deepset(torch.randn(2, 4, 3), torch.ones(2, 5, dtype=torch.bool))


@pytest.mark.parametrize("num_layers", [0, 1, 2])
@pytest.mark.parametrize("pool", ["mean", "mean_std"])
def test_deepset_equals_the_pools_of_psi(num_layers, pool, gen):
    """The forward pass applies psi's last (affine) layer after pooling; it must equal
    rho([mean_k psi(y_k), std_k h(y_k), log K / log K_ref]) computed member by member (``h``: psi's last hidden layer,
    the input itself without one; the std term only for ``pool="mean_std"``, with SPREAD_EPS under the root), and an
    empty set pools to zero mean and zero spread."""
    torch.manual_seed(1)
    net = DeepSetSummary(3, 5, hidden=16, num_layers=num_layers, pool=pool)
    sizes = torch.tensor([6, 1, 0, 3])
    y = torch.randn(4, 6, 3, generator=gen)
    mask = torch.arange(6)[None, :] < sizes[:, None]
    rows = []
    for b, k in enumerate(sizes.tolist()):
        members = y[b, :k]
        pooled = [net.psi(members).mean(0) if k else torch.zeros(16)]
        if pool == "mean_std":
            h = net.psi[:-1](members)
            var = h.var(0, unbiased=False) if k else torch.zeros(16 if num_layers else 3)
            pooled.append(torch.sqrt(var + net.SPREAD_EPS))
        size = torch.log(torch.tensor([max(k, 1.0)])) / net.LOG_K_REF
        rows.append(net.rho(torch.cat([*pooled, size])))
    torch.testing.assert_close(net(y, mask), torch.stack(rows), rtol=1e-5, atol=1e-6)


def test_spread_pool_sees_the_spread_and_one_member_sets_have_finite_gradients(gen):
    torch.manual_seed(2)
    net = DeepSetSummary(1, 4, hidden=16, num_layers=1)
    assert net.pool == "mean_std"
    base = torch.tensor([[-1.0], [0.0], [1.0]])
    full = torch.ones(1, 3, dtype=torch.bool)
    # same mean, same size, three times the spread: the spread pool tells them apart
    assert not torch.allclose(net(base[None], full), net(3 * base[None], full), atol=1e-4)
    one = torch.randn(2, 1, 1, generator=gen, requires_grad=True)
    out = net(one, torch.ones(2, 1, dtype=torch.bool))
    grads = torch.autograd.grad(out.sum(), [one, *net.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="pool"):
        DeepSetSummary(1, 4, pool="max")
