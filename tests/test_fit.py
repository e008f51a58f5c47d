"""fit_posterior: input validation, reproducibility, resumption, data files, and short trainings on known answers."""

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, Uniform

from sbi_inn import DataConfig, FitConfig, FlowConfig, INNConfig, TrainConfig, fit_posterior
from sbi_inn.config import (
    DEFAULT_TRAIN,
    SMALL_DATA_DROPOUT,
    SMALL_DATA_ROWS,
    SMALL_DATA_TRAIN,
    default_flow,
    default_train,
)
from sbi_inn.priors import BoxUniform
from sbi_inn.simulation import Simulation
from sbi_inn.train import trimmed_mean
from sbi_inn.training_data import from_simulator, split
from simulators import get_simulator
from simulators.set_valued import ConjugateGaussianSets

TINY = {"flow": {"num_blocks": 2, "hidden": 16}, "summary_dim": 4, "summary_hidden": 16,
        "train": {"epochs": 3, "batch_size": 64}}
BOX = BoxUniform(torch.zeros(2), torch.ones(2))




def noisy_identity(x):
    return x + 0.05 * torch.randn_like(x)


def tiny_fit(simulate=noisy_identity, prior=BOX, n=300, **kw):
    kw.setdefault("config", TINY)
    return fit_posterior(simulate, prior, num_simulations=n, show_progress=False, device="cpu", **kw)


def weights(posterior):
    return {k: v.clone() for k, v in posterior.model.state_dict().items()}


# -- validation ---------------------------------------------------------------------------------------------------
def test_wrong_prior_type():
    with pytest.raises(TypeError, match="prior must be a torch.distributions.Distribution"):
        tiny_fit(prior="uniform")
    with pytest.raises(TypeError, match="entry 0 is float, not a torch Distribution"):
        tiny_fit(prior=[0.0, 1.0])
    with pytest.raises(TypeError, match="prior"):
        tiny_fit(prior=None)  # a plain function has no .prior


def test_prior_with_wrong_event_shape():
    with pytest.raises(ValueError, match="event shape"):
        tiny_fit(prior=Normal(torch.zeros(2), torch.ones(2)))


def test_simulator_returning_wrong_rows():
    with pytest.raises(ValueError, match=r"returned shape \(32, 2\), expected \(64, M\) for 64 parameter rows"):
        tiny_fit(simulate=lambda x: x[:32])
    with pytest.raises(ValueError, match=r"y\[:, None\]"):
        tiny_fit(simulate=lambda x: x.sum(1))


def test_all_nan_simulator():
    with pytest.raises(ValueError, match="64 of 64 pilot simulations returned NaN"):
        tiny_fit(simulate=lambda x: torch.full_like(x, math.nan))


def test_partly_invalid_simulations_are_dropped_with_a_warning():
    def sometimes_nan(x):
        y = x.clone()
        y[x[:, 0] < 0.1] = math.inf
        return y

    with pytest.warns(RuntimeWarning, match=r"\d+ of 300 simulations returned NaN or inf and were dropped"):
        post = tiny_fit(simulate=sometimes_nan)
    data = post.metadata["data"]
    assert 10 < data["num_invalid"] < 60
    assert data["num_train"] + data["num_val"] == 300 - data["num_invalid"]


def test_failing_simulator_names_the_pilot():
    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="pilot batch of 64 prior draws.*boom"):
        tiny_fit(simulate=broken)


def test_complex_output_rejected():
    with pytest.raises(TypeError, match="real numbers"):
        tiny_fit(simulate=lambda x: x.to(torch.complex64))


def test_unknown_config_key_method_and_summary():
    with pytest.raises(TypeError, match=r"unknown key\(s\) \['epochs'\]"):
        tiny_fit(config={"epochs": 3})
    with pytest.raises(TypeError, match="FitConfig.flow: unknown key"):
        tiny_fit(config={"flow": {"blocks": 3}})
    with pytest.raises(TypeError):
        FitConfig(learning_rate=1e-3)
    with pytest.raises(TypeError, match="FitConfig.train: unknown key"):
        FitConfig.from_dict({"train": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match="summary_pool"):
        FitConfig(summary_pool="max")


def test_early_stopping_monitors_the_trimmed_validation_nll():
    """fit_posterior's validation loss is the per-row NLL without the worst rows (``val_trim`` of DEFAULT_TRAIN):
    the returned model holds the best epoch's weights, so the smallest recorded validation loss is that statistic
    of the returned model on the validation rows; the untrimmed mean differs."""
    post = tiny_fit(n=400, seed=2)
    sims = from_simulator(Simulation(noisy_identity, BOX), 400, None, DataConfig(), 2, False)
    _, val = split(sims, 0.1, 2)
    assert DEFAULT_TRAIN.val_trim == 0.01
    with torch.no_grad():
        rows = post.model.eval().nll_rows(val)  # eval: the small-data flow has dropout
    assert rows.shape == (40,)
    best = min(h["val_loss"] for h in post.history)
    assert best == pytest.approx(trimmed_mean(rows, 0.01), abs=1e-5)
    assert best != pytest.approx(float(rows.mean()), abs=1e-5)


def test_partial_train_dict_overrides_the_fit_defaults():
    """``{"train": {"patience": 40}}`` changes the patience only: the automatic batch size and the schedule of
    ``default_train(n)`` stay (TrainConfig's class defaults are 256 and 200 epochs), for small budgets (150 epochs,
    exponential) and large ones (the plateau rule) alike; a TrainConfig is taken as given."""
    cfg = FitConfig.from_dict({"train": {"patience": 40}})
    assert cfg.train_for(10_000) == dataclasses.replace(DEFAULT_TRAIN, patience=40)
    assert cfg.train_for(900) == dataclasses.replace(SMALL_DATA_TRAIN, patience=40)
    assert cfg.train_for(900).batch_size is None and cfg.train_for(900).epochs == 150
    assert FitConfig.from_dict(cfg.to_dict()) == cfg
    assert default_train(SMALL_DATA_ROWS - 1) == SMALL_DATA_TRAIN and default_train(SMALL_DATA_ROWS) == DEFAULT_TRAIN
    assert SMALL_DATA_TRAIN.lr == 2 * DEFAULT_TRAIN.lr and SMALL_DATA_TRAIN.patience < DEFAULT_TRAIN.patience
    given = TrainConfig(epochs=3)
    assert FitConfig(train=given).train_for(900) is given
    with pytest.raises(TypeError, match="unknown key"):
        FitConfig(train={"patiense": 3})
    with pytest.raises(TypeError, match="train"):
        FitConfig(train=[1])
    with pytest.raises(ValueError, match="method"):
        tiny_fit(method="nle")
    with pytest.raises(ValueError, match="summary"):
        tiny_fit(summary="transformer")
    with pytest.raises(TypeError, match="num_simulations"):
        fit_posterior(noisy_identity, BOX, show_progress=False)
    with pytest.raises(TypeError, match="data=PATH"):
        fit_posterior(show_progress=False)


def test_list_of_1d_priors_and_one_parameter_problem():
    post = tiny_fit(prior=[Uniform(0.0, 1.0), Normal(0.0, 1.0)])
    s = post.sample((50,), torch.tensor([0.5, 0.0]), seed=0)
    assert s.shape == (50, 2) and ((s[:, 0] >= 0) & (s[:, 0] <= 1)).all()
    one = tiny_fit(prior=[Uniform(0.0, 2.0)], simulate=lambda x: x**2)  # D = 1: the exact spline flow
    s = one.sample((50,), torch.tensor([1.0]), seed=0)
    assert s.shape == (50, 1) and ((s >= 0) & (s <= 2)).all()
    assert torch.isfinite(one.log_prob(s, torch.tensor([1.0]))).all()


def test_default_flow_follows_the_parameter_count():
    """FitConfig(flow=None) builds 4 coupling blocks for two parameters and 8 otherwise (``default_flow``); an
    explicit flow is kept as given."""
    assert FitConfig().flow is None
    assert [default_flow(d).num_blocks for d in (1, 2, 3, 6)] == [8, 4, 8, 8]
    # small simulation budgets get subnet dropout, large ones none
    assert default_flow(4, SMALL_DATA_ROWS - 1).dropout == SMALL_DATA_DROPOUT > 0
    assert default_flow(4, SMALL_DATA_ROWS).dropout == 0.0 == default_flow(4).dropout
    cfg = {k: v for k, v in TINY.items() if k != "flow"}
    two = tiny_fit(config=cfg)
    four = tiny_fit(prior=BoxUniform(torch.zeros(4), torch.ones(4)), config=cfg)
    n = two.metadata["data"]["num_train"]
    assert n < SMALL_DATA_ROWS and two.model.flow_config == default_flow(2, n)
    assert four.model.flow_config == default_flow(4, n) and four.model.flow_config.dropout == SMALL_DATA_DROPOUT
    assert two.metadata["flow_config"] == default_flow(2, n).to_dict()
    # a dict overrides fields of default_flow(D, n); a FlowConfig is taken as given
    small = tiny_fit(config={**cfg, "flow": {"dropout": 0.0}})
    assert small.model.flow_config == FlowConfig(**{**default_flow(2).to_dict(), "dropout": 0.0})
    assert tiny_fit().model.flow_config.num_blocks == 2
    given = FlowConfig(num_blocks=3, hidden=8)
    assert tiny_fit(config=FitConfig(flow=given, train=TINY["train"])).model.flow_config == given
    with pytest.raises(TypeError, match="flow must be"):
        FitConfig(flow="big")
    with pytest.raises(ValueError, match="dropout|FlowConfig"):
        FitConfig(flow={"dropout": -1.0})


def test_numpy_simulator_works():
    inputs = []

    def numpy_sim(x):
        inputs.append(type(x))
        y = x.copy()  # numpy only: a torch tensor has no .copy(), so fit_posterior switches to numpy input
        y[:, 0] += 0.5 * x[:, 1]
        return y + 0.01 * np.random.randn(len(x), 2)

    post = tiny_fit(simulate=numpy_sim)
    assert post.sample((4,), np.array([0.5, 0.5])).shape == (4, 2)
    assert inputs[-1] is np.ndarray


def test_simulator_object_metadata_and_names():
    sim = get_simulator("inverse_kinematics")
    post = tiny_fit(simulate=sim, prior=None)
    assert post.param_names == sim.param_names
    meta = post.metadata
    assert meta["data"]["simulator"] == "inverse_kinematics" and meta["data"]["simulator_config"] == sim.config()
    assert isinstance(post.history, list) and len(post.history) == 3 and "val_loss" in post.history[0]
    assert meta["history"][0]["nll_per_dim"] == post.history[0]["nll_per_dim"]


# -- reproducibility and resumption -------------------------------------------------------------------------------
def test_same_seed_same_weights():
    a, b, c = tiny_fit(seed=3), tiny_fit(seed=3), tiny_fit(seed=4)
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("method", ["cinn", "inn"])
def test_checkpoint_resume_equals_uninterrupted(tmp_path, interrupted_in_epoch, method):
    """Both methods resume from the one checkpoint of fit_posterior, interrupted in the third epoch."""
    cfg = {**TINY, "train": {"epochs": 5, "batch_size": 64, "patience": None}} if method == "cinn" else \
        {"flow": {"num_blocks": 2, "hidden": 16}, "train": {"epochs": 5, "batch_size": 64}}
    full = tiny_fit(method=method, config=cfg, seed=1, checkpoint_dir=tmp_path / "full")

    with interrupted_in_epoch(3):
        tiny_fit(method=method, config=cfg, seed=1, checkpoint_dir=tmp_path / "resumed")
    resumed = tiny_fit(method=method, config=cfg, seed=1, checkpoint_dir=tmp_path / "resumed")
    wf, wr = weights(full), weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [h["epoch"] for h in resumed.history] == list(range(5))
    with pytest.raises(ValueError, match="different fit"):
        tiny_fit(method=method, config=cfg, seed=2, checkpoint_dir=tmp_path / "resumed")


# -- data files ---------------------------------------------------------------------------------------------------
def test_data_file_round_trip(tmp_path):
    path = tmp_path / "sims.h5"
    prior = [Uniform(0.0, 1.0), Normal(0.0, 1.0)]
    with_sim = tiny_fit(prior=prior, data=path, seed=0)
    assert path.is_file() and with_sim.metadata["data"]["source"] == "hdf5"
    from_file = fit_posterior(data=path, config=TINY, show_progress=False, seed=0)
    # names and the support come from the file: samples stay in [0, 1] in the first coordinate
    assert from_file.param_names == with_sim.param_names
    s = from_file.sample((200,), torch.tensor([0.5, 0.0]), seed=0)
    assert ((s[:, 0] >= 0) & (s[:, 0] <= 1)).all()
    assert from_file.model.config()["support_high"] == [1.0, None]
    wa, wb = weights(with_sim), weights(from_file)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same rows, same seed: same model
    with pytest.raises(TypeError, match="num_simulations"):
        fit_posterior(data=path, num_simulations=10, show_progress=False)
    # a file larger than max_memory_bytes is streamed from disk through HDF5Dataset
    streamed = fit_posterior(data=path, config=TINY, data_config={"max_memory_bytes": 1}, show_progress=False,
                             seed=0)
    assert streamed.metadata["data"]["num_train"] + streamed.metadata["data"]["num_val"] == 300
    assert torch.isfinite(streamed.sample((10,), torch.tensor([0.5, 0.0]), seed=0)).all()
    # a simulator run asking for fewer rows than the (reused) file holds streams only those rows
    fewer = tiny_fit(prior=prior, n=120, data=path, seed=0, data_config={"max_memory_bytes": 1})
    assert fewer.metadata["data"]["num_train"] + fewer.metadata["data"]["num_val"] == 120


def test_set_valued_fit_runs():
    sim = ConjugateGaussianSets(max_size=8)
    post = tiny_fit(simulate=sim, prior=None)
    assert post.is_set_valued and post.model.summary_kind == "deepset"
    y, sizes = sim.simulate(sim.prior.sample((3,)), generator=torch.Generator().manual_seed(0))
    assert post.sample_batched((5,), y, sizes=sizes, seed=0).shape == (5, 3, 2)
    assert (post.sample((100,), y[0, : sizes[0]], seed=0)[:, 1] > 0).all()  # sigma2 > 0


def test_inn_dispatch():
    cfg = {"flow": {"num_blocks": 2, "hidden": 16}, "train": {"epochs": 2, "batch_size": 64}}
    post = tiny_fit(method="inn", config=cfg)
    assert post.model.config()["type"] == "inn"
    assert post.sample((7,), torch.tensor([0.5, 0.5]), seed=0).shape == (7, 2)
    with pytest.raises(ValueError, match="cinn"):
        tiny_fit(method="inn", summary="mlp", config=cfg)
    # L_kl gets the prior's log-density from fit_posterior (a box: evaluated inside it, so every step is finite)
    kl = {**cfg, "deterministic": True, "w_kl": 1.0}
    post = tiny_fit(simulate=lambda x: x.sum(1, keepdim=True), method="inn", config=kl)
    assert all(math.isfinite(h["L_kl"]) and h["L_kl"] != 0 and h["skipped_steps"] == 0
               for h in post.metadata["history"])


def test_memory_file_and_streamed_fits_train_on_the_same_simulations(tmp_path):
    """One chunk loop and one seed tree: in memory, into a file, and streamed from that file (above
    max_memory_bytes) the same seed gives the same simulations, the same split and the same training batches, so
    the same weights; several chunks, a noisy simulator with a generator and invalid rows that are dropped."""
    def sim(x, generator):
        y = x + 0.05 * torch.randn(x.shape, generator=generator)
        y[x[:, 0] < 0.05] = math.nan  # about 5 % invalid, dropped the same way everywhere
        return y

    dcfg = {"chunk_size": 70}
    with pytest.warns(RuntimeWarning, match="dropped"):
        memory = tiny_fit(simulate=sim, n=300, seed=5, data_config=dcfg)
    with pytest.warns(RuntimeWarning, match="dropped"):
        filed = tiny_fit(simulate=sim, n=300, seed=5, data_config=dcfg, data=tmp_path / "s.h5")
    streamed = fit_posterior(data=tmp_path / "s.h5", config=TINY, seed=5, show_progress=False,
                             data_config={**dcfg, "max_memory_bytes": 1})
    with pytest.warns(RuntimeWarning, match="dropped"):
        other = tiny_fit(simulate=sim, n=300, seed=6, data_config=dcfg)
    assert memory.metadata["data"]["num_invalid"] == filed.metadata["data"]["num_invalid"] > 0
    wm, wf, ws, wo = weights(memory), weights(filed), weights(streamed), weights(other)
    assert all(torch.equal(wm[k], wf[k]) for k in wm)
    assert all(torch.allclose(wm[k], ws[k], atol=1e-6) for k in wm)
    assert not all(torch.allclose(wm[k], wo[k]) for k in wm)
    assert [h["val_loss"] for h in memory.history] == pytest.approx([h["val_loss"] for h in streamed.history])


def test_global_random_state_is_untouched_by_fit_sample_and_diagnostics():
    """The library draws only from its own seeded generators: torch's and numpy's global states are the same
    before and after fitting both methods, sampling, re-simulation and ABC."""
    from sbi_inn import diagnostics, reference

    torch.manual_seed(123)
    np.random.seed(123)
    before_torch, before_np = torch.get_rng_state(), np.random.get_state()[1].copy()
    cfg = {**TINY, "flow": {"num_blocks": 2, "hidden": 16, "dropout": 0.1}}  # dropout draws from the global RNG
    post = tiny_fit(config=cfg)
    inn = tiny_fit(method="inn", config={"flow": {"num_blocks": 2, "hidden": 16}, "train": {"epochs": 2}},
                   data_config={"fresh_simulations": True})
    y = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    s = post.sample_batched((20,), y, seed=0)
    inn.sample((5,), y[0])
    post.sample((5,), y[0])
    diagnostics.resimulation_error(noisy_identity, s, y)
    reference.abc_rejection(noisy_identity, BOX, y[0], 20, quantile=0.1)
    assert torch.equal(torch.get_rng_state(), before_torch)
    assert np.array_equal(np.random.get_state()[1], before_np)


def test_fresh_simulations_per_epoch_for_both_methods():
    """DataConfig.fresh_simulations trains epoch e >= 1 on new simulations from the seed tree's fresh stream:
    reproducible, different from training on the same simulations, for the cINN and the INN alike; it needs a
    simulator."""
    for method, cfg in (("cinn", TINY), ("inn", {"flow": {"num_blocks": 2, "hidden": 16},
                                                 "train": {"epochs": 3, "batch_size": 64}})):
        a = tiny_fit(method=method, config=cfg, seed=1, data_config={"fresh_simulations": True})
        b = tiny_fit(method=method, config=cfg, seed=1, data_config={"fresh_simulations": True})
        c = tiny_fit(method=method, config=cfg, seed=1)
        wa, wb, wc = weights(a), weights(b), weights(c)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), method
        assert not all(torch.allclose(wa[k], wc[k]) for k in wa), method
        assert a.metadata["data"]["fresh_simulations_per_epoch"] is True
    with pytest.raises(ValueError, match="needs a simulator"):
        fit_posterior(data=(torch.rand(50, 2), torch.rand(50, 2)), data_config={"fresh_simulations": True},
                      config=TINY, show_progress=False)


def test_checkpoint_fingerprint_refuses_another_config_data_or_seed_naming_it(tmp_path):
    """One fingerprinted checkpoint for both methods: a directory left by a fit with another configuration, data
    configuration, seed, method or data file is refused with the field that differs; the same fit resumes."""
    ckpt = tmp_path / "ckpt"
    tiny_fit(checkpoint_dir=ckpt, seed=0)
    assert (ckpt / "checkpoint.pt").is_file() and (ckpt / "fit.json").is_file()
    for kwargs, field in (({"seed": 1}, "seed"), ({"config": {**TINY, "summary_dim": 5}}, "config.summary_dim"),
                          ({"data_config": {"validation_fraction": 0.2}}, "data_config.validation_fraction"),
                          ({"method": "inn", "config": {"train": {"epochs": 2}}}, "method"),
                          ({"n": 301}, "data.num_simulations")):
        with pytest.raises(ValueError, match=rf"different fit \(differs in [^)]*{field}"):
            tiny_fit(checkpoint_dir=ckpt, **kwargs)
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        tiny_fit(checkpoint_dir=a_file)
    assert a_file.read_text() == "mine"
    # another simulator under the same name (two lambdas) simulates other data: refused by the data's hash
    wrapped = fit_posterior(lambda x: noisy_identity(x), BOX, num_simulations=300, config=TINY, show_progress=False,
                            checkpoint_dir=tmp_path / "lam")
    with pytest.raises(ValueError, match="data.sha256"):
        fit_posterior(lambda x: 2 * noisy_identity(x), BOX, num_simulations=300, config=TINY, show_progress=False,
                      checkpoint_dir=tmp_path / "lam")
    assert wrapped.metadata["data"]["simulator"] == "<lambda>"
    # a data file whose content changed is refused although its path is the same
    path = tmp_path / "d.h5"
    tiny_fit(data=path, seed=0)
    fit_posterior(data=path, config=TINY, show_progress=False, checkpoint_dir=tmp_path / "f")
    path.unlink()
    tiny_fit(data=path, seed=3)  # the same path, other simulations
    with pytest.raises(ValueError, match="data.sha256"):
        fit_posterior(data=path, config=TINY, show_progress=False, checkpoint_dir=tmp_path / "f")


def test_simulations_in_memory_as_data():
    """data=(x, y): simulations the user already has train the same model as simulating them here."""
    sims = from_simulator(Simulation(noisy_identity, BOX), 300, None, DataConfig(), 0, False)
    from_sim = tiny_fit(seed=0)
    given = fit_posterior(data=(sims.x, sims.y), prior=BOX, config=TINY, seed=0, show_progress=False)
    wa, wb = weights(from_sim), weights(given)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert given.metadata["data"]["source"] == "arrays"
    with pytest.raises(ValueError, match="NaN"):
        fit_posterior(data=(sims.x, sims.y.clone().fill_(math.nan)), config=TINY, show_progress=False)
    with pytest.raises(TypeError, match="complex"):
        fit_posterior(data=(sims.x, sims.y.to(torch.complex64)), config=TINY, show_progress=False)
    with pytest.raises(TypeError, match="INNConfig"):
        fit_posterior(data=(sims.x, sims.y), config=INNConfig(), show_progress=False)


# -- short trainings on known answers -----------------------------------------------------------------------------
def short_config(blocks: int, epochs: int) -> FitConfig:
    return FitConfig(flow=FlowConfig(num_blocks=blocks, hidden=64, num_layers=2), summary_dim=8, summary_hidden=32,
                     train=dict(epochs=epochs, batch_size=128, lr=2e-3, lr_final=1e-4, patience=None))


def test_short_training_gaussian_mixture_finds_the_modes():
    sim = get_simulator("gaussian_mixture")
    post = fit_posterior(sim, sim.prior, num_simulations=4000, config=short_config(6, 60), seed=0,
                         show_progress=False)
    Y = torch.eye(4)
    samples = post.sample_batched((1000,), Y, seed=1)
    for label in range(4):
        s = samples[:, label]
        d = torch.cdist(s, sim.means)
        near = d.min(1).values < 3 * sim.sigma
        right = sim._label_of[d.argmin(1)] == label
        assert (near & right).float().mean() > 0.85, f"label {label}"


def test_short_training_inverse_kinematics_resimulates():
    sim = get_simulator("inverse_kinematics")
    post = fit_posterior(sim, sim.prior, num_simulations=4000, config=short_config(4, 30), seed=0,
                         show_progress=False)
    gen = torch.Generator().manual_seed(5)
    x_true = sim.sample_prior(20, generator=gen)
    Y = sim.simulate(x_true)
    S = post.sample_batched((200,), Y, seed=0)
    err = (sim.simulate(S.reshape(-1, 4)).reshape(200, 20, 2) - Y).norm(dim=-1).mean()
    prior_err = (sim.simulate(sim.sample_prior(4000, generator=gen)).reshape(200, 20, 2) - Y).norm(dim=-1).mean()
    assert err < 0.25 * prior_err, (err, prior_err)


def test_fit_warns_nothing_for_clean_simulators():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_fit(prior=Independent(Normal(torch.zeros(2), torch.ones(2)), 1))


# -- slow statistical tests (pytest -m slow) -----------------------------------------------------------------------
def c2st_score(a, b):
    from sbi_inn.diagnostics.two_sample import c2st

    return c2st(a, b, seed=0, early_stopping=True)


@pytest.mark.slow
def test_gaussian_mixture_matches_the_exact_posterior():
    sim = get_simulator("gaussian_mixture")
    post = fit_posterior(sim, sim.prior, num_simulations=10_000, seed=0, show_progress=False)
    gen = torch.Generator().manual_seed(0)
    scores = []
    for label, y in enumerate(torch.eye(4)):
        ref = sim.sample_posterior(y, 2000, generator=gen)
        scores.append(c2st_score(post.sample((2000,), y, seed=label), ref))
    print("gaussian mixture C2ST per label:", [round(s, 3) for s in scores], "epochs:", len(post.history))
    assert max(scores) < 0.6, scores


@pytest.mark.slow
def test_one_model_for_all_set_sizes_matches_the_conjugate_posterior():
    sim = ConjugateGaussianSets(min_size=1, max_size=100)
    cfg = FitConfig(summary_hidden=64)
    post = fit_posterior(sim, None, num_simulations=20_000, config=cfg, seed=0, show_progress=False)
    gen = torch.Generator().manual_seed(1)
    scores = {}
    for K in (1, 10, 100):  # one amortised model, three observations per set size
        scores[K] = []
        for _ in range(3):
            y, _ = sim.simulate(sim.sample_prior(1, generator=gen), sizes=K, generator=gen)
            ref = sim.sample_posterior(y[0], 2000, generator=gen)
            scores[K].append(c2st_score(post.sample((2000,), y[0], seed=K), ref))
    print("conjugate sets C2ST by set size:", {k: [round(v, 3) for v in s] for k, s in scores.items()},
          "epochs:", len(post.history), "seconds:", round(post.metadata["train_seconds"]))
    for K, s in scores.items():
        assert sum(s) / len(s) < 0.6 and max(s) < 0.65, (K, s)


@pytest.mark.slow
def test_inverse_kinematics_resimulation_error_with_defaults():
    sim = get_simulator("inverse_kinematics")
    post = fit_posterior(sim, sim.prior, num_simulations=10_000, seed=0, show_progress=False)
    gen = torch.Generator().manual_seed(5)
    Y = sim.simulate(sim.sample_prior(200, generator=gen))
    S = post.sample_batched((500,), Y, seed=0)
    err = (sim.simulate(S.reshape(-1, 4)).reshape(500, 200, 2) - Y).norm(dim=-1).mean().item()
    prior_err = (sim.simulate(sim.sample_prior(500, generator=gen))[:, None] - Y).norm(dim=-1).mean().item()
    print(f"inverse kinematics re-simulation error {err:.4f} (prior {prior_err:.4f}), epochs {len(post.history)}")
    assert err < 0.1 * prior_err


def test_a_prior_without_a_support_is_refused_before_any_simulation():
    class NoSupport(torch.distributions.Distribution):
        event_shape, batch_shape = torch.Size([2]), torch.Size()

        def sample(self, sample_shape=()):
            return torch.zeros(*sample_shape, 2)

    calls = []
    with pytest.raises(TypeError, match="has no .support"):
        fit_posterior(lambda x: calls.append(1) or x, NoSupport(validate_args=False), num_simulations=50,
                      config=TINY, show_progress=False)
    assert calls == []
