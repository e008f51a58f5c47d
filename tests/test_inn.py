"""The bidirectional INN (sbi_inn.inn): invertibility, log-dets, where each loss sends gradients, training on the
Gaussian mixture (with an ablation that must fail), checkpoint resume, save/load, no log_prob; the cross-entropy
option for label observations (y_loss="ce": encoding, forward optimum = inverse input, training, save/load)."""

import dataclasses
import json
import math

import pytest
import torch

import sbi_inn.fit as fit_module
import sbi_inn.inn as inn_module
import sbi_inn.losses as losses_module
from sbi_inn import FlowConfig, INNConfig, TrainConfig, fit_posterior
from sbi_inn.inn import BidirectionalINN, build_inn
from sbi_inn.losses import encode_labels, inn_loss, inn_losses, label_loss, smoothed_labels
from sbi_inn.posterior import Posterior, load_posterior
from sbi_inn.priors import BoxUniform
from simulators import get_simulator

SMALL_FLOW = FlowConfig(num_blocks=2, hidden=16, num_layers=2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models train faster on one thread, and far faster when the cores are shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Perturb all weights (fresh flows are the identity: their last subnet layers start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the fixed orthogonal mixing matrices (and their inverses) stay as they are
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def _model(D=2, M=4, K=2, N=8, lo=None, hi=None) -> BidirectionalINN:
    torch.manual_seed(0)
    return _randomize(BidirectionalINN(D, M, latent_dim=K, nominal_dim=N, flow=SMALL_FLOW, support_low=lo,
                                       support_high=hi))


def fit_inn(x, y, *, config, prior=None, seed=0, validation_fraction=0.0, checkpoint_dir=None) -> Posterior:
    """The bidirectional INN trained through the public path on simulations ``(x, y)`` in memory."""
    return fit_posterior(data=(x, y), prior=prior, method="inn", config=config, seed=seed, show_progress=False,
                         data_config={"validation_fraction": validation_fraction}, checkpoint_dir=checkpoint_dir)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_config_dims_and_validation():
    assert INNConfig(deterministic=True).dims(4, 2) == (2, 4)  # inverse kinematics: K = D - M, no padding
    assert INNConfig().dims(4, 2) == (4, 6)  # not deterministic: K = D
    assert INNConfig(latent_dim=2, nominal_dim=16).dims(2, 4) == (2, 16)  # Gaussian mixture (thesis B.5.1)
    with pytest.raises(ValueError, match="nominal_dim"):
        INNConfig(latent_dim=2, nominal_dim=5).dims(2, 4)
    with pytest.raises(TypeError):
        INNConfig.from_dict({"w_q": 1.0})
    cfg = INNConfig.from_dict({"flow": {"num_blocks": 3}, "train": {"epochs": 7}, "widths": [0.2]})
    assert cfg.flow.num_blocks == 3 and cfg.train.epochs == 7 and cfg.widths == (0.2,)
    # partial dicts override the INN's defaults, not FlowConfig's / TrainConfig's class defaults
    assert cfg.flow.activation == "leaky_relu" and cfg.flow.clamp == 1.0 and cfg.train.batch_size == 500
    assert INNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="kernel"):
        INNConfig(kernel="cosine")


@pytest.mark.parametrize("D,M,K,N", [(2, 4, 2, 8), (4, 2, 2, 4), (3, 1, 1, 3)])
def test_invertible_and_logdet_matches_autograd(D, M, K, N, float64_default):
    model = _model(D, M, K, N)  # built in float64: the fixed mixing matrices are inverted in float64 too
    v = torch.randn(5, N, dtype=torch.float64)
    out, logdet = model(v)
    back, logdet_inv = model.inverse(out)
    assert torch.allclose(back, v, atol=1e-8)
    assert torch.allclose(logdet, -logdet_inv, atol=1e-5)
    for i in range(v.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda r: model(r[None])[0][0], v[i])
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(logdet[i].item(), abs=1e-5)


def test_sampling_shapes_padding_and_support():
    lo, hi = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, math.inf])
    model = _model(lo=lo, hi=hi)
    post = Posterior(model, param_names=["a", "b"], obs_shape=(4,))
    s = post.sample((300,), torch.eye(4)[1], seed=0)
    assert s.shape == (300, 2)
    assert model.support.contains(s).all()
    batch = post.sample_batched((7,), torch.eye(4), seed=0)
    assert batch.shape == (7, 4, 2)
    assert torch.equal(post.sample((7,), torch.eye(4)[2], seed=3), post.sample((7,), torch.eye(4)[2], seed=3))
    # the sampler is g([y, z, 0]): x-part of the inverse with zero y-padding
    c = model.condition(torch.eye(4)[:1])
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    ref = model.decode_x(model.inverse(torch.cat([c.expand(3, -1), z, torch.zeros(3, 2)], 1))[0][:, :2])
    got = model.sample_given(c, 3, torch.Generator().manual_seed(5))[:, 0]
    assert torch.allclose(got, ref, atol=1e-6)


def _output_grads(model, term: str, config: INNConfig, x, y):
    """Gradient of one loss term with respect to the forward output ``[y, z, pad]`` (None: no path)."""
    captured = {}
    def hook(module, inputs, outputs):
        captured["out"] = outputs[0]  # returns None: the output is left unchanged

    handle = model.flow.register_forward_hook(hook)
    try:
        terms = inn_losses(model, x, y, config, generator=_gen())
    finally:
        handle.remove()
    return torch.autograd.grad(terms[term], captured["out"], allow_unused=True)[0], terms


def test_each_loss_sends_gradients_only_where_the_thesis_says():
    model = _model(D=2, M=4, K=2, N=8)
    config = INNConfig(latent_dim=2, nominal_dim=8)
    sim = get_simulator("gaussian_mixture")
    g = torch.Generator().manual_seed(0)
    x = sim.sample_prior(64, generator=g)
    y = sim.simulate(x, generator=g)
    M, K = 4, 2
    torch.manual_seed(0)
    grad, terms = _output_grads(model, "z", config, x, y)
    assert torch.count_nonzero(grad[:, :M]) == 0  # L_z: gradient blocked through f_y
    assert grad[:, M : M + K].abs().sum() > 0  # ... but reaches f_z
    assert torch.count_nonzero(grad[:, M + K :]) == 0
    grad, _ = _output_grads(model, "y", config, x, y)
    assert grad[:, :M].abs().sum() > 0 and torch.count_nonzero(grad[:, M:]) == 0  # L_y: only f_y
    grad, _ = _output_grads(model, "pad", config, x, y)
    assert torch.count_nonzero(grad[:, : M + K]) == 0 and grad[:, M + K :].abs().sum() > 0
    for term in ("x", "rec"):  # backward-pass terms: no gradient through the forward output
        grad, _ = _output_grads(model, term, config, x, y)
        assert grad is None or torch.count_nonzero(grad) == 0
    # the detach matters: without it L_z would push on f_y
    out = model(model.pad_x(model.encode_x(x)))[0]
    z = torch.randn(64, K)
    from sbi_inn.losses import mmd

    leak = torch.autograd.grad(mmd(out[:, : M + K], torch.cat([model.y_standardize(y), z], 1)), out)[0]
    assert leak[:, :M].abs().sum() > 0
    assert all(torch.isfinite(v) for v in terms.values())


def _gm_data(n, seed):
    sim = get_simulator("gaussian_mixture")
    g = torch.Generator().manual_seed(seed)
    x = sim.sample_prior(n, generator=g)
    return sim, x, sim.simulate(x, generator=g)


def _fraction_in_correct_modes(post, sim, n=1000):
    """Per label: fraction of samples within 3 sigma of a mixture component carrying that label."""
    labels = torch.tensor(sim.labels)
    out = []
    for label in range(sim.num_labels):
        s = post.sample((n,), torch.eye(sim.num_labels)[label], seed=label)
        near = torch.cdist(s, sim.means) < 3 * sim.sigma
        out.append((near & (labels[None] == label)).any(1).float().mean().item())
    return out


# about 150 steps; tuned so that the full model clears the threshold with a wide margin (~0.7 vs ~0.15 for L_x only)
GM_FAST = INNConfig(latent_dim=2, nominal_dim=12, w_y=10.0, w_z=50.0, w_x=50.0, w_pad=1.0, w_rec=1.0,
                    flow=FlowConfig(num_blocks=3, hidden=48, num_layers=2),
                    train=TrainConfig(epochs=6, batch_size=256, lr=6e-3, lr_final=1e-3, patience=None))


def test_short_training_on_gaussian_mixture_finds_the_modes_and_ablation_fails():
    sim, x, y = _gm_data(6000, 0)
    post = fit_inn(x, y, config=GM_FAST)  # ~150 steps
    good = _fraction_in_correct_modes(post, sim)
    # L_x alone matches the prior but loses the conditioning (thesis 4.2.1, Fig. 4.2): mass follows the prior
    only_x = dataclasses.replace(GM_FAST, w_y=0.0, w_z=0.0)
    post_x = fit_inn(x, y, config=only_x)
    bad = _fraction_in_correct_modes(post_x, sim)
    threshold = 0.5  # mean over the four labels
    print("fraction in correct modes:", good, "L_x only:", bad)
    assert sum(good) / 4 > threshold, good
    assert sum(bad) / 4 < threshold, bad
    assert post.metadata["history"][-1]["L_y"] < post.metadata["history"][0]["L_y"]


def test_training_from_the_simulator_with_fresh_draws_each_epoch():
    """DataConfig.fresh_simulations: new simulations every epoch through fit_posterior; the short
    Gaussian-mixture training still finds the modes."""
    sim = get_simulator("gaussian_mixture")
    post = fit_posterior(sim, sim.prior, num_simulations=6000, method="inn", config=GM_FAST, seed=0,  # ~150 steps
                         data_config={"fresh_simulations": True, "validation_fraction": 0.0}, show_progress=False)
    assert post.metadata["data"]["fresh_simulations_per_epoch"] is True
    good = _fraction_in_correct_modes(post, sim)
    assert sum(good) / 4 > 0.5, good


def test_resume_gives_the_same_weights(tmp_path, monkeypatch):
    """Interrupted in the second epoch while the L_x weight is still ramping up, the resumed fit ends with the
    weights of the uninterrupted one (the ramp follows the training step, not a counter in the model)."""
    sim, x, y = _gm_data(700, 1)
    config = INNConfig(latent_dim=2, nominal_dim=6, x_ramp_epochs=2, flow=SMALL_FLOW,
                       train=TrainConfig(epochs=3, batch_size=200, patience=None))
    kwargs = dict(config=config, seed=3, validation_fraction=1 / 7)
    full = fit_inn(x, y, **kwargs)
    make = inn_loss

    def crashing(config, *, ramp=True, prior_log_prob=None):
        fn, calls = make(config, ramp=ramp, prior_log_prob=prior_log_prob), [0]

        def loss_fn(model, batch, step):
            if ramp:
                calls[0] += 1
                if calls[0] > 4:  # in the middle of the second epoch
                    raise KeyboardInterrupt
            return fn(model, batch, step)

        return loss_fn

    monkeypatch.setattr(fit_module, "inn_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        fit_inn(x, y, checkpoint_dir=tmp_path / "ckpt", **kwargs)
    monkeypatch.setattr(fit_module, "inn_loss", make)
    resumed = fit_inn(x, y, checkpoint_dir=tmp_path / "ckpt", **kwargs)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(resumed.metadata["history"]) == 3


def test_x_ramp_follows_the_training_step():
    """The L_x weight grows linearly over x_ramp_epochs epochs of training steps (validation: the full weight)."""
    from sbi_inn.train import Step

    model = _model(D=2, M=4, K=2, N=8)
    sim, x, y = _gm_data(64, 0)
    model.fit_standardization(x, y)
    cfg = INNConfig(latent_dim=2, nominal_dim=8, x_ramp_epochs=2, w_y=0, w_z=0, w_pad=0, w_rec=0)
    ramped, full = inn_loss(cfg), inn_loss(cfg, ramp=False)
    for epoch, batch, factor in ((0, 0, 0.0), (0, 2, 0.25), (1, 0, 0.5), (2, 0, 1.0), (5, 3, 1.0)):
        loss, parts = ramped(model, (x, y), Step(epoch, batch, 4, _gen()))
        torch.testing.assert_close(loss, torch.tensor(factor * cfg.w_x * parts["L_x"]))
        loss, parts = full(model, (x, y), Step(epoch, batch, 4, _gen()))
        torch.testing.assert_close(loss, torch.tensor(cfg.w_x * parts["L_x"]))


def test_save_load_round_trip(tmp_path):
    sim, x, y = _gm_data(400, 2)
    config = INNConfig(latent_dim=2, nominal_dim=6, flow=SMALL_FLOW, train=TrainConfig(epochs=1, batch_size=200))
    prior = [torch.distributions.Uniform(-10.0, 10.0), torch.distributions.Normal(0.0, 5.0)]
    post = fit_inn(x, y, prior=prior, config=config)
    assert post.model.config()["support_low"] == [-10.0, None] and post.model.config()["support_high"] == [10.0, None]
    path = post.save(tmp_path / "gm.sbi")
    loaded = load_posterior(path, device="cpu")
    assert loaded.model.config() == post.model.config()
    assert loaded.model.config()["type"] == "inn"
    y0 = torch.eye(4)[0]
    assert torch.equal(loaded.sample((50,), y0, seed=1), post.sample((50,), y0, seed=1))
    assert loaded.metadata["method"] == "inn"


@pytest.mark.parametrize("D,M,K,N", [(4, 2, 2, 4), (2, 4, 2, 8)])
def test_log_prob_is_not_available(D, M, K, N):
    model = _model(D=D, M=M, K=K, N=N)
    post = Posterior(model, param_names=list("abcd")[:D], obs_shape=(M,))
    with pytest.raises(NotImplementedError, match="method='cinn'"):
        post.log_prob(torch.zeros(3, D), torch.zeros(M))


# -- cross-entropy for label observations (y_loss="ce", thesis 4.1.2) ------------------------------------------------


def test_y_loss_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="y_loss"):
        INNConfig(y_loss="xent")
    for eps in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="label_smoothing"):
            INNConfig(label_smoothing=eps)
    cfg = INNConfig(y_loss="ce", label_smoothing=0.1, latent_dim=2)
    d = json.loads(json.dumps(cfg.to_dict()))  # as stored in a saved posterior's metadata
    assert d["y_loss"] == "ce" and d["label_smoothing"] == 0.1
    assert INNConfig.from_dict(d) == cfg
    # configs written before the option existed load as the squared loss
    old = INNConfig().to_dict()
    del old["y_loss"], old["label_smoothing"]
    assert INNConfig.from_dict(old) == INNConfig() and INNConfig.from_dict(old).y_loss == "mse"
    # the model keeps the option (sampling must encode y as training did) and round-trips it through its config
    model = build_inn(2, 4, dataclasses.replace(cfg, nominal_dim=8, flow=SMALL_FLOW))
    assert (model.y_loss, model.label_smoothing) == ("ce", 0.1)
    c = json.loads(json.dumps(model.config()))
    assert c["y_loss"] == "ce" and BidirectionalINN.from_config(c).config() == model.config()
    del c["y_loss"], c["label_smoothing"]
    assert BidirectionalINN.from_config(c).y_loss == "mse"
    with pytest.raises(ValueError, match="y_loss"):
        BidirectionalINN(2, 4, latent_dim=2, nominal_dim=8, y_loss="bce")
    with pytest.raises(ValueError, match="M >= 2"):
        BidirectionalINN(2, 1, latent_dim=2, nominal_dim=3, y_loss="ce")
    with pytest.raises(ValueError, match="label_smoothing"):
        BidirectionalINN(2, 4, latent_dim=2, nominal_dim=8, y_loss="ce", label_smoothing=0.0)
    # a loss config that disagrees with the model's y-space is refused
    with pytest.raises(ValueError, match="y_loss"):
        inn_losses(model, torch.zeros(3, 2), torch.eye(4)[:3], INNConfig(latent_dim=2, nominal_dim=8),
                   generator=_gen())


def _ce_model(eps: float = 0.05) -> BidirectionalINN:
    torch.manual_seed(0)
    model = BidirectionalINN(2, 4, latent_dim=2, nominal_dim=8, flow=SMALL_FLOW, y_loss="ce", label_smoothing=eps)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3] * 8)
    return _randomize(model).fit_standardization(torch.randn(64, 2), torch.eye(4)[labels])


def test_label_encoding_values_and_non_label_errors():
    eps, K = 0.05, 4
    t = encode_labels(torch.eye(K), eps)
    # one-hot: q = 1 - eps + eps/K on the label, eps/K elsewhere; centred log q = (K-1)/K r and -r/K, r = log 77
    r = math.log(1 + (1 - eps) * K / eps)
    assert r == pytest.approx(math.log(77))
    expected = torch.full((K, K), -r / K) + torch.eye(K) * r
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-5)
    assert t.sum(-1).abs().max() < 1e-5
    # class probabilities: q = (1 - eps) y + eps/K, then centred log
    y = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    q = (1 - eps) * y + eps / K
    torch.testing.assert_close(smoothed_labels(y, eps), q)
    torch.testing.assert_close(encode_labels(y, eps), q.log() - q.log().mean(-1, keepdim=True))
    # the model feeds exactly this value (standardised) to the inverse pass, and reads its forward output back as
    # logits by undoing the same standardisation
    model = _ce_model(eps)
    c = model.condition(torch.eye(K))
    torch.testing.assert_close(c, model.y_standardize(expected), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.logits(c), expected, rtol=0, atol=1e-5)
    # non-label observations raise, naming the problem, on every path in
    bad = {"sum to 1": [[0.5, 0.7, 0.0, 0.0]], r"\[0, 1\]": [[1.5, -0.5, 0.0, 0.0]], "shape": [[1.0, 0.0, 0.0]],
           "NaN": [[math.nan, 1.0, 0.0, 0.0]]}
    for match, value in bad.items():
        with pytest.raises(ValueError, match=match):
            model.condition(torch.tensor(value))
    post = Posterior(model, param_names=["a", "b"], obs_shape=(K,))
    assert post.sample((5,), torch.eye(K)[1], seed=0).shape == (5, 2)  # a plain one-hot works unchanged
    with pytest.raises(ValueError, match="label observations"):
        post.sample((5,), torch.tensor([0.3, 2.0, 0.1, 0.0]), seed=0)
    sim, x, y_gm = _gm_data(50, 0)
    config = INNConfig(latent_dim=2, nominal_dim=8, y_loss="ce", flow=SMALL_FLOW, train=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="sum to 1"):
        fit_inn(x, 0.5 * y_gm, config=config)
    # the squared loss still takes any observation
    mse = _model()
    assert torch.equal(mse.condition(torch.tensor([[0.5, 0.7, 3.0, -1.0]])),
                       mse.y_standardize(torch.tensor([[0.5, 0.7, 3.0, -1.0]])))


def test_ce_gradient_vanishes_where_the_inverse_is_fed():
    eps = 0.05
    y = torch.cat([torch.eye(4), torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])])
    q = smoothed_labels(y, eps)
    target = encode_labels(y, eps).requires_grad_(True)
    loss = label_loss(target, y, eps)
    (grad,) = torch.autograd.grad(loss, target)
    assert grad.abs().max() < 1e-6  # the forward optimum is the encoded label ...
    assert loss.item() == pytest.approx(-(q * q.log()).sum(-1).mean().item(), abs=1e-5)  # ... with L_y = H(q)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # ... and a strict minimum: every direction costs, the class-mean shift included
        delta = 0.3 * torch.randn(y.shape, generator=g)
        assert label_loss(target.detach() + delta, y, eps) > loss
    shifted = (target.detach() + 1.0).requires_grad_(True)
    (grad_shift,) = torch.autograd.grad(label_loss(shifted, y, eps), shifted)
    assert grad_shift.abs().min() > 1e-3  # the shift the CE cannot see is pinned by the penalty

    # the same through inn_losses: a forward output equal to the standardised encoded label has zero L_y gradient
    model = _ce_model(eps)
    config = INNConfig(latent_dim=2, nominal_dim=8, y_loss="ce", label_smoothing=eps)

    def l_y_grad(y_space_value):
        out = torch.cat([y_space_value, torch.zeros(len(y), 4)], 1).requires_grad_(True)
        model.forward = lambda x_padded: (out, torch.zeros(len(y)))
        try:
            terms = inn_losses(model, torch.zeros(len(y), 2), y, config, generator=_gen())
        finally:
            del model.forward
        return torch.autograd.grad(terms["y"], out)[0]

    assert l_y_grad(model.encode_y(y).detach()).abs().max() < 1e-6
    uncentred = model.y_standardize(torch.log(q))  # log q itself (not centred) is a CE optimum too, but not the one fed
    assert l_y_grad(uncentred).abs().max() > 1e-2


GM_CE = dataclasses.replace(GM_FAST, y_loss="ce", w_y=100.0)  # w_y: see the INNConfig docstring


def test_short_ce_training_on_gaussian_mixture_finds_the_modes_and_broken_ce_fails(monkeypatch):
    sim, x, y = _gm_data(6000, 0)
    post = fit_inn(x, y, config=GM_CE)  # ~150 steps
    good = _fraction_in_correct_modes(post, sim)
    model = post.model.eval()
    with torch.no_grad():
        logits = model.logits(model.split_yz(model(model.pad_x(model.encode_x(x[:2000])))[0])[0])
    shift = logits.mean(-1).abs().mean().item()

    def wrong_sign(logits, y, eps):  # maximises the CE (the shift penalty kept)
        ce = -(smoothed_labels(y, eps) * torch.log_softmax(logits, -1)).sum(-1)
        return (-ce + logits.mean(-1) ** 2).mean()

    monkeypatch.setattr(losses_module, "label_loss", wrong_sign)
    try:
        bad_sign = _fraction_in_correct_modes(fit_inn(x, y, config=GM_CE), sim)
    except FloatingPointError:  # the unbounded loss diverged (clipping keeps it finite here): broken either way
        bad_sign = [0.0] * 4
    monkeypatch.undo()
    # the inverse fed log q without centring: still a CE optimum, but not the forward pass's (the penalty's) one
    monkeypatch.setattr(inn_module, "encode_labels", lambda y, eps: torch.log(smoothed_labels(y, eps)))
    bad_shift = _fraction_in_correct_modes(fit_inn(x, y, config=GM_CE), sim)
    monkeypatch.undo()
    threshold = 0.5  # mean over the four labels, as for the squared loss
    print("fraction in correct modes (ce):", good, "wrong-sign CE:", bad_sign, "uncentred inverse input:", bad_shift,
          "mean |logit mean|:", shift)
    assert sum(good) / 4 > threshold, good
    assert sum(bad_sign) / 4 < threshold, bad_sign
    assert sum(bad_shift) / 4 < threshold, bad_shift
    assert shift < 0.1  # the penalty keeps the logits centred, where the inverse is fed
    history = post.metadata["history"]
    assert history[-1]["L_y"] < history[0]["L_y"]
    assert post.metadata["config"]["y_loss"] == "ce"


def test_ce_save_load_round_trip_and_old_files_load_as_mse(tmp_path):
    sim, x, y = _gm_data(400, 2)
    config = INNConfig(latent_dim=2, nominal_dim=6, y_loss="ce", label_smoothing=0.1, flow=SMALL_FLOW,
                       train=TrainConfig(epochs=1, batch_size=200))
    post = fit_inn(x, y, config=config)
    loaded = load_posterior(post.save(tmp_path / "gm_ce.sbi"), device="cpu")
    assert loaded.model.config() == post.model.config()
    assert (loaded.model.y_loss, loaded.model.label_smoothing) == ("ce", 0.1)
    assert INNConfig.from_dict(loaded.metadata["config"]) == dataclasses.replace(config, train=dataclasses.replace(
        config.train, seed=0))
    for label in range(4):
        y0 = torch.eye(4)[label]
        assert torch.equal(loaded.sample((50,), y0, seed=label), post.sample((50,), y0, seed=label))
    with pytest.raises(ValueError, match="sum to 1"):
        loaded.sample((5,), torch.tensor([1.0, 1.0, 0.0, 0.0]))

    # a file written before y_loss existed (no y_loss / label_smoothing anywhere) loads as the squared loss
    mse = fit_inn(x, y, config=dataclasses.replace(config, y_loss="mse"))
    path = mse.save(tmp_path / "gm_old.sbi")
    blob = torch.load(path, weights_only=True)
    header = json.loads(blob["header"])
    for d in (header["model"], header["metadata"]["config"]):
        del d["y_loss"], d["label_smoothing"]
    torch.save({"header": json.dumps(header), "state_dict": blob["state_dict"]}, path)
    old = load_posterior(path, device="cpu")
    assert old.model.y_loss == "mse" and INNConfig.from_dict(old.metadata["config"]).y_loss == "mse"
    assert torch.equal(old.sample((50,), torch.eye(4)[0], seed=1), mse.sample((50,), torch.eye(4)[0], seed=1))
    # files of sbi_inn 0.1 name the support bounds lo / hi and the standardisations x_norm / y_norm, and carry a
    # training-step counter among the weights
    header["model"]["lo"] = header["model"].pop("support_low")
    header["model"]["hi"] = header["model"].pop("support_high")
    state = {k.replace("_standardize.", "_norm.", 1): v for k, v in blob["state_dict"].items()}
    state["train_steps"] = torch.tensor(150)
    torch.save({"header": json.dumps(header), "state_dict": state}, path)
    older = load_posterior(path, device="cpu")
    assert older.model.config() == old.model.config()
    assert torch.equal(older.sample((50,), torch.eye(4)[0], seed=1), mse.sample((50,), torch.eye(4)[0], seed=1))


def test_support_term_is_the_hinge_on_overdispersed_backward_samples():
    model = _model(D=2, M=4, K=2, N=8)
    sim = get_simulator("gaussian_mixture")
    g = torch.Generator().manual_seed(0)
    x = sim.sample_prior(64, generator=g)
    y = sim.simulate(x, generator=g)
    model.fit_standardization(x, y)
    off = inn_losses(model, x, y, INNConfig(latent_dim=2, nominal_dim=8), generator=_gen())
    assert float(off["support"]) == 0.0  # disabled by default, no extra pass
    cfg = INNConfig(latent_dim=2, nominal_dim=8, w_support=1.0, support_radius=0.3, support_latent_scale=2.0,
                    pad_noise=0.0)
    terms = inn_losses(model, x, y, cfg, generator=_gen(1))
    # replay the same random draws: the support pass is the last one inn_losses makes
    g = _gen(1)
    ys = model.encode_y(y) + cfg.y_noise * torch.randn(64, 4, generator=g)
    # then, in order: L_z latents (2), L_x latents (2); paddings of zero noise (pad_noise=0) draw nothing
    for width in (2, 2):
        torch.randn(64, width, generator=g)
    zt = 2.0 * torch.randn(16, 2, generator=g)  # a quarter of the batch
    xt = model.inverse(model.join_yz(ys[:16], zt))[0][:, :2]
    expected = torch.relu(xt.abs() - 0.3).square().sum(-1).mean()
    assert float(terms["support"].detach()) > 0
    torch.testing.assert_close(terms["support"], expected)
    grads = torch.autograd.grad(terms["support"], [p for p in model.parameters() if p.requires_grad],
                                allow_unused=True)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)  # it trains the inverse pass
    wide = inn_losses(model, x, y, dataclasses.replace(cfg, support_radius=1e3), generator=_gen(1))
    assert float(wide["support"].detach()) == 0.0  # everything inside the radius: no penalty
    with pytest.raises(ValueError, match="support_radius"):
        INNConfig(support_radius=0.0)


def test_kl_term_is_the_reverse_kl_by_change_of_variables(float64_default):
    """``L_kl = E[-log|det J_g| - log p(v^)]`` over the L_x backward samples, with the prior carried into the internal
    coordinates through the support transform (here a box, a half-line and two unbounded parameters) and the
    standardisation; checked against autograd Jacobians and hand-written support derivatives."""
    lo = torch.tensor([-math.inf, 0.0, -1.0, -math.inf])
    hi = torch.tensor([math.inf, math.inf, 1.0, math.inf])
    model = _model(D=4, M=2, K=2, N=4, lo=lo, hi=hi)
    g = torch.Generator().manual_seed(0)
    n = 6
    x = torch.stack([torch.randn(n, generator=g), torch.rand(n, generator=g) * 3, 2 * torch.rand(n, generator=g) - 1,
                     torch.randn(n, generator=g)], 1)
    y = torch.randn(n, 2, generator=g)
    model.fit_standardization(x, y)

    def prior_lp(t):
        return -0.5 * (t**2).sum(-1) + torch.log(1 + t[:, 1])

    cfg = INNConfig(latent_dim=2, nominal_dim=4, w_kl=1.0)
    terms = inn_losses(model, x, y, cfg, prior_lp, generator=_gen(1))
    g = _gen(1)  # replay: y noise, L_z latents, L_x latents (no x- or y-padding here)
    ys = model.encode_y(y) + cfg.y_noise * torch.randn(n, 2, generator=g)
    torch.randn(n, 2, generator=g)
    zb = torch.randn(n, 2, generator=g)
    inputs = torch.cat([ys, zb], 1)
    expected = []
    for row in inputs:
        v = model.inverse(row[None])[0][0]
        logdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda r: model.inverse(r[None])[0][0],
                                                                         row))[1]
        u = v * model.x_standardize.std + model.x_standardize.mean
        s = torch.sigmoid(u[2])
        xr = torch.stack([u[0], torch.exp(u[1]), -1 + 2 * s, u[3]])
        log_dx_du = u[1] + torch.log(2 * s * (1 - s))
        log_p_v = prior_lp(xr[None])[0] + log_dx_du + torch.log(model.x_standardize.std).sum()
        expected.append(-(logdet + log_p_v))
    torch.testing.assert_close(terms["kl"], torch.stack(expected).mean(), rtol=1e-8, atol=1e-8)
    grads = torch.autograd.grad(terms["kl"], [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)  # it trains the inverse pass
    assert float(inn_losses(model, x, y, INNConfig(latent_dim=2, nominal_dim=4), generator=_gen())["kl"]) == 0.0

    # a saturated logit rounds onto the bound of a box prior; its density is taken just inside
    boxed = _model(D=2, M=1, K=1, N=2, lo=torch.tensor([0.0, -1.0]), hi=torch.tensor([1.0, 1.0]))
    box = BoxUniform(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0]))
    assert torch.isfinite(boxed.prior_log_prob_internal(torch.tensor([[60.0, -60.0], [0.0, 0.0]]), box.log_prob)).all()

    with pytest.raises(ValueError, match="log-density"):
        inn_losses(model, x, y, cfg, generator=_gen())
    padded = _model(D=2, M=4, K=2, N=8)
    with pytest.raises(ValueError, match="x-padding"):
        inn_losses(padded, x[:, :2], torch.randn(n, 4), INNConfig(latent_dim=2, nominal_dim=8, w_kl=1.0), prior_lp,
                   generator=_gen())
    with pytest.raises(ValueError, match="w_kl"):
        INNConfig(w_kl=-1.0)


def test_kl_and_y_loss_alone_give_the_analytic_posterior():
    """Deterministic ``y = x0 + x1`` with a standard normal prior: ``p(x | y)`` has ``x0 - x1 ~ N(0, 2)``. A backward
    marginal equal to the prior (``L_kl = 0`` up to a constant) together with ``f_y = s`` (``L_y = 0``) is exactly
    the posterior, with no ``L_z`` or ``L_x``: trained on these two terms the INN gets the spread of ``x0 - x1``
    right, and without ``L_kl`` nothing constrains it (a std near 3 here)."""
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    y = x.sum(1, keepdim=True)
    stds = {}
    for w_kl in (1.0, 0.0):
        cfg = INNConfig(deterministic=True, w_kl=w_kl, w_x=0.0, w_z=0.0,
                        flow=FlowConfig(num_blocks=3, hidden=32, num_layers=2, clamp=1.0),
                        train=TrainConfig(epochs=10, batch_size=200, lr=3e-3, lr_final=3e-4, patience=None))
        post = fit_inn(x, y, config=cfg, prior=prior, seed=0)
        stds[w_kl] = []
        for y_star in (-1.5, 0.0, 2.0):
            s = post.sample((4000,), torch.tensor([y_star]), seed=1)
            assert (s.sum(1) - y_star).abs().mean() < 0.06  # f_y = s in both runs
            d = s[:, 0] - s[:, 1]
            stds[w_kl].append(float(d.std()))
            if w_kl > 0:
                assert abs(float(d.mean())) < 0.15
    assert all(abs(sd - math.sqrt(2)) < 0.12 for sd in stds[1.0]), stds
    assert all(abs(sd - math.sqrt(2)) > 0.5 for sd in stds[0.0]), stds
