"""IB-INN generative classifiers (sbi_inn.classifier): loss identities, a separable toy against the Bayes posterior,
OoD scores, sampling, save/load, resume, reproducibility and the errors users get."""

import json
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

import sbi_inn.classifier as classifier_module
from sbi_inn import fit_classifier, load_classifier
from sbi_inn.classifier import DEFAULT_GAMMA, ClassifierConfig
from sbi_inn.diagnostics.classification import classification_calibration, ood_auroc
from sbi_inn.ib_inn import IBINN, ib_loss

TINY = {"flow": {"num_blocks": 1, "hidden": 8}, "train": {"epochs": 3, "batch_size": 64}}


def _randomised(dim=3, classes=4, scale=0.4, **cfg):
    """An IBINN with random trainable parameters (a fresh flow is the identity, which would hide Jacobian errors)."""
    config = ClassifierConfig.from_dict({"flow": {"num_blocks": 2, "hidden": 16}, **cfg})
    g = torch.Generator().manual_seed(3)
    priors = torch.tensor([0.1, 0.2, 0.3, 0.4][:classes])
    model = IBINN(dim, classes, config, log_priors=torch.log(priors / priors.sum()))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # not the fixed rotations (their stored inverse and log-det would no longer match)
                p.copy_(scale * torch.randn(p.shape, generator=g))
        model.standardize.mean.copy_(torch.randn(dim, generator=g))
        model.standardize.std.copy_(torch.rand(dim, generator=g) + 0.5)
    x = 2 * torch.randn(50, dim, generator=g)
    labels = torch.randint(0, classes, (50,), generator=g)
    noise = 1e-3 * torch.randn(50, dim, generator=g)
    return model, x, labels, noise


def _independent_terms(model, x, labels, noise):
    """-log q(u|y) and -log q(u) from torch.distributions and the flow's log-det, and log q(y|z) - log p(y)."""
    z, log_det = model.flow(model.standardize(x) + noise)
    mu, w = model.mu, model.log_priors
    comps = [MultivariateNormal(mu[c], torch.eye(model.dim)) for c in range(model.num_classes)]
    log_qzy = torch.stack([c.log_prob(z) for c in comps], 1)  # (N, C)
    mixture = MixtureSameFamily(Categorical(logits=w), Independent(Normal(mu, torch.ones_like(mu)), 1))
    class_nll = -log_qzy.gather(1, labels[:, None]).squeeze(1) - log_det
    l_x = -mixture.log_prob(z) - log_det
    post = log_qzy + w - torch.logsumexp(log_qzy + w, 1, keepdim=True)
    return class_nll, l_x, post - w, log_qzy, log_det


# -- loss identities ----------------------------------------------------------------------------------------------
def test_beta_one_is_the_class_nll_generative_classifier():
    """Thesis 5.2.3: at beta = 1 the mixture normaliser of L_X cancels the denominator of L_Y, and the rebalanced loss
    (eq. 5.17) is 2 / (d + 1) times the class-conditional NLL -log q(u | y)."""
    model, x, labels, noise = _randomised(beta=1.0, label_smoothing=0.0)
    rows, parts = model.loss_rows(x, labels, noise)
    class_nll = _independent_terms(model, x, labels, noise)[0]
    assert torch.allclose(rows, 2 / (model.dim + 1) * class_nll, rtol=1e-5, atol=1e-5)
    assert torch.allclose(parts["L_X"] - parts["L_Y"], class_nll, rtol=1e-5, atol=1e-4)
    # with label smoothing the identity holds for the smoothed targets: sum_c t_c (-log q(u | c))
    model_s, *_ = _randomised(beta=1.0, label_smoothing=0.05)
    rows_s, _ = model_s.loss_rows(x, labels, noise)
    _, _, _, log_qzy, log_det = _independent_terms(model_s, x, labels, noise)
    t = 0.95 * torch.nn.functional.one_hot(labels, 4) + 0.05 / 4
    smoothed_nll = (t * (-log_qzy - log_det[:, None])).sum(1)
    assert torch.allclose(rows_s, 2 / (model_s.dim + 1) * smoothed_nll, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 3.0, 40.0])
def test_terms_and_rebalancing_match_an_independent_computation(beta):
    """L_X is the mixture NLL of eq. 5.10, L_Y the log-posterior of eq. 5.15 minus log p(y), and the trained loss
    2 / (1 + gamma) (L_X / d - gamma L_Y) with gamma = beta / d (eq. 5.17)."""
    model, x, labels, noise = _randomised(beta=beta, label_smoothing=0.0)
    rows, parts = model.loss_rows(x, labels, noise)
    _, l_x, l_y_all, _, _ = _independent_terms(model, x, labels, noise)
    l_y = l_y_all.gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(parts["L_X"], l_x, rtol=1e-5, atol=1e-4)
    assert torch.allclose(parts["L_Y"], l_y, rtol=1e-5, atol=1e-5)
    gamma = beta / model.dim
    assert torch.allclose(rows, 2 / (1 + gamma) * (l_x / model.dim - gamma * l_y), rtol=1e-5, atol=1e-5)
    assert float(ib_loss(torch.tensor(6.0), torch.tensor(-1.0), beta=3.0, dim=3)) == pytest.approx(3.0)


def test_large_beta_trains_the_class_posterior_alone():
    """gamma -> inf: the rebalanced loss tends to -2 L_Y (the 'only L_Y' model of Table 5.1)."""
    model, x, labels, noise = _randomised(beta=1e9, label_smoothing=0.0)
    rows, parts = model.loss_rows(x, labels, noise)
    assert torch.allclose(rows, -2 * parts["L_Y"], rtol=1e-4, atol=1e-4)


def test_log_likelihood_is_a_normalised_density_in_data_units():
    """exp(log q(x)) integrates to 1 over the input space (standardisation Jacobian included), and the class
    densities weighted by the priors add up to the marginal."""
    model, *_ = _randomised(dim=2, classes=3, scale=0.15)
    clf = classifier_module.Classifier(model)
    g = torch.linspace(-12, 12, 481)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    cell = float(g[1] - g[0]) ** 2
    marginal = clf.log_likelihood(grid)
    assert float(marginal.exp().sum() * cell) == pytest.approx(1.0, abs=0.005)
    per_class = torch.stack([clf.log_likelihood(grid, c) for c in range(3)], 1) + model.log_priors
    assert torch.allclose(torch.logsumexp(per_class, 1), marginal, atol=1e-4)


# -- a separable toy with a known Bayes posterior -------------------------------------------------------------------
def _two_gaussians(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g)
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)
    return x, y


@pytest.fixture(scope="module")
def toy():
    """Two unit Gaussians at (+-2, 0): p(y=1 | x) = sigmoid(4 x_1), Bayes accuracy Phi(2) = 0.977."""
    x, y = _two_gaussians(2000, 0)
    config = {"label_smoothing": 0.0, "flow": {"num_blocks": 2, "hidden": 32},
              "train": {"epochs": 30, "batch_size": 128}}
    clf = fit_classifier(x, y, beta=10.0, config=config, seed=0, show_progress=False)
    return clf, x, y


def test_toy_reaches_bayes_accuracy_and_the_bayes_posterior(toy):
    clf, _, _ = toy
    xt, yt = _two_gaussians(4000, 1)
    p = clf.predict_proba(xt)
    bayes = torch.sigmoid(4 * xt[:, 0])
    metrics = classification_calibration(p, yt)
    assert metrics["accuracy"] > 0.965  # Bayes: 0.976 on this test set
    assert float((p[:, 1] - bayes).abs().mean()) < 0.03
    assert metrics["ece"] < 0.03
    assert torch.allclose(p.sum(1), torch.ones(len(p)), atol=1e-5)
    assert torch.equal(clf.predict(xt), p.argmax(1))
    assert torch.allclose(clf.class_priors, torch.tensor([0.5, 0.5]), atol=0.03)


def test_ood_scores_are_higher_for_far_away_points(toy):
    clf, _, _ = toy
    xt, _ = _two_gaussians(1000, 2)
    angle = torch.rand(1000, generator=torch.Generator().manual_seed(5)) * 2 * math.pi
    far = 8 * torch.stack([angle.cos(), angle.sin()], 1)
    for method in ("typicality", "quantile"):
        s_in, s_far = clf.ood_score(xt, method=method), clf.ood_score(far, method=method)
        assert s_in.shape == (1000,)
        assert ood_auroc(s_in, s_far) > 0.97, method
    # the typicality score is |L_X - mean reference L_X|: in-distribution points sit near the reference mean
    assert float(clf.ood_score(xt).median()) < 2.0 < float(clf.ood_score(far).median())
    q = clf.ood_score(xt, method="quantile")
    assert float(q.min()) >= 0 and float(q.max()) <= 1


def test_samples_come_from_the_asked_class(toy):
    clf, _, _ = toy
    for c, centre in ((0, -2.0), (1, 2.0)):
        s = clf.sample(c, 2000, seed=0)
        assert s.shape == (2000, 2)
        assert float((clf.predict(s) == c).float().mean()) > 0.93
        assert float(s[:, 0].mean()) == pytest.approx(centre, abs=0.3)
        assert float(s[:, 1].std()) == pytest.approx(1.0, abs=0.2)
    assert torch.equal(clf.sample(1, 10, seed=3), clf.sample(torch.tensor(1), 10, seed=3))


def test_information_plane_estimates(toy):
    clf, _, _ = toy
    plane = clf.information_plane()
    assert plane["epoch"] == list(range(len(clf.history)))
    assert plane["H_Y"] == pytest.approx(math.log(2), abs=1e-3)
    # I(Y; Z) >= E[L_Y] is at most H(Y); the separable toy keeps most of it
    assert all(v <= plane["H_Y"] + 1e-6 for v in plane["I_YZ"])
    assert plane["I_YZ"][-1] > 0.75 * math.log(2)
    # I(X; Z) ~ L_X - d log sqrt(2 pi e sigma^2) is large for sigma = 1e-3 (about d * 5.5 nats)
    assert 8 < plane["I_XZ"][-1] < 16
    assert plane["gamma"] == pytest.approx(5.0)


def test_chunked_predictions_equal_one_pass(toy, monkeypatch):
    clf, x, y = toy
    whole = (clf.predict_proba(x[:100]), clf.log_likelihood(x[:100], y[:100]), clf.ood_score(x[:100]))
    monkeypatch.setattr(classifier_module, "CHUNK_ROWS", 7)
    parts = (clf.predict_proba(x[:100]), clf.log_likelihood(x[:100], y[:100]), clf.ood_score(x[:100]))
    for a, b in zip(whole, parts):
        assert torch.allclose(a, b, atol=1e-6)
    assert clf.sample(0, 20, seed=1).shape == (20, 2)


# -- persistence ----------------------------------------------------------------------------------------------------
def test_save_load_gives_identical_outputs(toy, tmp_path):
    clf, x, y = toy
    path = clf.save(tmp_path / "clf.sbi")
    loaded = load_classifier(path, device="cpu")
    assert torch.equal(loaded.predict_proba(x[:200]), clf.predict_proba(x[:200]))
    assert torch.equal(loaded.log_likelihood(x[:200], y[:200]), clf.log_likelihood(x[:200], y[:200]))
    assert torch.equal(loaded.log_likelihood(x[:200]), clf.log_likelihood(x[:200]))
    for method in ("typicality", "quantile"):
        assert torch.equal(loaded.ood_score(x[:200], method=method), clf.ood_score(x[:200], method=method))
    assert torch.equal(loaded.sample(1, 50, seed=4), clf.sample(1, 50, seed=4))
    assert loaded.beta == clf.beta == 10.0 and loaded.history == clf.history
    assert "beta=10" in repr(loaded)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        clf.save(path)
    clf.save(path, overwrite=True)
    with pytest.raises(IsADirectoryError):
        clf.save(tmp_path)
    # the file is weights plus JSON: it opens with weights_only=True
    blob = torch.load(path, weights_only=True)
    assert json.loads(blob["header"])["format"] == "sbi_inn.classifier"


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    x, y = _two_gaussians(200, 3)
    path = tmp_path_factory.mktemp("clf") / "tiny.sbi"
    fit_classifier(x, y, config=TINY, show_progress=False).save(path)
    return path


def _rewrite(src, dst, edit_header=None, edit_state=None):
    blob = torch.load(src, weights_only=True)
    header, state = json.loads(blob["header"]), blob["state_dict"]
    if edit_header:
        edit_header(header)
    if edit_state:
        edit_state(state)
    torch.save({"header": json.dumps(header), "state_dict": state}, dst)
    return dst


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["model"]["classifier"]["flow"].__setitem__("num_blocks", 10**8), r"flow\.num_blocks = 100000000"),
    (lambda h: h["model"]["classifier"]["flow"].__setitem__("hidden", 2**31), r"flow\.hidden = 2147483648"),
    (lambda h: h["model"]["classifier"]["flow"].__setitem__("num_layers", 10**4), r"flow\.num_layers = 10000 exceeds"),
    (lambda h: h["model"].__setitem__("dim", 10**9), r"model\.dim = 1000000000 exceeds"),
    (lambda h: h["model"].__setitem__("num_classes", 1), r"model\.num_classes must be an integer >= 2"),
    (lambda h: h["model"].__setitem__("reference_size", 10**9), r"model\.reference_size = 1000000000 exceeds"),
    (lambda h: h["model"].__setitem__("dim", "2"), r"model\.dim must be an integer"),
    (lambda h: h["model"]["classifier"].__setitem__("sigma", -1.0), r"model\.classifier is invalid.*sigma"),
    (lambda h: h["model"]["classifier"].__setitem__("bogus", 1), r"unknown key"),
    (lambda h: h["model"].__setitem__("type", "pickle"), r"unknown classifier model type 'pickle'"),
    (lambda h: h.__setitem__("format", "sbi_inn.posterior"), r"not an sbi_inn classifier"),
    (lambda h: h.__setitem__("format_version", 99), r"format 99"),
    (lambda h: h.pop("model"), r"lacks 'model'"),
    (lambda h: h.__setitem__("metadata", [1]), r"'metadata' must be a JSON object"),
])
def test_crafted_headers_are_refused_naming_the_field(saved_tiny, tmp_path, edit, match):
    path = _rewrite(saved_tiny, tmp_path / "bad.sbi", edit)
    with pytest.raises(ValueError, match=match):
        load_classifier(path)


def test_damaged_weights_are_refused(saved_tiny, tmp_path):
    nan = _rewrite(saved_tiny, tmp_path / "nan.sbi", edit_state=lambda s: s["mu_raw"].fill_(math.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        load_classifier(nan)
    wrong = _rewrite(saved_tiny, tmp_path / "wrong.sbi", edit_state=lambda s: s.__setitem__("mu_raw", torch.zeros(3)))
    with pytest.raises(ValueError, match="do not match"):
        load_classifier(wrong)
    (tmp_path / "junk.sbi").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable"):
        load_classifier(tmp_path / "junk.sbi")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.sbi")
    assert load_classifier(saved_tiny).predict_proba(torch.zeros(1, 2)).shape == (1, 2)


# -- training: resume, reproducibility ------------------------------------------------------------------------------
def _weights(clf):
    return {k: v.clone() for k, v in clf.model.state_dict().items()}


def test_checkpoint_resume_equals_uninterrupted(tmp_path, interrupted_in_epoch):
    x, y = _two_gaussians(300, 4)
    cfg = {"flow": {"num_blocks": 1, "hidden": 8}, "train": {"epochs": 5, "batch_size": 64, "patience": None}}
    full = fit_classifier(x, y, config=cfg, seed=1, show_progress=False, checkpoint_dir=tmp_path / "full")
    with interrupted_in_epoch(3):
        fit_classifier(x, y, config=cfg, seed=1, show_progress=False, checkpoint_dir=tmp_path / "resumed")
    resumed = fit_classifier(x, y, config=cfg, seed=1, show_progress=False, checkpoint_dir=tmp_path / "resumed")
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [h["epoch"] for h in resumed.history] == list(range(5))
    with pytest.raises(ValueError, match="different fit"):
        fit_classifier(x, y, config=cfg, seed=2, show_progress=False, checkpoint_dir=tmp_path / "resumed")
    with pytest.raises(ValueError, match="is a file"):
        fit_classifier(x, y, config=cfg, show_progress=False, checkpoint_dir=tmp_path / "full" / "fit.json")


def test_the_seed_reproduces_and_the_global_rng_is_untouched(capsys):
    x, y = _two_gaussians(200, 5)
    state = torch.get_rng_state()
    a = fit_classifier(x, y, config=TINY, seed=7, show_progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_classifier(x, y, config=TINY, seed=7, show_progress=False, device="auto")
    c = fit_classifier(x, y, config=TINY, seed=8, show_progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["mu_raw"], wc["mu_raw"])
    assert capsys.readouterr().err == ""  # show_progress=False: no bar


def test_default_beta_and_metadata():
    x, y = _two_gaussians(200, 6)
    clf = fit_classifier(x, y, config=TINY, show_progress=False, validation_fraction=0.0)
    assert clf.beta == pytest.approx(DEFAULT_GAMMA * 2)
    assert clf.metadata["config"]["beta"] == clf.beta  # stored resolved
    assert clf.metadata["data"]["num_val"] == 0 and clf.metadata["data"]["ood_reference"] == "training"
    assert ClassifierConfig().resolved_beta(64) == pytest.approx(DEFAULT_GAMMA * 64)
    assert fit_classifier(x, y, beta=3, config=TINY, show_progress=False).beta == 3.0


# -- errors name the argument -------------------------------------------------------------------------------------
GOOD_X, GOOD_Y = _two_gaussians(40, 9)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"x": torch.zeros(40)}, ValueError, r"x must have shape \(N, d\)"),
    ({"x": torch.zeros(40, 1)}, ValueError, "x must have at least 2 columns"),
    ({"x": torch.full((40, 2), math.nan)}, ValueError, "x contains NaN"),
    ({"x": [["a", "b"]] * 40}, TypeError, "x must be numbers"),
    ({"x": torch.zeros(40, 2, dtype=torch.complex64)}, TypeError, "x must be real"),
    ({"labels": GOOD_Y.float()}, TypeError, "labels must be integers"),
    ({"labels": GOOD_Y > 0}, TypeError, "labels must be integers"),
    ({"labels": GOOD_Y - 1}, ValueError, r"labels must lie in \[0, C\)"),
    ({"labels": GOOD_Y[:30]}, ValueError, "labels must have one entry per row of x"),
    ({"labels": GOOD_Y[:, None]}, ValueError, r"labels must have shape \(N,\)"),
    ({"labels": 2 * GOOD_Y}, ValueError, r"class\(es\) \[1\] of 0..2 have no examples"),
    ({"labels": GOOD_Y, "num_classes": 3}, ValueError, r"class\(es\) \[2\] of 0..2 have no examples"),
    ({"labels": 3 * GOOD_Y, "num_classes": 2}, ValueError, r"labels must lie in \[0, 2\)"),
    ({"labels": torch.zeros(40, dtype=torch.long)}, ValueError, "single class"),
    ({"beta": -1.0}, ValueError, "beta must be a finite number >= 0"),
    ({"beta": "big"}, TypeError, "beta must be a number"),
    ({"seed": -1}, ValueError, "seed"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ({"config": {"nope": 1}}, TypeError, r"unknown key\(s\) \['nope'\]"),
    ({"config": {"sigma": 0.0}}, ValueError, "sigma must be a positive"),
    ({"config": {"label_smoothing": 1.0}}, ValueError, "label_smoothing"),
    ({"config": {"flow": {"coupling": "spline"}}}, ValueError, "affine couplings"),
    ({"config": {"train": {"epochs": "3"}}}, TypeError, "epochs must be an integer"),
    ({"device": "cuda:99"}, ValueError, "CUDA devices"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, error, match):
    args = {"x": GOOD_X, "labels": GOOD_Y, "config": TINY, "show_progress": False, **kwargs}
    with pytest.raises(error, match=match):
        fit_classifier(args.pop("x"), args.pop("labels"), **args)


def test_bad_inputs_to_a_trained_classifier_are_named(saved_tiny):
    clf = load_classifier(saved_tiny)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        clf.predict_proba(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        clf.ood_score(torch.zeros(2))
    with pytest.raises(ValueError, match="x contains NaN"):
        clf.log_likelihood(torch.tensor([[0.0, math.inf]]))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\)"):
        clf.sample(2, 5)
    with pytest.raises(ValueError, match="y must be one class or 3 labels"):
        clf.log_likelihood(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="y must be integers"):
        clf.log_likelihood(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="n must be a whole number"):
        clf.sample(0, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        clf.ood_score(torch.zeros(1, 2), method="max")
    assert clf.predict_proba(torch.zeros(3, 2, dtype=torch.int64)).shape == (3, 2)  # integers are numbers
