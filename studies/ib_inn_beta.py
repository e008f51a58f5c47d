"""The IB-INN's beta trade-off (thesis ch. 5, IB-INN paper sec. 4): accuracy, calibration and OoD detection vs beta.

Problems (nothing downloaded):

* ``gmm``: the package's eight-mode Gaussian mixture (``simulators/gaussian_mixture.py``, thesis 4.2.1) as a
  classification problem ``x -> label`` with overlapping modes (``sigma = 0.6``): labels are drawn from ``p(y | x)``,
  which the simulator gives exactly, so the Bayes posterior is known (its total-variation distance to the model's
  class probabilities is reported). OoD: a ring at radius 5.5 outside the modes (``far``), the empty centre
  (``centre``), in-distribution points scaled by 1.4 (``scaled``).
* ``digits``: the 8x8 handwritten digits scikit-learn ships (1797 images, 64 pixels of 17 grey levels), uniformly
  dequantised once (``(pixel + u) / 17``, ``u ~ U(0, 1)``, the standard treatment of discrete data for flows: without
  it the density of pixels that are always 0 is unbounded and the validation NLL explodes) and split 80/20 per
  class. OoD: test digits with uniform noise of amplitude 0.25 added (``noise``), inverted (``1 - x``), rotated by 90
  degrees and mirrored left-right.
* ``tissue``: the tissue-spectra simulator (``simulators/tissue_spectra.py``, 8 bands, 5 % noise; 6000 training and
  4000 test spectra) with the oxygen saturation discretised into four classes (quartiles of its prior ``[0, 1]``);
  inputs are log intensities. OoD: spectra of a two-layer tissue, of blood volumes beyond the prior (``v_hb`` in
  ``[0.35, 0.7]``) and with four times the noise.

Models, all with the same optimisation (``sbi_inn.train``: Adam, decaying learning rate, early stopping on a 10 %
validation split, label smoothing 0.05, input noise sigma = 1e-3 of each input's standard deviation):

* IB-INN (``fit_classifier``) for a sweep of beta over several orders of magnitude; ``beta = 1`` is the class-NLL
  generative classifier (thesis 5.2.3, the identity is tested in ``tests/test_classifier.py``);
* ``feed-forward``: a residual MLP softmax classifier with two residual units per coupling block, each unit the
  same MLP as a coupling subnet (about the INN's parameter count; paper sec. 4.1 "Feed-forward");
* ``i-RevNet``: the same INN as the IB-INN with a linear layer from its output to class logits, trained as a plain
  softmax classifier (paper sec. 4.1);
* ablations: the selected IB-INN and the feed-forward classifier without label smoothing (with smoothing 0.05 a
  classifier that is always right is held at 0.955 confidence on ten classes, which alone costs about 0.01 ECE);
* ``gmm`` only: the exact Bayes posterior of the simulator, the calibration floor of the finite test set.

Metrics (``sbi_inn.diagnostics.classification``): accuracy, ECE, MCE, ICE and their geometric mean, overconfidence,
test cross-entropy, bits/dim (generative models), OoD AUROC per OoD set and their geometric mean (NOTES: the tables'
OoD "Average"). The generative classifiers score OoD inputs with the typicality test (``Classifier.ood_score``);
the discriminative ones, which have no density, with the maximum softmax probability (``1 - max_y p(y|x)``; Hendrycks
& Gimpel 2017), which is also reported for the IB-INNs (``auroc_msp``). The information plane of the IB-INN runs
(``Classifier.information_plane``: ``I(X;Z) ~ L_X - d log sqrt(2 pi e sigma^2)``, ``I(Y;Z) ~ E[L_Y]`` per epoch) is
drawn per problem.

The *selected* beta is the one with the lowest mean ECE among the betas whose mean accuracy is within 2 points of
the feed-forward classifier's; the issue's target is then: ECE below the feed-forward's and the class-NLL's, and the
mean OoD AUROC above the feed-forward's. Selection and target use the same test sets (as the paper's choice of
gamma = 1 does); the numbers per seed are in the JSON.

Usage:
    python studies/ib_inn_beta.py [--problems gmm digits tissue] [--seeds 3] [--seed 0] [--quick] [--force]

The default run writes ``studies/results/ib_inn_beta/``: ``<problem>.json`` and figures per problem
(``<problem>_beta_sweep.png``, ``<problem>_reliability.png``, ``<problem>_information_plane.png``; digits also
``digits_samples.png``), and ``results.md`` (the table of every problem in the results directory). Any other setting
(``--quick``, another ``--seed`` or ``--seeds``) writes to ``variants/<tag>/`` beside them (git-ignored). Existing
results of a requested problem are refused without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from sbi_inn import SeedTree, fit_classifier  # noqa: E402
from sbi_inn.classifier import ClassifierConfig, stratified_split  # noqa: E402
from sbi_inn.diagnostics import classification as cl  # noqa: E402
from sbi_inn.flows import ACTIVATIONS, CouplingFlow, FlowConfig  # noqa: E402
from sbi_inn.train import train  # noqa: E402
from sbi_inn.transforms import Standardize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_common import to_json_types  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "ib_inn_beta"
PROBLEMS = ("gmm", "digits", "tissue")
SMOOTHING = 0.05
SIGMA = 1e-3
TRAIN = {"epochs": 100, "batch_size": None, "lr": 1e-3, "lr_final": 1e-5, "patience": 20}
FLOWS = {"gmm": FlowConfig(num_blocks=6, hidden=64, num_layers=2),
         "digits": FlowConfig(num_blocks=6, hidden=128, num_layers=2),
         "tissue": FlowConfig(num_blocks=6, hidden=64, num_layers=2)}
BETAS = {"gmm": [1, 2, 8, 32, 128, 1024],
         "digits": [1, 8, 32, 64, 128, 256, 1024, 4096, 65536],
         "tissue": [1, 4, 16, 64, 256, 1024]}
QUICK_BETAS = {"gmm": [1, 8, 256], "digits": [1, 64, 1024], "tissue": [1, 8, 128]}


# -- data ---------------------------------------------------------------------------------------------------------
def gmm_problem(seed: int, quick: bool) -> dict:
    from simulators.gaussian_mixture import GaussianMixture

    sim = GaussianMixture(sigma=0.6)
    tree = SeedTree(seed)
    g = torch.Generator().manual_seed(tree.seed("simulation", 0))
    n_train, n_test = (2000, 2000) if quick else (6000, 4000)

    def draw(n):
        x = _mixture_sample(sim, n, g)
        y = sim.simulate(x, generator=g).argmax(1)
        return x, y

    x, y = draw(n_train)
    xt, yt = draw(n_test)
    onehots = torch.eye(sim.num_labels)

    def bayes_fn(v):  # the exact p(y | x) of the simulator
        return torch.stack([sim.log_likelihood(onehots[c].expand(len(v), -1), v) for c in range(sim.num_labels)],
                           1).exp()

    bayes = bayes_fn(xt)
    angle = 2 * math.pi * torch.rand(1000, generator=g)
    ring = torch.stack([angle.cos(), angle.sin()], 1)
    ood = {"far": 5.5 * ring + sim.sigma * torch.randn(1000, 2, generator=g),
           "centre": sim.sigma * torch.randn(1000, 2, generator=g),
           "scaled": 1.4 * xt[:1000]}
    return {"x": x, "y": y, "x_test": xt, "y_test": yt, "bayes": bayes, "bayes_fn": bayes_fn, "ood": ood,
            "num_classes": sim.num_labels,
            "quantization_step": None, "description": "8-mode Gaussian mixture, sigma 0.6, labels 0000 11 2 3"}


def _mixture_sample(sim, n: int, g: torch.Generator) -> torch.Tensor:
    c = torch.randint(len(sim.means), (n,), generator=g)
    return sim.means[c] + sim.sigma * torch.randn(n, 2, generator=g)


def digits_problem(seed: int, quick: bool) -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    raw, y = torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)
    g = torch.Generator().manual_seed(SeedTree(seed).seed("simulation", 0))
    x = (raw + torch.rand(raw.shape, generator=g)) / 17.0  # uniform dequantisation, values in [0, 1]
    train_idx, test_idx = stratified_split(y, 0.2, SeedTree(seed).numpy("simulation", 1))
    xt = x[test_idx]
    images = xt.reshape(-1, 8, 8)
    ood = {"noise": (xt + 0.25 * torch.rand(xt.shape, generator=g)),
           "inverted": 1.0 - xt,
           "rotated": torch.rot90(images, 1, (1, 2)).reshape(-1, 64),
           "mirrored": images.flip(2).reshape(-1, 64)}
    return {"x": x[train_idx], "y": y[train_idx], "x_test": xt, "y_test": y[test_idx], "bayes": None, "ood": ood,
            "num_classes": 10, "quantization_step": 1 / 17, "description": "sklearn 8x8 digits, dequantised"}


def tissue_problem(seed: int, quick: bool) -> dict:
    from simulators.tissue_spectra import TissueSpectra

    sim = TissueSpectra()
    g = torch.Generator().manual_seed(SeedTree(seed).seed("simulation", 0))
    n_train, n_test = (2000, 2000) if quick else (6000, 4000)

    def draw(n, simulator=sim, prior=None):
        params = _box(simulator, n, g, prior)
        spectra = simulator.simulate(params, generator=g)
        return params, torch.log(spectra)

    p, x = draw(n_train)
    pt, xt = draw(n_test)
    y, yt = _so2_class(p[:, 0]), _so2_class(pt[:, 0])
    two = TissueSpectra(num_layers=2)
    high_blood = [(0, 1), (0.35, 0.7), None, None, None, None]
    ood = {"two_layer": draw(1000, two)[1], "high_blood": draw(1000, sim, high_blood)[1],
           "noisy": torch.log(TissueSpectra(noise=0.2).simulate(pt[:1000], generator=g))}
    return {"x": x, "y": y, "x_test": xt, "y_test": yt, "bayes": None, "ood": ood, "num_classes": 4,
            "quantization_step": None, "description": "tissue spectra (8 bands, 5 % noise), sO2 quartile classes"}


def _box(simulator, n: int, g: torch.Generator, ranges=None) -> torch.Tensor:
    """Uniform draws from the simulator's prior box, some parameter ranges replaced by ``ranges`` (None: keep)."""
    box = simulator.prior.support.base_constraint
    lo, hi = box.lower_bound.clone(), box.upper_bound.clone()
    for i, r in enumerate(ranges or []):
        if r is not None:
            lo[i], hi[i] = r
    return lo + (hi - lo) * torch.rand(n, len(lo), generator=g)


def _so2_class(so2: torch.Tensor) -> torch.Tensor:
    return torch.clamp((so2 * 4).long(), 0, 3)


MAKERS = {"gmm": gmm_problem, "digits": digits_problem, "tissue": tissue_problem}


# -- baselines ------------------------------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    """Feed-forward softmax classifier: standardisation, ``2 * num_blocks`` residual units ``h + f(h)`` (``f`` the
    coupling subnet MLP: ``num_layers`` hidden layers of ``hidden`` units), a linear layer to the class logits."""

    def __init__(self, dim: int, classes: int, flow: FlowConfig, sigma: float):
        super().__init__()
        self.standardize, self.sigma = Standardize(dim), sigma

        def unit():
            layers, width = [], dim
            for _ in range(flow.num_layers):
                layers += [nn.Linear(width, flow.hidden), ACTIVATIONS[flow.activation]()]
                width = flow.hidden
            return nn.Sequential(*layers, nn.Linear(width, dim))

        self.units = nn.ModuleList(unit() for _ in range(2 * flow.num_blocks))
        self.head = nn.Linear(dim, classes)

    def forward(self, x, noise=None):
        h = self.standardize(x) + (0 if noise is None else noise)
        for f in self.units:
            h = h + f(h)
        return self.head(h)


class INNSoftmax(nn.Module):
    """The IB-INN's coupling flow with a linear layer from its output to the class logits (i-RevNet-style)."""

    def __init__(self, dim: int, classes: int, flow: FlowConfig, sigma: float):
        super().__init__()
        self.standardize, self.sigma = Standardize(dim), sigma
        self.flow = CouplingFlow(dim, 0, flow)
        self.head = nn.Linear(dim, classes)

    def forward(self, x, noise=None):
        z, _ = self.flow(self.standardize(x) + (0 if noise is None else noise), jac=False)
        return self.head(z)


def fit_discriminative(kind: str, x, y, classes: int, flow: FlowConfig, seed: int, smoothing: float,
                       train_cfg: dict):
    """Train a baseline with the same split, optimisation and seeds as ``fit_classifier``."""
    tree = SeedTree(seed)
    train_idx, val_idx = stratified_split(y, 0.1, tree.numpy("split"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tree.seeds("init", n=2)[0])
        model = (ResidualMLP if kind == "feed-forward" else INNSoftmax)(x.shape[1], classes, flow, SIGMA)
    model.standardize.fit(x[train_idx])
    cfg = ClassifierConfig.from_dict({"train": {**train_cfg, "seed": seed}}).train

    def loss(m, batch, step):
        xb, yb = batch
        noise = m.sigma * torch.randn(xb.shape, generator=step.generator)
        return F.cross_entropy(m(xb, noise), yb, label_smoothing=smoothing), {}

    def val_loss(m, batch, step):
        xb, yb = batch
        return F.cross_entropy(m(xb), yb, label_smoothing=smoothing, reduction="none"), {}

    history = train(model, loss, (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), cfg,
                    device=torch.device("cpu"), show_progress=False, val_loss_fn=val_loss)
    model.eval()
    return model, history


# -- evaluation -----------------------------------------------------------------------------------------------------
def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def geometric_mean(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.exp(np.log(np.clip(v, 1e-12, None)).mean()))


def evaluate(probs_fn, data: dict, ood_fn=None, nll_fn=None) -> dict:
    """Metrics of one trained model: ``probs_fn(x) -> (N, C)``, ``ood_fn(x) -> (N,)`` (None: max-softmax only),
    ``nll_fn(x) -> (N,)`` nats (None: no bits/dim)."""
    p_test = probs_fn(data["x_test"]).double()
    m = cl.classification_calibration(p_test, data["y_test"])
    m["cross_entropy"] = float(-torch.log(p_test.gather(1, data["y_test"][:, None]).clamp_min(1e-300)).mean())
    if data["bayes"] is not None:
        m["bayes_tv"] = float(0.5 * (p_test - data["bayes"].double()).abs().sum(1).mean())
    msp_in = 1 - p_test.max(1).values
    h_in = float(cl.prediction_entropy(p_test).mean())
    m["auroc_msp"], m["entropy_increase"] = {}, {}
    if ood_fn is not None:
        s_in = ood_fn(data["x_test"])
        m["auroc"] = {k: cl.ood_auroc(s_in, ood_fn(v)) for k, v in data["ood"].items()}
    for k, v in data["ood"].items():
        p_ood = probs_fn(v).double()
        m["auroc_msp"][k] = cl.ood_auroc(msp_in, 1 - p_ood.max(1).values)
        m["entropy_increase"][k] = float(cl.prediction_entropy(p_ood).mean()) - h_in
    if ood_fn is None:
        m["auroc"] = dict(m["auroc_msp"])
    m["auroc_mean"] = geometric_mean(list(m["auroc"].values()))
    m["auroc_arith"] = float(np.mean(list(m["auroc"].values())))
    m["auroc_msp_mean"] = geometric_mean(list(m["auroc_msp"].values()))
    if nll_fn is not None:
        d = data["x_test"].shape[1]
        m["bits_per_dim"] = cl.bits_per_dim(nll_fn(data["x_test"]), d, quantization_step=data["quantization_step"])
    m["reliability"] = {k: np.nan_to_num(v, nan=-1).tolist() for k, v in
                        cl.reliability_diagram(p_test, data["y_test"]).items()}
    return m


def run_problem(name: str, seeds: list[int], quick: bool, out: Path, log) -> dict:
    flow = FLOWS[name]
    betas = QUICK_BETAS[name] if quick else BETAS[name]
    train_cfg = dict(TRAIN, epochs=10) if quick else dict(TRAIN)
    runs: dict[str, list[dict]] = {}
    planes, samples = {}, {}
    t_problem = time.perf_counter()
    for seed in seeds:
        data = MAKERS[name](seed, quick)
        for beta in betas:
            clf = fit_ib(name, data, seed, beta, SMOOTHING, None, runs, flow, train_cfg, log)
            if seed == seeds[0]:
                planes[beta] = clf.information_plane()
                if name == "digits" and beta in (1, 64, 1024):
                    samples[beta] = torch.stack([clf.sample(c, 6, seed=c).clamp(0, 1) for c in range(10)])
        for kind in ("feed-forward", "i-RevNet"):
            t0 = time.perf_counter()
            model, history = fit_discriminative(kind, data["x"], data["y"], data["num_classes"], flow, seed,
                                                SMOOTHING, train_cfg)
            m = _eval_dc(model, data)
            m.update(seconds=time.perf_counter() - t0, epochs=len(history), params=num_params(model), seed=seed)
            runs.setdefault(kind, []).append(m)
            log(f"  {name} seed {seed} {kind:>22}: acc {m['accuracy']:.4f} ece {m['ece']:.4f} mce {m['mce']:.3f} "
                f"auroc(msp) {m['auroc_mean']:.3f} ({m['seconds']:.0f} s)")
        if data.get("bayes_fn") is not None:  # the exact posterior as a classifier: the calibration floor
            runs.setdefault("Bayes (exact)", []).append({**evaluate(data["bayes_fn"], data), "seed": seed})
    # ablations without label smoothing: the feed-forward classifier and the selected beta
    best = select_beta(summarise(runs), betas)
    for seed in seeds:
        data = MAKERS[name](seed, quick)
        model, history = fit_discriminative("feed-forward", data["x"], data["y"], data["num_classes"], flow, seed,
                                            0.0, train_cfg)
        m = _eval_dc(model, data)
        m.update(epochs=len(history), seed=seed, params=num_params(model))
        runs.setdefault("feed-forward (no smoothing)", []).append(m)
        fit_ib(name, data, seed, best, 0.0, f"beta={best:g} (no smoothing)", runs, flow, train_cfg, log)
    summary = summarise(runs)
    best = select_beta(summary, betas)
    result = {"problem": name, "description": data["description"], "dim": int(data["x"].shape[1]),
              "num_classes": data["num_classes"], "num_train": int(len(data["x"])),
              "num_test": int(len(data["x_test"])), "ood_sets": list(data["ood"]), "seeds": seeds,
              "flow": flow.to_dict(), "train": train_cfg, "sigma": SIGMA, "label_smoothing": SMOOTHING,
              "betas": betas, "selected_beta": best, "selected_gamma": best / data["x"].shape[1],
              "target": target_check(summary, best),
              "target_without_smoothing": target_check(summary, best, " (no smoothing)"), "summary": summary,
              "runs": runs,
              "information_plane": {f"{b:g}": p for b, p in planes.items()},
              "minutes": (time.perf_counter() - t_problem) / 60, "torch_threads": torch.get_num_threads()}
    (out / f"{name}.json").write_text(json.dumps(to_json_types(result), indent=1))
    plot_sweep(result, out / f"{name}_beta_sweep.png")
    plot_reliability(result, out / f"{name}_reliability.png")
    plot_plane(result, out / f"{name}_information_plane.png")
    if samples:
        plot_samples(samples, out / "digits_samples.png")
    return result


def fit_ib(name, data, seed, beta, smoothing, key, runs, flow, train_cfg, log):
    """Train and evaluate one IB-INN; its metrics are appended to ``runs[key]`` (default key ``beta=<beta>``)."""
    t0 = time.perf_counter()
    cfg = {"sigma": SIGMA, "label_smoothing": smoothing, "flow": flow.to_dict(), "train": train_cfg}
    clf = fit_classifier(data["x"], data["y"], beta=float(beta), seed=seed, config=cfg, device="cpu",
                         show_progress=False)
    m = evaluate(clf.predict_proba, data, clf.ood_score, lambda v: -clf.log_likelihood(v))
    d = data["x"].shape[1]
    m.update(seconds=time.perf_counter() - t0, epochs=len(clf.history), beta=float(beta), gamma=beta / d,
             params=num_params(clf.model), seed=seed)
    key = key or f"beta={beta:g}"
    runs.setdefault(key, []).append(m)
    log(f"  {name} seed {seed} {key:>22}: acc {m['accuracy']:.4f} ece {m['ece']:.4f} mce {m['mce']:.3f} "
        f"auroc {m['auroc_mean']:.3f} ({m['seconds']:.0f} s, {m['epochs']} epochs)")
    return clf


@torch.no_grad()
def _eval_dc(model, data) -> dict:
    def probs(v):
        return torch.softmax(model(v.float()), 1)

    return evaluate(probs, data)


SCALARS = ("accuracy", "ece", "mce", "ice", "gme", "overconfidence", "cross_entropy", "bayes_tv", "auroc_mean",
           "auroc_arith",
           "auroc_msp_mean", "bits_per_dim", "seconds", "epochs")


def summarise(runs: dict) -> dict:
    """Mean and standard deviation over seeds of every scalar metric and of each OoD set's AUROC."""
    out = {}
    for key, ms in runs.items():
        row = {}
        for k in SCALARS:
            vals = [m[k] for m in ms if k in m and m[k] is not None and not math.isnan(m[k])]
            if vals:
                row[k], row[k + "_sd"] = float(np.mean(vals)), float(np.std(vals))
        for k in ("auroc", "auroc_msp"):
            row[k] = {s: float(np.mean([m[k][s] for m in ms])) for s in ms[0][k]}
        for k in ("beta", "gamma", "params"):
            if k in ms[0]:
                row[k] = ms[0][k]
        out[key] = row
    return out


def select_beta(summary: dict, betas) -> float:
    """Lowest mean ECE among the betas with mean accuracy within 2 points of the feed-forward classifier (the
    most accurate beta when none is)."""
    ff = summary.get("feed-forward", {}).get("accuracy", 0.0)
    rows = [(b, summary[f"beta={b:g}"]) for b in betas if f"beta={b:g}" in summary]
    close = [(b, r) for b, r in rows if r["accuracy"] >= ff - 0.02]
    if close:
        return float(min(close, key=lambda br: br[1]["ece"])[0])
    return float(max(rows, key=lambda br: br[1]["accuracy"])[0])


def target_check(summary: dict, best: float, variant: str = "") -> dict:
    """The issue's target at the selected beta; ``variant=" (no smoothing)"`` compares the runs without label
    smoothing (the class-NLL baseline keeps its smoothing: at beta = 1 the L_Y term has weight 1 / (d + 1))."""
    b, ff, nll = summary[f"beta={best:g}{variant}"], summary[f"feed-forward{variant}"], summary["beta=1"]
    return {"accuracy_within_2_points_of_feed_forward": b["accuracy"] >= ff["accuracy"] - 0.02,
            "ece_below_feed_forward": b["ece"] < ff["ece"], "ece_below_class_nll": b["ece"] < nll["ece"],
            "auroc_above_feed_forward": b["auroc_mean"] > ff["auroc_mean"],
            "numbers": {"accuracy": [b["accuracy"], ff["accuracy"], nll["accuracy"]],
                        "ece": [b["ece"], ff["ece"], nll["ece"]],
                        "auroc_mean": [b["auroc_mean"], ff["auroc_mean"], nll["auroc_mean"]],
                        "order": ["selected beta", "feed-forward", "class-NLL (beta=1)"]}}


def paired_difference(runs: dict, a: str, b: str, key: str = "ece") -> tuple[float, float]:
    """Mean and standard error over seeds of ``key`` of model ``a`` minus model ``b``, paired by seed (both models
    of a seed share its data and test set); the standard error is ``nan`` for one seed."""
    d = np.array([ra[key] - rb[key] for ra, rb in zip(runs[a], runs[b], strict=True)])
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return float(d.mean()), se


def _difference_line(r: dict, variant: str) -> str:
    """The selected beta's ECE minus the baselines', in points, paired over seeds (for the table)."""
    sel = f"beta={r['selected_beta']:g}{variant}"
    parts = []
    for base in (f"feed-forward{variant}", "beta=1"):
        m, se = paired_difference(r["runs"], sel, base)
        parts.append(f"minus {base} {100 * m:+.2f} ± {100 * se:.2f}")
    return f"ECE of {sel}, paired over {len(r['seeds'])} seeds (mean ± standard error, points): " + "; ".join(parts)


# -- figures and table ----------------------------------------------------------------------------------------------
def plot_sweep(result: dict, path: Path) -> None:
    s, betas = result["summary"], result["betas"]
    panels = [("accuracy", "accuracy (up)"), ("ece", "ECE (down)"), ("mce", "MCE (down)"), ("ice", "ICE (down)"),
              ("auroc_mean", "OoD AUROC, geo. mean (up)"), ("bits_per_dim", "bits/dim (down)")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), layout="constrained")
    gammas = [b / result["dim"] for b in betas]
    for ax, (k, title) in zip(axes.flat, panels):
        y = [s[f"beta={b:g}"].get(k, np.nan) for b in betas]
        e = [s[f"beta={b:g}"].get(k + "_sd", 0.0) for b in betas]
        ax.errorbar(gammas, y, yerr=e, marker="o", color="C0", label="IB-INN")
        ax.plot(gammas[0], y[0], "s", color="C3", ms=9, label="class-NLL (beta=1)")
        for key, color in (("feed-forward", "C1"), ("i-RevNet", "C2")):
            if k in s.get(key, {}):
                ax.axhline(s[key][k], color=color, ls="--", label=key)
        ax.axvline(result["selected_gamma"], color="0.6", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("gamma = beta / dim")
        ax.set_title(title)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{result['problem']}: IB-INN beta sweep ({len(result['seeds'])} seeds; dotted: selected beta; "
                 "DC OoD score: max softmax)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(result: dict, path: Path) -> None:
    best = result["selected_beta"]
    keys = [("beta=1", "class-NLL (beta=1)"), (f"beta={best:g}", f"IB-INN beta={best:g}"),
            ("feed-forward", "feed-forward"), ("i-RevNet", "i-RevNet")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8), layout="constrained")
    for ax, (key, title) in zip(axes, keys):
        r = result["runs"][key][0]["reliability"]
        edges, q = np.array(r["edges"]), np.array(r["accuracy"], dtype=float)
        q[np.array(r["counts"]) == 0] = np.nan
        ax.bar(edges[:-1], q, width=np.diff(edges), align="edge", edgecolor="k", alpha=0.7)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ece = result["summary"][key]["ece"]
        ax.set_title(f"{title}\nECE {100 * ece:.2f} %")
        ax.set_xlabel("confidence (bin)")
    axes[0].set_ylabel("fraction correct")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_plane(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    planes = result["information_plane"]
    cmap = plt.get_cmap("viridis")
    for i, (b, p) in enumerate(planes.items()):
        color = cmap(i / max(1, len(planes) - 1))
        ax.plot(p["I_XZ"], p["I_YZ"], "-o", ms=2, color=color, label=f"beta={b} (gamma={p['gamma']:.3g})")
    h_y = next(iter(planes.values()))["H_Y"]
    ax.axhline(h_y, color="k", ls=":", lw=1, label="H(Y)")
    ax.set_xlabel("I(X; Z) ~ L_X - d log sqrt(2 pi e sigma^2)  [nats]")
    ax.set_ylabel("I(Y; Z) ~ E[L_Y]  [nats]")
    ax.set_title(f"{result['problem']}: information plane per epoch (seed {result['seeds'][0]})")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(samples: dict, path: Path) -> None:
    """Samples of each class (rows 0-9, six per row) for a few betas, side by side."""
    fig, axes = plt.subplots(1, len(samples), figsize=(3.4 * len(samples), 6.0), layout="constrained")
    for ax, (beta, s) in zip(np.atleast_1d(axes), samples.items()):
        grid = s.reshape(10, 6, 8, 8).permute(0, 2, 1, 3).reshape(10 * 8, 6 * 8)  # class rows, sample columns
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"beta={beta:g}")
        ax.set_yticks(np.arange(10) * 8 + 3.5, [str(c) for c in range(10)])
        ax.set_xticks([])
    fig.suptitle("IB-INN samples x = g^-1(z), z ~ N(mu_y, I), per class (rows)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(out: Path) -> None:
    lines = ["# IB-INN beta trade-off (studies/ib_inn_beta.py)", "",
             "Means over seeds; percent except bits/dim. OoD AUROC: geometric mean over the OoD sets (IB-INN: "
             "typicality test; feed-forward and i-RevNet: max softmax). Selected beta: lowest ECE within 2 accuracy "
             "points of the feed-forward classifier.", ""]
    for name in PROBLEMS:
        f = out / f"{name}.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        s, t = r["summary"], r["target"]
        lines += [f"## {name}: {r['description']} (d = {r['dim']}, {r['num_classes']} classes, "
                  f"{r['num_train']} train / {r['num_test']} test, seeds {r['seeds']}, {r['minutes']:.1f} min)", "",
                  "| model | gamma | acc | ECE | MCE | ICE | GME | overconf. | bits/dim | OoD AUROC | AUROC (msp) |"
                  + (" Bayes TV |" if "bayes_tv" in s["beta=1"] else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if "bayes_tv" in s["beta=1"] else "")]
        for key, row in s.items():
            label = key + (" *" if key == f"beta={r['selected_beta']:g}" else "")

            def pct(k, row=row):
                v = row.get(k)
                return "-" if v is None else f"{100 * v:.2f}"

            oc = row.get("overconfidence")
            bpd = row.get("bits_per_dim")
            lines.append(f"| {label} | {row['gamma']:.3g} |" if "gamma" in row else f"| {label} | - |")
            lines[-1] += (f" {pct('accuracy')} | {pct('ece')} | {pct('mce')} | {pct('ice')} | {pct('gme')} | "
                          f"{'-' if oc is None else f'{oc:.2f}'} | {'-' if bpd is None else f'{bpd:.3f}'} | "
                          f"{pct('auroc_mean')} | {pct('auroc_msp_mean')} |")
            if "bayes_tv" in s["beta=1"]:
                lines[-1] += f" {pct('bayes_tv')} |"
        lines += ["", f"Target at the selected beta = {r['selected_beta']:g} (gamma {r['selected_gamma']:.3g}): "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in t.items() if k != "numbers"), "",
                  _difference_line(r, ""), "",
                  "Without label smoothing (selected beta and feed-forward both unsmoothed, class-NLL as above): "
                  + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["target_without_smoothing"].items()
                              if k != "numbers"), "", _difference_line(r, " (no smoothing)"), "",
                  "OoD AUROC per set (mean over seeds): "
                  + "; ".join(f"{key}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in s[key]["auroc"].items())
                              for key in dict.fromkeys(("beta=1", f"beta={r['selected_beta']:g}", "feed-forward",
                                                        "i-RevNet"))),
                  ""]
    (out / "results.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (seed, seed + 1, ...)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 betas, 10 epochs, one seed, small data")
    parser.add_argument("--force", action="store_true", help="replace existing results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    changed = [k for k, default in (("quick", False), ("seed", 0), ("seeds", 3)) if getattr(args, k) != default]
    if args.quick:
        args.seeds = 1
        changed = [k for k in changed if k != "seeds"]
    out = OUT if not changed else OUT / "variants" / "_".join(
        k if k == "quick" else f"{k}={getattr(args, k)}" for k in changed)
    out.mkdir(parents=True, exist_ok=True)
    existing = [p for p in args.problems if (out / f"{p}.json").exists()]
    if existing and not args.force:
        raise SystemExit(f"{out} already holds results for {existing}; pass --force to replace them")
    seeds = list(range(args.seed, args.seed + args.seeds))

    def log(msg):
        print(msg, flush=True)

    for name in args.problems:
        t0 = time.perf_counter()
        r = run_problem(name, seeds, args.quick, out, log)
        log(f"{name}: selected beta {r['selected_beta']:g} (gamma {r['selected_gamma']:.3g}); target "
            f"{ {k: v for k, v in r['target'].items() if k != 'numbers'} } ({(time.perf_counter() - t0) / 60:.1f} min)")
        write_table(out)
    log(f"results in {out}")


if __name__ == "__main__":
    main()
