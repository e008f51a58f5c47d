"""The IB-INN model: a coupling flow with a Gaussian-mixture latent and its information-bottleneck loss (thesis ch. 5;
IB-INN paper sec. 3).

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

The user-facing classifier (prediction, OoD scores, fitting, saving) is :mod:`sbi_inn.classifier`.

References:
    thesis sec. 5.2 (eqs. 5.8, 5.10, 5.15-5.17), 5.3 (label smoothing, loss rebalancing, sigma), app. C.2 (loss
    implementation); IB-INN paper sec. 3 (eqs. 2, 4, 5, 7, 8, 9).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sbi_inn.checks import check_types
from sbi_inn.config import override
from sbi_inn.flows import CouplingFlow, FlowConfig
from sbi_inn.train import TrainConfig
from sbi_inn.transforms import LOG_2PI, Standardize

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

