import pytest
import torch

from sbi_inn.flows import CouplingFlow, FlowConfig, random_orthogonal


def _randomise(flow: torch.nn.Module, std: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            if p.requires_grad:
                p.copy_(std * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("dim,cond_dim", [(2, 0), (5, 0), (4, 3), (7, 2)])
def test_invertible_and_logdet_matches_autograd(dim, cond_dim, float64_default):
    # built in float64 so the test is about the algebra (FrEIA inverts the fixed rotations in the default dtype)
    flow = CouplingFlow(dim, cond_dim, FlowConfig(num_blocks=3, hidden=16, num_layers=2))
    _randomise(flow, std=0.15)
    x = torch.randn(6, dim, dtype=torch.float64)
    c = torch.randn(6, cond_dim, dtype=torch.float64) if cond_dim else None
    z, logdet = flow(x, c)
    x_back, logdet_inv = flow.inverse(z, c)
    assert torch.allclose(x, x_back, atol=1e-8)
    assert torch.allclose(logdet, -logdet_inv, atol=1e-5)
    for i in range(3):
        ci = c[i : i + 1] if c is not None else None
        jac = torch.autograd.functional.jacobian(lambda v, ci=ci: flow(v[None], ci)[0][0], x[i])
        assert torch.allclose(torch.slogdet(jac)[1], logdet[i], atol=1e-5)


def test_fresh_flow_is_a_rotation_and_condition_matters_after_training_weights_change():
    flow = CouplingFlow(4, 2, FlowConfig(num_blocks=2, hidden=8))
    x = torch.randn(10, 4)
    z, logdet = flow(x, torch.randn(10, 2))
    assert torch.allclose(z.norm(dim=1), x.norm(dim=1), atol=1e-5)  # zero-initialised subnets: orthogonal only
    assert torch.allclose(logdet, torch.zeros(10), atol=1e-5)
    _randomise(flow)
    c1, c2 = torch.zeros(10, 2), torch.ones(10, 2)
    assert not torch.allclose(flow(x, c1)[0], flow(x, c2)[0])


@pytest.mark.parametrize("cond_dim", [0, 3])
def test_soft_clamp_bounds_the_log_scale(cond_dim):
    """Eq. 3.13: every coupling log-scale is alpha * tanh(s / alpha), so |log det| <= alpha * dim per block."""
    alpha = 0.5
    flow = CouplingFlow(4, cond_dim, FlowConfig(num_blocks=1, hidden=8, clamp=alpha))
    _randomise(flow, std=5.0)
    c = 10 * torch.randn(100, cond_dim) if cond_dim else None
    _, logdet = flow(10 * torch.randn(100, 4), c)
    assert logdet.abs().max() <= alpha * 4 + 1e-4
    assert logdet.abs().max() > 0.5 * alpha  # the clamp is reached, not bypassed


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "silu", "tanh", "gelu"])
def test_condition_once_per_observation_equals_one_per_row(activation):
    """A (B, C) condition over rows laid out (n, B) gives exactly what the repeated (n * B, C) condition gives,
    in both directions, with gradients on (training) and off (sampling, in-place activations)."""
    flow = CouplingFlow(5, 3, FlowConfig(num_blocks=2, hidden=16, num_layers=2, activation=activation))
    _randomise(flow, std=0.3)
    n, B = 4, 3
    gen = torch.Generator().manual_seed(1)
    x, c = torch.randn(n * B, 5, generator=gen), torch.randn(B, 3, generator=gen)
    z_rep, ld_rep = flow(x, c.repeat(n, 1))
    z_b, ld_b = flow(x, c)
    assert torch.allclose(z_b, z_rep, atol=1e-6) and torch.allclose(ld_b, ld_rep, atol=1e-6)
    with torch.no_grad():
        x_b, _ = flow.inverse(z_rep, c, jac=False)
        x_one, _ = flow.inverse(z_rep[:B], c)  # B == N
        x_single, _ = flow.inverse(z_rep[::B], c[:1])  # one observation: rows 0, B, 2B, ... use c[0]
    assert torch.allclose(x_b, x, atol=1e-4)  # float32 round trip
    assert torch.allclose(x_one, x[:B], atol=1e-4)
    assert torch.allclose(x_single, x[::B], atol=1e-4)


def test_split_first_layer_is_the_concatenation_of_eq_3_10():
    """W_u u + W_c c + b equals one linear layer on [u; c] (thesis eq. 3.10)."""
    flow = CouplingFlow(4, 3, FlowConfig(num_blocks=1, hidden=8, num_layers=1))
    _randomise(flow)
    net = flow.inn[0].net1
    u, c = torch.randn(5, 2), torch.randn(5, 3)
    full = torch.nn.Linear(5, 8)
    with torch.no_grad():
        full.weight.copy_(torch.cat([net.inp.weight, net.cond.weight], 1))
        full.bias.copy_(net.inp.bias)
    expected = net.out(torch.relu(full(torch.cat([u, c], 1))))
    assert torch.allclose(net(u, net.project(c)), expected, atol=1e-6)


def test_orthogonal_and_seeded():
    q = random_orthogonal(6, torch.Generator().manual_seed(1))
    assert torch.allclose(q @ q.T, torch.eye(6), atol=1e-5)
    assert not torch.allclose(q.abs(), torch.eye(6), atol=0.1)  # a rotation that mixes, not a signed identity
    assert torch.equal(q, random_orthogonal(6, torch.Generator().manual_seed(1)))
    a = CouplingFlow(3, 0, FlowConfig(seed=5))
    b = CouplingFlow(3, 0, FlowConfig(seed=5))
    c = CouplingFlow(3, 0, FlowConfig(seed=6))
    x = torch.randn(4, 3)
    assert torch.equal(a(x)[0], b(x)[0])
    assert not torch.allclose(a(x)[0], c(x)[0], atol=1e-3)  # the seed sets the fixed rotations


def test_permutation_mixing():
    """A fresh flow with permutation mixing only permutes coordinates: same values per row, log-det 0."""
    flow = CouplingFlow(5, 0, FlowConfig(num_blocks=2, mixing="permute"))
    x = torch.randn(3, 5)
    z, logdet = flow(x)
    assert torch.equal(z.sort(1).values, x.sort(1).values) and not torch.equal(z, x)
    assert torch.equal(logdet, torch.zeros(3))
    assert torch.allclose(flow.inverse(z)[0], x, atol=1e-6)


def test_jac_false_skips_the_log_det_but_not_the_map():
    flow = CouplingFlow(4, 2, FlowConfig(num_blocks=2, hidden=8))
    _randomise(flow)
    x, c = torch.randn(6, 4), torch.randn(6, 2)
    with torch.no_grad():
        z, logdet = flow(x, c)
        z_nojac, rest = flow(x, c, jac=False)  # only the fixed rotations' log|det| = 0 (up to rounding) is left
    assert torch.equal(z_nojac, z) and float(rest.abs().max()) < 1e-5 and float(logdet.abs().min()) > 0.01


def test_dropout_is_active_in_training_mode_only():
    flow = CouplingFlow(4, 2, FlowConfig(num_blocks=2, hidden=32, dropout=0.5))
    _randomise(flow)
    x, c = torch.randn(8, 4), torch.randn(8, 2)
    flow.train()
    assert not torch.allclose(flow(x, c)[0], flow(x, c)[0])
    flow.eval()
    assert torch.equal(flow(x, c)[0], flow(x, c)[0])


def test_config_dict_round_trip_rebuilds_the_same_flow():
    cfg = FlowConfig(num_blocks=3, hidden=16, num_layers=2, activation="silu", clamp=1.5, mixing="permute", seed=3)
    assert FlowConfig(**cfg.to_dict()) == cfg
    a, b = CouplingFlow(4, 2, cfg), CouplingFlow(4, 2, FlowConfig(**cfg.to_dict()))
    b.load_state_dict(a.state_dict())
    x, c = torch.randn(5, 4), torch.randn(5, 2)
    assert torch.equal(a(x, c)[0], b(x, c)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        CouplingFlow(1)
    with pytest.raises(ValueError, match="activation"):
        FlowConfig(activation="nope")
    with pytest.raises(ValueError, match="clamp"):
        FlowConfig(clamp=0)
    for bad in ({"num_blocks": 0}, {"hidden": 0}, {"num_layers": 0}):
        with pytest.raises(ValueError, match="num_blocks, hidden and num_layers"):
            FlowConfig(**bad)
    with pytest.raises(ValueError, match="mixing"):
        FlowConfig(mixing="learned")
    with pytest.raises(ValueError, match="dropout"):
        FlowConfig(dropout=1.0)
    with pytest.raises(ValueError, match="takes no condition"):
        CouplingFlow(3)(torch.randn(4, 3), torch.randn(4, 2))
    flow = CouplingFlow(3, 2, FlowConfig(num_blocks=1))
    with pytest.raises(ValueError, match="condition"):
        flow(torch.randn(4, 3))
    with pytest.raises(ValueError, match="condition"):
        flow(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="B dividing 4"):
        flow(torch.randn(4, 3), torch.randn(3, 2))
    with pytest.raises(TypeError):
        FlowConfig(num_block=3)


# -- rational-quadratic spline couplings ---------------------------------------------------------------------------
def _spline_config(**kw):
    return FlowConfig(**{"num_blocks": 3, "hidden": 16, "num_layers": 2, "coupling": "spline", "bins": 6,
                         "tail_bound": 3.0, **kw})


@pytest.mark.parametrize("dim,cond_dim", [(2, 1), (5, 3)])
def test_spline_coupling_is_invertible_with_the_autograd_log_det(dim, cond_dim, float64_default):
    flow = CouplingFlow(dim, cond_dim, _spline_config())
    _randomise(flow, std=0.2)  # stronger weights make slopes near the 1e-3 bin floor, ill-conditioned to invert
    x = 2.5 * torch.randn(40, dim, dtype=torch.float64)  # many points inside [-3, 3], some in the identity tails
    c = torch.randn(40, cond_dim, dtype=torch.float64)
    z, logdet = flow(x, c)
    x_back, logdet_inv = flow.inverse(z, c)
    assert torch.allclose(x, x_back, atol=1e-7)
    assert torch.allclose(logdet, -logdet_inv, atol=1e-6)
    assert logdet.abs().max() > 0.1  # the splines are not the identity after randomisation
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flow(v[None], c[i : i + 1])[0][0], x[i])
        assert torch.allclose(torch.slogdet(jac)[1], logdet[i], atol=1e-6)


def test_spline_coupling_starts_as_a_rotation_and_is_monotone_per_coordinate():
    flow = CouplingFlow(4, 2, _spline_config(num_blocks=1, mixing="permute"))
    x, c = torch.randn(50, 4), torch.randn(50, 2)
    z, logdet = flow(x, c)
    assert torch.allclose(logdet, torch.zeros(50), atol=1e-5)
    assert torch.allclose(z.sort(1).values, x.sort(1).values, atol=1e-5)  # a permutation of the identity map
    _randomise(flow, std=0.5)
    grid = torch.linspace(-5, 5, 201)
    x = torch.zeros(201, 4)
    x[:, 3] = grid  # the second half is transformed given the first: z must rise with x3 everywhere
    z, _ = flow(x, torch.zeros(201, 2))
    moved = z[:, (z[1] - z[0]).abs().argmax()]
    assert (torch.diff(moved) > 0).all() or (torch.diff(moved) < 0).all()


def test_spline_coupling_takes_the_condition_once_per_observation():
    flow = CouplingFlow(5, 3, _spline_config())
    _randomise(flow, std=0.3)
    n, B = 4, 3
    x, c = torch.randn(n * B, 5), torch.randn(B, 3)
    z_rep, ld_rep = flow(x, c.repeat(n, 1))
    z_b, ld_b = flow(x, c)
    assert torch.allclose(z_b, z_rep, atol=1e-6) and torch.allclose(ld_b, ld_rep, atol=1e-6)


def test_spline_options_are_checked():
    with pytest.raises(ValueError, match="coupling must be one of"):
        FlowConfig(coupling="cubic")
    with pytest.raises(ValueError, match="bins must be >= 2"):
        FlowConfig(coupling="spline", bins=1)
    with pytest.raises(ValueError, match="bidirectional INN uses affine"):
        CouplingFlow(4, 0, _spline_config())


# -- the sampling fast path ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("coupling", ["affine", "spline"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_sample_inverse_is_the_inverse_bit_for_bit(coupling, activation):
    """CouplingFlow.sample_inverse (buffers reused across layers, condition terms computed once) returns exactly
    inverse(z, c, jac=False)[0] for one condition per row, one per observation and a single one, enough rows
    (300+) for the vectorised kernels and for the two buffers to alternate over 3 hidden layers."""
    flow = CouplingFlow(5, 3, FlowConfig(num_blocks=3, hidden=24, num_layers=3, activation=activation,
                                         coupling=coupling)).eval()
    _randomise(flow, std=0.3)
    gen = torch.Generator().manual_seed(2)
    for n, B in ((1, 310), (62, 5), (333, 1)):
        z, c = 2 * torch.randn(n * B, 5, generator=gen), torch.randn(B, 3, generator=gen)
        with torch.inference_mode():
            ref = flow.inverse(z, c, jac=False)[0]
            fast = flow.sample_inverse(z, c)
        with torch.no_grad():
            assert torch.equal(flow.sample_inverse(z, c), ref)
        assert torch.equal(fast, ref), (n, B)
        assert (fast - z).abs().max() > 0.1  # the flow is not the identity, so equality is not trivial


def test_sample_inverse_outside_sampling_is_the_plain_inverse_and_work_buffers_refuse_autograd():
    flow = CouplingFlow(4, 2, FlowConfig(num_blocks=2, hidden=8))
    _randomise(flow)
    z, c = torch.randn(6, 4, requires_grad=True), torch.randn(3, 2)
    x = flow.sample_inverse(z, c)  # autograd recording: the ordinary inverse, differentiable
    (grad,) = torch.autograd.grad(x.sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    net = flow.inn[0].net1
    work = (torch.empty(6, 8), torch.empty(6, 8))
    with pytest.raises(RuntimeError, match="without autograd"):
        net(z[:, :2], net.project(c), work)
    with torch.no_grad():
        flow.train()
        with pytest.raises(RuntimeError, match="eval-mode"):
            net(z[:, :2], net.project(c), work)
        flow.eval()
        torch.testing.assert_close(net(z[:, :2], net.project(c), work), net(z[:, :2], net.project(c)), rtol=0, atol=0)
