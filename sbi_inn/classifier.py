"""IB-INN: generative classifiers trained with the information bottleneck (thesis ch. 5; IB-INN paper sec. 3).

An invertible network ``g`` (the package's unconditional GLOW coupling flow, ``CouplingFlow(dim, 0, ...)``) maps
standardised, noise-augmented inputs ``u = s(x) + eps``, ``eps ~ N(0, sigma^2 I)``, to a latent ``z = g(u)`` whose
reference distribution is a Gaussian mixture with one unit-covariance component per class (thesis eq. 5.8, paper
eq. 2)::

    q(z | y) = N(z; mu_y, I),        q(z) = sum_y p(y) N(z; mu_y, I),

the class means ``mu_y`` learned jointly with ``g`` and the class priors ``p(y)`` fixed to the label frequencies
(``q(Y) = p(Y)``, known priors: ``Phi`` of appendix C.2 is not learned). With ``w_y = log p(y)`` the losses are, per
row (appendix C.2, eqs. C.45-C.47 with the operator C.46 lost in the text restored as ``logsumexp``; constants kept so
that ``L_X`` is a proper negative log-density)::

    logits_y = -||z - mu_y||^2 / 2 + w_y
    L_X = -logsumexp_y(logits_y) + dim/2 log(2 pi) - log|det J_g(u)|          (eq. 5.10 = paper eq. 4/5)
    L_Y = log_softmax_y(logits)[y] - w_y = log q(y | z) - log p(y)            (eq. 5.15 = paper eq. 7)

``L_X`` is the negative log-likelihood of ``u`` under the flow with the mixture marginal; ``L_Y`` the log-posterior of
the correct class (minus the constant ``log p(y)``), averaged with label smoothing ``t = (1 - a) onehot(y) + a / C``
(``a = 0.05``, paper sec. 4 "Label smoothing"). The trained loss is the rebalanced IB loss (thesis eq. 5.17, paper
eq. 9) with ``gamma = beta / dim``::

    L_IB = 2 / (1 + gamma) * (L_X / dim - gamma * L_Y).

With ``beta = 1`` the mixture normaliser of ``L_X`` cancels the denominator of ``L_Y`` and ``L_X - L_Y`` is the
class-conditional NLL ``-log q(u | y)`` of a standard generative classifier (thesis 5.2.3, "Classical class-NLL
loss"), so ``L_IB = 2 / (dim + 1) * class-NLL`` (:func:`ib_loss`; a test checks the identity). ``beta -> inf``
(``gamma -> inf``) trains ``-2 L_Y`` alone, a discriminative classifier with the same network.

Prediction (Bayes' rule; the Jacobian cancels): ``p(y | x) = softmax_y(-||g(s(x)) - mu_y||^2 / 2 + w_y)``.

Out-of-distribution score: the typicality test (Nalisnick et al. 2019, thesis 5.3.2 and 5.4.3) applied to single
inputs, ``|L_X(x) - mean L_X(in-distribution)|`` with the in-distribution reference taken from the held-out
validation rows (the training rows when there are none; the training NLL of a flow fitted to a small data set is
optimistically low); ``method="quantile"`` gives the thesis' two-tailed quantile test (5.4.3: thresholds at equal
quantiles of the reference scores).

Information plane at no extra cost (thesis Prop. 4, NOTES): the preserved information ``I(X; Z) <= CI(X; Z) ~
L_X - dim log sqrt(2 pi e sigma^2)`` and the relevant information ``I(Y; Z) >= CI(Y; Z) = E[L_Y]`` (unsmoothed
labels), both from the per-epoch training averages (:meth:`Classifier.information_plane`).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(200) % 2
    >>> x = torch.randn(200, 2, generator=g) + 4.0 * labels[:, None]
    >>> clf = fit_classifier(x, labels, config={"flow": {"num_blocks": 2, "hidden": 16},
    ...                                          "train": {"epochs": 3}}, show_progress=False)
    >>> clf.predict_proba(x[:3]).shape, clf.ood_score(x[:3]).shape
    (torch.Size([3, 2]), torch.Size([3]))

References:
    thesis sec. 5.2 (eqs. 5.8, 5.10, 5.15-5.17), 5.3 (label smoothing, loss rebalancing, sigma), 5.4.3 (OoD as a
    hypothesis test), app. C.2 (loss implementation); IB-INN paper sec. 3 (eqs. 2, 4, 5, 7, 8, 9) and sec. 4.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sbi_inn._version import __version__
from sbi_inn.checks import check_types, class_labels, real_tensor
from sbi_inn.config import as_config, override
from sbi_inn.fingerprint import checkpoint_path, jsonable  # the same fingerprinted checkpoints as fit_posterior
from sbi_inn.flows import CouplingFlow, FlowConfig
from sbi_inn.locking import exclusive_lock
from sbi_inn.model_files import HeaderBounds, read_model_file, write_model_file
from sbi_inn.posterior import resolve_device
from sbi_inn.simulation import SeedTree, check_seed
from sbi_inn.train import Step, TrainConfig, train
from sbi_inn.transforms import LOG_2PI, Standardize

__all__ = ["IBINN", "Classifier", "ClassifierConfig", "fit_classifier", "load_classifier", "ib_loss",
           "DEFAULT_GAMMA"]

FORMAT_NAME = "sbi_inn.classifier"
FORMAT_VERSION = 1
CHUNK_ROWS = 2**12  # rows per forward pass when predicting, scoring or sampling (bounds memory like sample_batched)
REFERENCE_MAX_ROWS = 10_000  # in-distribution L_X values kept for the OoD tests
OOD_METHODS = ("typicality", "quantile")
# beta = DEFAULT_GAMMA * dim(X) when ClassifierConfig.beta is None, chosen by the sweep of studies/ib_inn_beta.py
# (studies/results/ib_inn_beta/results.md, 3 seeds, label smoothing 0.05): gamma = 64 is the selected value on the
# Gaussian mixture (accuracy 96.8 % vs feed-forward 96.9 %, ECE 2.9 % vs 3.3 %, OoD AUROC 73 % vs 43 %), on the digits
# it keeps the feed-forward accuracy (98.7 %) and ECE (1.9 %) with OoD AUROC 89 % vs 63 %, and on the tissue spectra
# it lies between the selected gamma = 32 and gamma = 128 (ECE 1.4-1.5 %). Smaller gamma gives better OoD detection
# and bits/dim at lower accuracy (the paper chose gamma = 1 on CIFAR-10 and 0.1 on CIFAR-100, thesis 5.3.3).
DEFAULT_GAMMA = 64.0

DEFAULT_CLASSIFIER_FLOW = FlowConfig(num_blocks=6, hidden=128, num_layers=2)
DEFAULT_CLASSIFIER_TRAIN = TrainConfig(epochs=100, batch_size=None, lr=1e-3, lr_final=1e-5, patience=20)


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of :func:`fit_classifier` (frozen, JSON-able; a dict of its fields is accepted everywhere).

    Attributes:
        beta: the IB trade-off ``beta`` (``gamma = beta / dim``, paper eq. 9): ``1`` is the class-NLL generative
            classifier, large values a discriminative one, ``0`` a plain density model (``L_X`` only). ``None`` (the
            default) takes ``beta = DEFAULT_GAMMA * dim``.
        sigma: standard deviation of the Gaussian noise added to the inputs, in units of each input dimension's
            standard deviation (inputs are standardised first). The thesis uses ``1e-3`` on data in ``[0, 1]`` and
            advises ``sigma <~ 0.25`` quantisation steps (sec. 5.3, Fig. 5.11).
        label_smoothing: the smoothing ``a`` of the ``L_Y`` targets (paper: 0.05).
        mu_distance: initial pairwise distance of the class means in latent space (a few units).
        mu_lr_scale: the class means are stored divided by this factor, so Adam moves them this many times faster
            than the network weights (the authors' choice of a higher learning rate for ``mu``). A
            ``train.weight_decay`` would shrink the means too: leave it at 0.
        flow: the coupling flow (a dict overrides fields of ``DEFAULT_CLASSIFIER_FLOW``).
        train: the optimisation (a dict overrides fields of ``DEFAULT_CLASSIFIER_TRAIN``); its ``seed`` is replaced
            by the ``seed`` of :func:`fit_classifier`.

    Example:
        >>> cfg = ClassifierConfig.from_dict({"beta": 8, "flow": {"num_blocks": 2}, "train": {"epochs": 5}})
        >>> cfg.beta, cfg.flow.num_blocks, cfg.flow.hidden, cfg.train.epochs, cfg.resolved_beta(64)
        (8.0, 2, 128, 5, 8.0)
        >>> ClassifierConfig().resolved_beta(64) == DEFAULT_GAMMA * 64
        True
    """

    beta: float | None = None
    sigma: float = 1e-3
    label_smoothing: float = 0.05
    mu_distance: float = 3.0
    mu_lr_scale: float = 10.0
    flow: FlowConfig | dict = field(default_factory=lambda: DEFAULT_CLASSIFIER_FLOW)
    train: TrainConfig | dict = field(default_factory=lambda: DEFAULT_CLASSIFIER_TRAIN)

    def __post_init__(self):
        check_types(self)  # a JSON value of the wrong type is named here
        if self.beta is not None and not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"ClassifierConfig: beta must be a finite number >= 0 or None, got {self.beta}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"ClassifierConfig: sigma must be a positive finite number, got {self.sigma}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"ClassifierConfig: label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not (self.mu_distance > 0 and math.isfinite(self.mu_distance)):
            raise ValueError(f"ClassifierConfig: mu_distance must be positive and finite, got {self.mu_distance}")
        if not (self.mu_lr_scale > 0 and math.isfinite(self.mu_lr_scale)):
            raise ValueError(f"ClassifierConfig: mu_lr_scale must be positive and finite, got {self.mu_lr_scale}")
        if isinstance(self.flow, dict):
            object.__setattr__(self, "flow", override(DEFAULT_CLASSIFIER_FLOW, self.flow, "ClassifierConfig.flow"))
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", override(DEFAULT_CLASSIFIER_TRAIN, self.train,
                                                       "ClassifierConfig.train"))
        if not isinstance(self.flow, FlowConfig) or not isinstance(self.train, TrainConfig):
            raise TypeError("ClassifierConfig: flow must be a FlowConfig or a dict, train a TrainConfig or a dict")
        if self.flow.coupling != "affine":
            raise ValueError("ClassifierConfig: the IB-INN uses affine couplings (flow.coupling='affine')")

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        """Build from a (possibly nested) dict; unknown keys raise ``TypeError`` naming them."""
        return override(cls(), d, "ClassifierConfig")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved_beta(self, dim: int) -> float:
        """``beta``, or ``DEFAULT_GAMMA * dim`` when it is ``None``."""
        return float(DEFAULT_GAMMA * dim) if self.beta is None else float(self.beta)


def ib_loss(l_x: Tensor, l_y: Tensor, beta: float, dim: int) -> Tensor:
    """The rebalanced IB-INN loss ``2 / (1 + gamma) * (L_X / dim - gamma * L_Y)``, ``gamma = beta / dim`` (thesis
    eq. 5.17, paper eq. 9), elementwise.

    Example:
        >>> l_x, l_y = torch.tensor([10.0]), torch.tensor([-0.5])
        >>> float(ib_loss(l_x, l_y, beta=4.0, dim=4))  # gamma = 1: (10 / 4 + 0.5) * 2 / 2
        3.0
    """
    gamma = beta / dim
    return 2.0 / (1.0 + gamma) * (l_x / dim - gamma * l_y)


class IBINN(nn.Module):
    """The IB-INN generative classifier: standardisation, coupling flow ``g`` and the latent Gaussian mixture.

    Args:
        dim: input dimension ``d`` (at least 2).
        num_classes: number of classes ``C`` (at least 2).
        config: the :class:`ClassifierConfig` (flow, ``beta``, ``sigma``, label smoothing, means).
        log_priors: ``log p(y)`` ``(C,)`` (default uniform).
        mu_init: initial class means ``(C, d)`` (default: :func:`initial_means` from a fixed generator).
        reference_size: length of the buffer of in-distribution ``L_X`` values for :meth:`Classifier.ood_score`.

    ``losses(x, labels, noise)`` gives the per-row terms, ``loss`` the rebalanced training loss; the loss is
    computed in the standardised space (the standardisation's constant Jacobian does not change the gradients).
    """

    def __init__(self, dim: int, num_classes: int, config: ClassifierConfig, *, log_priors: Tensor | None = None,
                 mu_init: Tensor | None = None, reference_size: int = 0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"IBINN: dim must be >= 2 (pad 1-D inputs with a constant column), got {dim}")
        if num_classes < 2:
            raise ValueError(f"IBINN: num_classes must be >= 2, got {num_classes}")
        self.dim, self.num_classes, self.cfg = int(dim), int(num_classes), config
        self.beta = config.resolved_beta(dim)
        self.standardize = Standardize(dim)
        self.flow = CouplingFlow(dim, 0, config.flow)
        if mu_init is None:
            mu_init = initial_means(num_classes, dim, config.mu_distance, torch.Generator().manual_seed(0))
        self.mu_raw = nn.Parameter(torch.as_tensor(mu_init, dtype=torch.float32).clone() / config.mu_lr_scale)
        if log_priors is None:
            log_priors = torch.full((num_classes,), -math.log(num_classes))
        self.register_buffer("log_priors", torch.as_tensor(log_priors, dtype=torch.float32).clone())
        self.register_buffer("reference", torch.zeros(int(reference_size)))

    @property
    def mu(self) -> Tensor:
        """The class means ``(C, d)`` in latent space."""
        return self.mu_raw * self.cfg.mu_lr_scale

    def config(self) -> dict:
        """JSON description that rebuilds this (untrained) model with :meth:`from_config`."""
        return {"type": "ib_inn", "dim": self.dim, "num_classes": self.num_classes,
                "reference_size": int(self.reference.numel()), "classifier": self.cfg.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> IBINN:
        return cls(config["dim"], config["num_classes"], ClassifierConfig.from_dict(config["classifier"]),
                   reference_size=config["reference_size"])

    # -- the model ------------------------------------------------------------------------------------------------
    def latent(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z (N, d), log|det dz/du| (N,))`` for raw inputs ``x`` plus optional ``noise`` (standardised units)."""
        u = self.standardize(x)
        if noise is not None:
            u = u + noise
        return self.flow(u)

    def logits(self, z: Tensor) -> Tensor:
        """``-||z - mu_y||^2 / 2 + log p(y)`` ``(N, C)`` (eq. C.45's summands): ``log q(z|y) p(y)`` up to a constant."""
        d2 = (z[:, None, :] - self.mu[None]).pow(2).sum(-1)
        return -0.5 * d2 + self.log_priors

    def losses(self, x: Tensor, labels: Tensor | None = None, noise: Tensor | None = None) -> dict[str, Tensor]:
        """Per-row loss terms (nats, standardised space) for raw inputs ``x`` (N, d) and ``noise`` (N, d) or None.

        Returns ``L_X`` (eq. 5.10 with its constants), ``logits`` ``(N, C)`` and, with ``labels`` (N,), ``L_Y``
        (eq. 5.15 / C.47 with hard labels), ``L_Y_smooth`` (with label smoothing) and ``class_nll``
        (``-log q(u | y)``).
        """
        z, log_det = self.latent(x, noise)
        logits = self.logits(z)
        log_qz = torch.logsumexp(logits, dim=1) - 0.5 * self.dim * LOG_2PI
        out = {"L_X": -log_qz - log_det, "logits": logits}
        if labels is not None:
            log_post = torch.log_softmax(logits, dim=1) - self.log_priors  # log q(y|z) - log p(y)
            out["L_Y"] = log_post.gather(1, labels[:, None]).squeeze(1)
            a = self.cfg.label_smoothing
            out["L_Y_smooth"] = (1 - a) * out["L_Y"] + a * log_post.mean(1) if a > 0 else out["L_Y"]
            mu_y = self.mu[labels]
            out["class_nll"] = 0.5 * (z - mu_y).pow(2).sum(1) + 0.5 * self.dim * LOG_2PI - log_det
        return out

    def loss_rows(self, x: Tensor, labels: Tensor, noise: Tensor | None = None) -> tuple[Tensor, dict]:
        """The rebalanced IB loss per row (:func:`ib_loss` with smoothed ``L_Y``) and the terms it came from."""
        parts = self.losses(x, labels, noise)
        return ib_loss(parts["L_X"], parts["L_Y_smooth"], self.beta, self.dim), parts

    def noise(self, shape, generator: torch.Generator | None, device) -> Tensor:
        return self.cfg.sigma * torch.randn(shape, generator=generator, device=device)


def initial_means(num_classes: int, dim: int, distance: float, generator: torch.Generator) -> Tensor:
    """Initial class means ``(C, d)``: orthogonal directions (``C <= d``) or random unit directions (``C > d``),
    scaled to norm ``distance / sqrt(2)`` (pairwise distance ``distance`` when orthogonal)."""
    g = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    if num_classes <= dim:
        q, r = torch.linalg.qr(g)
        dirs = (q * torch.sign(torch.diagonal(r))[None, :]).T
    else:
        dirs = (g / g.norm(dim=0, keepdim=True)).T
    return (dirs * distance / math.sqrt(2)).to(torch.float32)


# -- the user-facing classifier ------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """A trained IB-INN generative classifier (what :func:`fit_classifier` returns and :func:`load_classifier` reads).

    All methods take inputs ``x`` ``(N, d)`` (tensors or arrays of real numbers), stream them in chunks of
    ``CHUNK_ROWS`` rows and return tensors on the classifier's device.
    """

    def __init__(self, model: IBINN, metadata: dict | None = None):
        super().__init__()
        self.model = model
        self.metadata = dict(metadata or {})

    @property
    def device(self) -> torch.device:
        return self.model.mu_raw.device

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def beta(self) -> float:
        return self.model.beta

    @property
    def class_priors(self) -> Tensor:
        """``p(y)`` ``(C,)`` used in Bayes' rule (the training label frequencies)."""
        return self.model.log_priors.exp()

    @property
    def history(self) -> list[dict]:
        """Per-epoch training records (kept in ``metadata["history"]``; survive save/load)."""
        return self.metadata.get("history", [])

    # -- checks ---------------------------------------------------------------------------------------------------
    def _inputs(self, x, name: str = "x") -> Tensor:
        return check_inputs(x, name, dim=self.dim).to(self.device)

    def _chunks(self, x: Tensor, fn, labels: Tensor | None = None) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                outs = [fn(x[i:i + CHUNK_ROWS], None if labels is None else labels[i:i + CHUNK_ROWS])
                        for i in range(0, x.shape[0], CHUNK_ROWS)]
        finally:
            self.model.train(was_training)
        return torch.cat(outs)

    # -- the public contract --------------------------------------------------------------------------------------
    def predict_proba(self, x) -> Tensor:
        """Class probabilities ``p(y | x)`` ``(N, C)`` by Bayes' rule with the class priors (the Jacobian cancels)."""
        x = self._inputs(x)
        return self._chunks(x, lambda xc, _: torch.softmax(self.model.logits(self.model.latent(xc)[0]), dim=1))

    def predict(self, x) -> Tensor:
        """The most probable class ``(N,)`` (int64)."""
        return self.predict_proba(x).argmax(1)

    def log_likelihood(self, x, y=None) -> Tensor:
        """``log q(x | y)`` ``(N,)`` in the units of ``x`` (the standardisation's Jacobian included); ``y``: one
        class for all rows or labels ``(N,)``; ``None`` gives the marginal ``log q(x) = log sum_y p(y) q(x|y)``."""
        x = self._inputs(x)
        labels = None if y is None else self._labels_for(y, x.shape[0])
        offset = self.model.standardize.log_abs_det()

        def one(xc, yc):
            parts = self.model.losses(xc, yc)
            return (-parts["L_X"] if yc is None else -parts["class_nll"]) + offset

        return self._chunks(x, one, labels)

    def latent(self, x) -> Tensor:
        """Latent codes ``z = g(s(x))`` ``(N, d)`` (no noise)."""
        x = self._inputs(x)
        return self._chunks(x, lambda xc, _: self.model.latent(xc)[0])

    def ood_score(self, x, method: str = "typicality") -> Tensor:
        """Out-of-distribution score ``(N,)``, higher = more out-of-distribution.

        ``"typicality"``: the typicality test on single inputs (thesis 5.3.2, 5.4.3), ``|L_X(x) - m|`` with ``m``
        the mean ``L_X`` of the in-distribution reference rows (nats). ``"quantile"``: the two-tailed quantile test of
        thesis 5.4.3, ``1 - p`` with ``p = 2 min(F(L_X), 1 - F(L_X))`` from the empirical distribution ``F`` of the
        reference values (equal quantiles on both sides); inputs beyond every reference value tie at the top.
        """
        if method not in OOD_METHODS:
            raise ValueError(f"method must be one of {OOD_METHODS}, got {method!r}")
        ref = self.model.reference
        if ref.numel() == 0:
            raise RuntimeError("this classifier holds no in-distribution reference for OoD scores")
        x = self._inputs(x)
        l_x = self._chunks(x, lambda xc, _: self.model.losses(xc)["L_X"])
        if method == "typicality":
            return (l_x - ref.mean()).abs()
        n = ref.numel()
        below = torch.searchsorted(ref, l_x, right=True).to(torch.float64)  # reference values <= L_X
        above = n - torch.searchsorted(ref, l_x, right=False).to(torch.float64)  # reference values >= L_X
        p = torch.clamp(2 * torch.minimum(below, above) / n, max=1.0)
        return (1 - p).to(l_x.dtype)

    def sample(self, y, n: int, *, seed: int | None = None) -> Tensor:
        """``n`` samples ``(n, d)`` of ``x`` from class ``y`` (``z ~ N(mu_y, I)``, ``x = s^-1(g^-1(z))``)."""
        y = self._labels_for(y, 1)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(check_seed(seed))
        mu = self.model.mu[y[0]].detach()
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad():
                for start in range(0, int(n), CHUNK_ROWS):
                    m = min(CHUNK_ROWS, int(n) - start)
                    z = mu + torch.randn(m, self.dim, generator=gen, device=self.device)
                    u, _ = self.model.flow.inverse(z)
                    out.append(self.model.standardize.inverse(u))
        finally:
            self.model.train(was_training)
        return torch.cat(out)

    def information_plane(self) -> dict:
        """Per-epoch information-plane estimates from the training history (nats; thesis Prop. 4, NOTES):
        ``I_XZ = L_X - d log sqrt(2 pi e sigma^2)`` (an upper bound of ``I(X; Z_eps)``) and ``I_YZ = E[L_Y]`` with
        unsmoothed labels (a lower bound of ``I(Y; Z_eps)``, at most ``H(Y)``)."""
        d, sigma = self.dim, self.model.cfg.sigma
        const = d * 0.5 * math.log(2 * math.pi * math.e * sigma**2)
        rows = [h for h in self.history if "L_X" in h and "L_Y" in h]
        h_y = float(-(self.class_priors * self.model.log_priors).sum())
        return {"epoch": [int(h["epoch"]) for h in rows], "I_XZ": [h["L_X"] - const for h in rows],
                "I_YZ": [h["L_Y"] for h in rows], "H_Y": h_y, "beta": self.beta, "gamma": self.beta / d}

    def _labels_for(self, y, n: int) -> Tensor:
        if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
            y = [int(y)]
        elif isinstance(y, Tensor) and y.ndim == 0:
            y = y.reshape(1)
        labels = class_labels(y, "y", num_classes=self.num_classes)
        if labels.numel() == 1 and n != 1:
            labels = labels.expand(n)
        elif labels.numel() != n:
            raise ValueError(f"y must be one class or {n} labels (one per row of x), got {labels.numel()}")
        return labels.to(self.device)

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write weights plus a JSON header (``torch.load(weights_only=True)``, no pickle) atomically through
        ``<path>.tmp``; an existing ``path`` is refused (``FileExistsError``) unless ``overwrite``."""
        header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "package_version": __version__,
                  "model": self.model.config(), "metadata": self.metadata}
        return write_model_file(path, header, self.model.state_dict(), overwrite=overwrite)

    def __repr__(self) -> str:
        return (f"Classifier(method='ib_inn', dim={self.dim}, classes={self.num_classes}, beta={self.beta:g}, "
                f"device={self.device})")


# -- input checks ---------------------------------------------------------------------------------------------------
def check_inputs(x, name: str = "x", *, dim: int | None = None) -> Tensor:
    """``x`` as a float32 ``(N, d)`` tensor of finite real numbers; ``TypeError`` / ``ValueError`` naming ``name``."""
    t = real_tensor(name, x)
    want = f"(N, {dim})" if dim is not None else "(N, d)"
    if t.ndim != 2 or (dim is not None and t.shape[1] != dim):
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).any(1).nonzero()[:5].flatten().tolist()
        raise ValueError(f"{name} contains NaN or inf (rows {bad}; values beyond float32's range count as inf)")
    return t


# -- training --------------------------------------------------------------------------------------------------------
def fit_classifier(x, labels, *, beta: float | None = None, seed: int = 0, config=None,
                   device: str | torch.device = "auto", show_progress: bool = True,
                   checkpoint_dir: str | Path | None = None, validation_fraction: float = 0.1,
                   num_classes: int | None = None) -> Classifier:
    """Train an IB-INN generative classifier on inputs ``x`` ``(N, d)`` and integer labels ``(N,)``.

    Args:
        x: inputs ``(N, d)``, ``d >= 2`` (tensor or array of real numbers).
        labels: class indices ``(N,)`` in ``[0, C)``, every class present.
        beta: the IB trade-off (overrides ``config.beta``; ``None`` keeps it, whose default is
            ``DEFAULT_GAMMA * d``).
        seed: root of the seed tree (``sbi_inn.simulation.SeedTree``): the validation split (``split`` stream),
            initial weights and class means (``init``), shuffling and input noise (``train``).
        config: a :class:`ClassifierConfig` or a dict of its fields.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        show_progress: a tqdm bar over the epochs.
        checkpoint_dir: directory for a resumable checkpoint (a call with the same directory resumes; a directory
            of a fit with other data, configuration or seed is refused naming what differs).
        validation_fraction: share of each class held out for early stopping and for the OoD reference.
        num_classes: ``C`` (default ``max(labels) + 1``); every class must have examples.

    Returns:
        The trained :class:`Classifier`; ``metadata`` holds the configuration, ``beta``, the data sizes and the
        per-epoch history.
    """
    x = check_inputs(x, "x")
    if x.shape[1] < 2:
        raise ValueError(f"x must have at least 2 columns (the coupling flow splits them), got shape "
                         f"{tuple(x.shape)}; pad 1-D inputs with a constant column")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 2):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    y = class_labels(labels, "labels", num_classes=num_classes)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have one entry per row of x ({x.shape[0]}), got {y.shape[0]}")
    C = int(num_classes) if num_classes is not None else int(y.max()) + 1
    counts = torch.bincount(y, minlength=C)
    if C < 2:
        raise ValueError("labels hold a single class; a classifier needs at least 2")
    if (counts == 0).any():
        raise ValueError(f"labels: class(es) {(counts == 0).nonzero().flatten().tolist()[:10]} of 0..{C - 1} have "
                         "no examples")
    seed = check_seed(seed)
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) or \
            not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}")
    cfg = as_config(config, ClassifierConfig, "config")
    if beta is not None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
            raise TypeError(f"beta must be a number, got {beta!r}")
        cfg = dataclasses.replace(cfg, beta=float(beta))
    d = x.shape[1]
    cfg = dataclasses.replace(cfg, beta=cfg.resolved_beta(d))  # stored resolved: a saved model keeps its beta
    dev = resolve_device(device)
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file, not a directory")

    tree = SeedTree(seed)
    train_idx, val_idx = stratified_split(y, validation_fraction, tree.numpy("split"))
    w_seed, mu_seed = tree.seeds("init", n=2)
    ref_rows = val_idx if len(val_idx) else train_idx
    ref_rows = ref_rows[np.linspace(0, len(ref_rows) - 1, min(len(ref_rows), REFERENCE_MAX_ROWS)).astype(int)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(w_seed)
        model = IBINN(d, C, cfg, log_priors=torch.log(counts.double() / counts.sum()).float(),
                      mu_init=initial_means(C, d, cfg.mu_distance, torch.Generator().manual_seed(mu_seed)),
                      reference_size=len(ref_rows))
    xt, yt = x[torch.from_numpy(train_idx)], y[torch.from_numpy(train_idx)]
    model.standardize.fit(xt)
    model.to(dev)
    train_data = (xt.to(dev), yt.to(dev))
    val_data = (x[torch.from_numpy(val_idx)].to(dev), y[torch.from_numpy(val_idx)].to(dev)) if len(val_idx) else None
    train_cfg = dataclasses.replace(cfg.train, seed=seed)

    def loss_fn(m: IBINN, batch, step: Step):
        xb, yb = batch
        rows, parts = m.loss_rows(xb, yb, m.noise(xb.shape, step.generator, xb.device))
        with torch.no_grad():
            acc = (parts["logits"].argmax(1) == yb).float().mean()
            logged = {k: float(parts[k].mean()) for k in ("L_X", "L_Y", "class_nll")}
        return rows.mean(), {**logged, "train_acc": float(acc)}

    def val_fn(m: IBINN, batch, step: Step):
        xb, yb = batch
        return m.loss_rows(xb, yb, m.noise(xb.shape, step.generator, xb.device))[0], {}

    fingerprint = jsonable({"method": "ib_inn", "config": {**cfg.to_dict(), "train": train_cfg.to_dict()},
                             "beta": model.beta, "seed": seed, "validation_fraction": validation_fraction,
                             "data": _data_fingerprint(x, y), "model": model.config()})
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive_lock(Path(checkpoint_dir) / "checkpoint.pt", what="checkpoint"))
        history = train(model, loss_fn, train_data, val_data, train_cfg, device=dev,
                        checkpoint_path=checkpoint_path(checkpoint_dir, fingerprint), show_progress=show_progress,
                        val_loss_fn=val_fn)
    clf = Classifier(model)
    model.eval()
    with torch.no_grad():
        ref = clf._chunks(x[torch.from_numpy(ref_rows)].to(dev), lambda xc, _: model.losses(xc)["L_X"])
    model.reference.copy_(ref.sort().values)
    clf.metadata = jsonable({
        "method": "ib_inn", "seed": seed, "sbi_inn_version": __version__, "device": str(dev), "beta": model.beta,
        "gamma": model.beta / d, "config": cfg.to_dict(), "train_config": train_cfg.to_dict(),
        "data": {"num_rows": int(x.shape[0]), "num_train": len(train_idx), "num_val": len(val_idx),
                 "class_counts": counts.tolist(), "ood_reference": "validation" if len(val_idx) else "training"},
        "train_seconds": time.perf_counter() - t0, "epochs_run": len(history), "history": history})
    return clf


def stratified_split(labels: Tensor, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, validation)`` row indices holding out ``round(fraction * n_c)`` rows of each class ``c``
    (never a class's last row, so every class trains).

    Example:
        >>> train_idx, val_idx = stratified_split(torch.tensor([0] * 10 + [1] * 5), 0.2, np.random.default_rng(0))
        >>> len(train_idx), len(val_idx)
        (12, 3)
    """
    y = labels.numpy()
    val = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = min(int(round(fraction * len(rows))), len(rows) - 1) if fraction > 0 else 0
        val.append(rng.permutation(rows)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=int)
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def _data_fingerprint(x: Tensor, y: Tensor) -> dict:
    import hashlib

    h = hashlib.sha256()
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    return {"rows": int(x.shape[0]), "dim": int(x.shape[1]), "sha256": h.hexdigest()}


# -- loading ---------------------------------------------------------------------------------------------------------
def _check_header(header, state, path) -> None:
    """Refuse a classifier header that is incomplete or asks for more than the file's weights could fill (the model is
    built from the header before the weights are loaded; see ``sbi_inn.posterior._check_header``)."""
    model = header.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{path}: the classifier header lacks 'model'")
    if model.get("type") != "ib_inn":
        raise ValueError(f"{path}: unknown classifier model type {model.get('type')!r}; known: ['ib_inn']")
    bounds = HeaderBounds(path, state)
    dim = bounds.size("dim", model.get("dim"), 2)
    classes = bounds.size("num_classes", model.get("num_classes"), 2)
    bounds.size("reference_size", model.get("reference_size"), 0)
    if dim * classes > bounds.weights:
        raise ValueError(f"{path}: header fields model.dim x model.num_classes = {dim * classes} class-mean entries "
                         f"exceed the {bounds.weights} weights the file holds; the header is damaged or crafted")
    cfg = model.get("classifier")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("flow"), dict):
        raise ValueError(f"{path}: the classifier header lacks 'model.classifier.flow'")
    bounds.flow("classifier.flow", cfg["flow"])
    try:
        ClassifierConfig.from_dict(cfg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: header field model.classifier is invalid: {err}") from None


def load_classifier(path: str | Path, device: str | torch.device = "auto") -> Classifier:
    """Load a classifier written by :meth:`Classifier.save` onto ``device`` (weights-only unpickling: no code runs).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupted, not an sbi_inn classifier, from another format version, or its header
            is damaged or crafted (sizes beyond what the stored weights could fill are refused before building).
    """
    header, state = read_model_file(path, format_name=FORMAT_NAME, format_version=FORMAT_VERSION, what="classifier")
    _check_header(header, state, path)
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: header field 'metadata' must be a JSON object, got {type(metadata).__name__}")
    model = IBINN.from_config(header["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the stored configuration: {err}") from err
    return Classifier(model, metadata).to(resolve_device(device))
