"""The bidirectional INN of thesis ch. 4: an invertible map ``x -> [y, z]`` trained on the forward process.

One unconditional coupling flow ``f`` of nominal width ``N`` maps (standardised) parameters ``x`` to the
(standardised) observation ``y`` and latent variables ``z ~ N(0, I_K)``; its exact inverse ``g = f^-1`` samples the
posterior, ``x = g(y*, z)`` (eqs. 4.1-4.2). When ``D < M + K`` the input is padded with zeros to ``N``, when
``M + K < D`` the output is (thesis 4.1.1)::

    input  (N): [ x (D) | x-padding (N - D) ]
    output (N): [ y (M) | z (K) | y-padding (N - M - K) ]

Training (thesis 4.1.2-4.1.3, one optimizer step on the sum of all terms, forward and backward passes together):

- ``L_y = E ||f_y(x) - y||^2`` (``y_loss="mse"``, the default: squared loss; one-hot labels are regressed
  directly, as in thesis 4.2.1), or a cross-entropy for label observations (``y_loss="ce"``, below);
- ``L_z = MMD([f_y(x), f_z(x)], [y, z])`` with ``z ~ N(0, I)`` and the gradient blocked through ``f_y(x)``;
- ``L_x = MMD(g_x(y, z), x)``: backward samples for the batch's ``y`` and fresh ``z`` against the batch's ``x``;
- ``L_pad``: squared loss pulling the y-padding outputs and the x-padding of backward samples to zero;
- ``L_rec = E ||g_x(f_y(x), f_z(x), noise) - x||^2``: an inverse pass with fresh noise in the y-padding, so the
  padding carries no information;
- optionally (ours, ``w_kl > 0``) ``L_kl``, the reverse KL divergence between the backward marginal ``q(x)`` and the
  prior, exact by the change of variables (:func:`inn_losses`); it needs the prior's density and no x-padding.

All distances live in the standardised space: ``x`` is mapped to an unconstrained space with the prior's support
transform (so samples always lie inside the support) and standardised, ``y`` is standardised. During training the
x-padding inputs and the y-padding of inverse passes carry Gaussian noise of std ``pad_noise`` (so the network
learns to ignore them, thesis 4.1.2 b), and ``y`` gets noise of std ``y_noise`` (standardised units; it smooths
discrete observations such as one-hot labels for the MMD); when sampling, both paddings are exactly 0.

Label observations, ``y_loss="ce"`` (thesis 4.1.2: "L_y can be any supervised loss, e.g. squared loss for
regression or cross-entropy for classification"). Observations are label vectors ``y (n, M)``, one-hot or class
probabilities (entries in [0, 1], rows summing to 1; anything else raises ``ValueError``). Forward and inverse
directions must agree on what a label *is* in y-space, so one encoding serves everywhere an observation enters the
network: the ``L_z`` reference sample ``[y, z]``, the ``L_x`` backward pass, and ``condition`` at sampling time
(``Posterior.sample((n,), one_hot)`` works unchanged)::

    q = (1 - eps) y + eps / M              label smoothing, eps = label_smoothing in (0, 1): q > 0, log q finite
    t = log q - mean_k log q               centred log-probabilities: the y-space value (then standardised)

The forward output ``f_y(x)``, with the standardisation undone, is read as logits ``l`` and

    L_y = CE(q, softmax(l)) + mean_k(l)^2 = -sum_k q_k log_softmax(l)_k + mean_k(l)^2.

The CE alone is minimal iff ``softmax(l) = q``, i.e. ``l = log q + c`` for *any* shift ``c``; the penalty picks
``c = 0``, so the forward optimum is ``l = t``, exactly the value the inverse pass is fed for that label. (Merely
centring ``l`` before the CE would change nothing, since ``log_softmax`` is shift-invariant, and would leave ``c``
free: the mean direction of ``f_y`` would be an unpenalised output coordinate, like y-padding without ``L_pad``,
free to carry information about ``x`` that the sampler, always fed ``c = 0``, never supplies.) The minimum of this
``L_y`` is the entropy ``H(q) > 0`` (0.20 nats for ``M = 4``, ``eps = 0.05``), not 0 as for the squared loss.

References:
    thesis ``002_e718d3c52e134117.txt`` 4.1 (method; 4.1.2 for the choice of ``L_y``), B.1 (proof that
    ``L_y = L_z = 0`` gives the posterior, and ``L_x`` then vanishes too), B.5.1-B.5.2 (architectures), B.5.4
    (kernels); label smoothing as in 5.3 (alpha = 0.05, after Szegedy et al., 2016).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sbi_inn.flows import CouplingFlow, FlowConfig
from sbi_inn.losses import DEFAULT_WIDTHS, KERNELS, mmd
from sbi_inn.posterior import Posterior
from sbi_inn.train import TrainConfig, batch_size_for, num_batches, train
from sbi_inn.transforms import Standardize, SupportTransform

Y_LOSSES = ("mse", "ce")
# tolerances of the label check (y_loss="ce"): entries may leave [0, 1] by LABEL_ATOL, row sums miss 1 by LABEL_SUM_ATOL
LABEL_ATOL = 1e-6
LABEL_SUM_ATOL = 1e-3


def check_labels(y: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``y`` is ``(n, num_classes)`` label vectors: finite, in [0, 1], rows sum to 1."""
    what = f"y_loss='ce' needs label observations (one-hot or class probabilities) of shape (n, {num_classes})"
    if y.ndim != 2 or y.shape[1] != num_classes:
        raise ValueError(f"{what}, got shape {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        rows = (~torch.isfinite(y)).any(-1).nonzero()[:5].flatten().tolist()
        raise ValueError(f"{what}; rows {rows} contain NaN or inf")
    outside = ((y < -LABEL_ATOL) | (y > 1 + LABEL_ATOL)).any(-1)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise ValueError(f"{what}: entries must lie in [0, 1], but {int(outside.sum())} rows do not (row {i}: "
                         f"{y[i].tolist()})")
    sums = y.sum(-1)
    off = (sums - 1).abs() > LABEL_SUM_ATOL
    if off.any():
        i = int(off.nonzero()[0])
        raise ValueError(f"{what}: every row must sum to 1, but {int(off.sum())} rows do not (row {i} sums to "
                         f"{float(sums[i]):.6g})")


def smoothed_labels(y: Tensor, smoothing: float) -> Tensor:
    """Label-smoothed targets ``q = (1 - eps) y + eps / M`` ``(n, M)`` of label vectors ``y`` ``(n, M)``.

    ``y`` is clipped to [0, 1] and renormalised first (it was checked to within ``LABEL_*_ATOL``), so ``q`` is a
    probability vector with every entry ``>= eps / M > 0``.
    """
    y = y.clamp(0.0, 1.0)
    y = y / y.sum(-1, keepdim=True)
    return (1.0 - smoothing) * y + smoothing / y.shape[-1]


def encode_labels(y: Tensor, smoothing: float) -> Tensor:
    """The y-space value of label vectors ``y`` ``(n, M)``: centred log-probabilities ``log q - mean_k log q``.

    For one-hot ``y`` the true class gets ``(M - 1)/M * r`` and the others ``-r/M``, ``r = log(1 + (1 - eps) M / eps)``
    (``r = log 77`` for ``M = 4``, ``eps = 0.05``). This is the forward optimum of :func:`label_loss` (module
    docstring), so forward and inverse passes see the same value for a label.
    """
    logq = torch.log(smoothed_labels(y, smoothing))
    return logq - logq.mean(-1, keepdim=True)


def label_loss(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    """``L_y`` for ``y_loss="ce"``: ``CE(q, softmax(logits)) + mean_k(logits)^2``, averaged over rows (a scalar).

    Args:
        logits: ``f_y(x)`` with the standardisation undone, ``(n, M)``.
        y: label vectors ``(n, M)``; ``q`` = :func:`smoothed_labels`.

    The penalty on the logits' mean pins the shift that the CE cannot see (module docstring): the minimiser is then
    ``logits = encode_labels(y)``, where the gradient vanishes. Its weight (1, in nats like the CE) does not move the
    optimum; it only sets how fast the shift is pulled to 0.
    """
    ce = -(smoothed_labels(y, smoothing) * torch.log_softmax(logits, -1)).sum(-1)
    return (ce + logits.mean(-1) ** 2).mean()


# thesis B.5.2 (6 coupling blocks of 3 layers, leaky ReLU) with a soft clamp of 1.0, stable at lr 3e-3
DEFAULT_INN_FLOW = FlowConfig(num_blocks=6, hidden=128, num_layers=3, activation="leaky_relu", clamp=1.0)
DEFAULT_INN_TRAIN = TrainConfig(batch_size=500, lr=3e-3, lr_final=1e-5)


@dataclass(frozen=True)
class INNConfig:
    """Settings of the bidirectional INN (architecture, loss weights, optimisation).

    Attributes:
        latent_dim: ``K``; ``None`` picks ``D - M`` when ``deterministic`` and that is >= 1, else ``D``.
        deterministic: whether ``y = s(x)`` is deterministic (then ``y`` removes ``M`` degrees of freedom).
        nominal_dim: ``N >= max(D, M + K)``; ``None`` uses ``max(D, M + K, 2)`` (more padding widens the flow).
        w_y, w_z, w_x, w_pad, w_rec: weights of ``L_y``, ``L_z``, ``L_x``, ``L_pad`` and ``L_rec`` (thesis 4.1.3:
            chosen so that the terms have about equal effect).
        x_ramp_epochs: ``w_x`` grows linearly from 0 over this many epochs (0: constant), letting the forward
            losses shape the model before ``L_x`` pulls towards the prior. Validation always uses the full ``w_x``.
        kernel, widths: MMD kernel (``sbi_inn.losses.KERNELS``) and widths for ``L_z`` (standardised units).
        kernel_x, widths_x: the same for ``L_x`` (``None``: as for ``L_z``).
        y_noise: std of the Gaussian noise added to standardised ``y`` during training.
        pad_noise: std of the noise written into padding dimensions during training.
        y_loss: ``"mse"`` (squared loss on standardised ``y``, the default) or ``"ce"`` (label observations:
            cross-entropy on logits, y-space = centred log of the smoothed labels; module docstring, thesis 4.1.2).
        label_smoothing: ``eps`` in ``(0, 1)`` of ``y_loss="ce"`` (ignored by ``"mse"``).
        w_support: weight of ``L_support`` (ours, not in the thesis; 0 disables it): backward samples drawn from
            over-dispersed latents ``support_latent_scale * z`` (for the first quarter of each batch's ``y``) are
            kept inside ``|u| <= support_radius``
            (standardised unconstrained units) by a squared hinge. ``L_x``, an MMD, barely sees the rare latent
            tails, which can map far outside the prior, where ``f_y`` was never trained against the simulator.
        support_radius, support_latent_scale: the hinge radius and the latent over-dispersion of ``L_support``.
        w_kl: weight of ``L_kl`` (ours, not in the thesis; 0 disables it), the reverse KL divergence
            ``KL(q(x) || p(x))`` between the marginal of the backward samples ``x^ = g(y, z)`` (``y`` from the data,
            ``z ~ N(0, I)``) and the prior, in nats (see :func:`inn_losses`). Where ``L_x`` (an MMD) barely feels a
            few samples far outside the prior, ``L_kl`` charges each its prior log-density. Needs the prior's
            log-density (``fit_inn(prior_log_prob=...)``; ``fit_posterior`` passes ``prior.log_prob``) and no
            x-padding (``N = D``, e.g. a deterministic simulator with ``K = D - M``).
        flow: the coupling-flow architecture (default: thesis B.5.2 with a soft clamp of 1, stable at lr 3e-3).
        train: optimisation settings (Adam, decaying learning rate, clipping; ``sbi_inn.train``).

    The defaults were tuned in short CPU runs on the inverse-kinematics problem (the IK study raises ``w_y`` to 100
    and widens the subnets; the Gaussian-mixture study uses ``w_y = 10``): ``L_y`` and the MMD terms then have
    comparable effect (thesis 4.1.3), and 2.0 soft clamps diverged at learning rates above 1e-3.

    With ``y_loss="ce"`` raise ``w_y`` about tenfold (the Gaussian-mixture test uses 100 where the squared loss uses
    10): near its optimum the CE constrains the logits of the classes a label does not carry only weakly (curvature
    about ``eps / M``), so at the squared-loss weight ``f_y`` stays 0.4-0.7 standardised units off the y-space value
    in a 150-step run (0.07 with ``"mse"``), and ``L_z``, which matches ``[f_y, f_z]`` against ``[y, z]``, fails too.
    """

    latent_dim: int | None = None
    deterministic: bool = False
    nominal_dim: int | None = None
    w_y: float = 30.0
    w_z: float = 50.0
    w_x: float = 50.0
    w_pad: float = 10.0
    w_rec: float = 10.0
    x_ramp_epochs: int = 0
    kernel: str = "imq"
    widths: tuple[float, ...] = DEFAULT_WIDTHS
    kernel_x: str | None = None
    widths_x: tuple[float, ...] | None = None
    y_noise: float = 1e-3
    pad_noise: float = 1e-2
    y_loss: str = "mse"
    label_smoothing: float = 0.05
    w_support: float = 0.0
    w_kl: float = 0.0
    support_radius: float = 3.5
    support_latent_scale: float = 1.5
    flow: FlowConfig | dict = field(default_factory=lambda: DEFAULT_INN_FLOW)
    train: TrainConfig | dict = field(default_factory=lambda: DEFAULT_INN_TRAIN)

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(float(h) for h in self.widths))
        if self.widths_x is not None:
            object.__setattr__(self, "widths_x", tuple(float(h) for h in self.widths_x))
        for name in ("w_y", "w_z", "w_x", "w_pad", "w_rec", "y_noise", "pad_noise", "w_support", "w_kl"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"INNConfig: {name} must be >= 0, got {getattr(self, name)}")
        for kernel in (self.kernel, self.kernel_x):
            if kernel is not None and kernel not in KERNELS:
                raise ValueError(f"INNConfig: unknown kernel {kernel!r}; known: {sorted(KERNELS)}")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise ValueError(f"INNConfig: latent_dim must be >= 1, got {self.latent_dim}")
        if self.x_ramp_epochs < 0:
            raise ValueError(f"INNConfig: x_ramp_epochs must be >= 0, got {self.x_ramp_epochs}")
        if not (self.support_radius > 0 and self.support_latent_scale > 0):
            raise ValueError(f"INNConfig: support_radius and support_latent_scale must be > 0, got "
                             f"{self.support_radius}, {self.support_latent_scale}")
        if self.y_loss not in Y_LOSSES:
            raise ValueError(f"INNConfig: y_loss must be one of {Y_LOSSES}, got {self.y_loss!r}")
        if not 0 < self.label_smoothing < 1:
            raise ValueError(f"INNConfig: label_smoothing must lie in (0, 1), got {self.label_smoothing}")
        # a partial dict overrides fields of this class's default flow / optimisation, not the classes' defaults
        if isinstance(self.flow, dict):
            object.__setattr__(self, "flow", dataclasses.replace(DEFAULT_INN_FLOW, **self.flow))
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", dataclasses.replace(DEFAULT_INN_TRAIN, **self.train))

    @classmethod
    def from_dict(cls, d: dict) -> INNConfig:
        """Build from a (possibly nested) dict; unknown keys raise ``TypeError``."""
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dims(self, param_dim: int, obs_dim: int) -> tuple[int, int]:
        """``(K, N)`` for ``D = param_dim`` and ``M = obs_dim``."""
        k = self.latent_dim
        if k is None:
            k = param_dim - obs_dim if self.deterministic and param_dim - obs_dim >= 1 else param_dim
        n = max(param_dim, obs_dim + k, 2) if self.nominal_dim is None else self.nominal_dim
        if n < max(param_dim, obs_dim + k):
            raise ValueError(f"INNConfig: nominal_dim {n} < max(D={param_dim}, M + K={obs_dim + k})")
        return k, n


def _bound_list(t: Tensor) -> list:
    return [float(v) if math.isfinite(float(v)) else None for v in t]


def _bound_tensor(values: Sequence, fill: float) -> Tensor:
    return torch.tensor([fill if v is None else float(v) for v in values], dtype=torch.float32)


class BidirectionalINN(nn.Module):
    """Invertible ``[x, pad] <-> [y, z, pad]`` with standardisation and support transform as buffers.

    Args:
        param_dim: ``D``. obs_dim: ``M``. latent_dim: ``K``. nominal_dim: ``N >= max(D, M + K)``.
        flow: coupling-flow architecture.
        lo, hi: prior support bounds ``(D,)`` (``None`` or inf where unbounded).
        pad_noise, y_noise: training noise levels (see the module docstring); kept with the model.
        y_loss, label_smoothing: ``"mse"`` (y-space = ``y``) or ``"ce"`` (y-space = centred log of the smoothed
            label vectors, :func:`encode_labels`); kept with the model, since sampling must encode ``y`` the same way.

    Implements the model protocol of ``sbi_inn.posterior``; the condition is the standardised y-space value of the
    observation (:meth:`encode_y`).

    Example:
        >>> inn = BidirectionalINN(2, 4, latent_dim=2, nominal_dim=8, flow=FlowConfig(num_blocks=2, hidden=16))
        >>> inn.sample_given(inn.condition(torch.eye(4)[:1], None), 5, torch.Generator()).shape
        torch.Size([5, 1, 2])
    """

    def __init__(self, param_dim: int, obs_dim: int, *, latent_dim: int, nominal_dim: int,
                 flow: FlowConfig | dict | None = None, lo: Tensor | None = None, hi: Tensor | None = None,
                 pad_noise: float = 1e-2, y_noise: float = 1e-3, y_loss: str = "mse", label_smoothing: float = 0.05):
        super().__init__()
        if nominal_dim < max(param_dim, obs_dim + latent_dim):
            raise ValueError(f"BidirectionalINN: nominal_dim {nominal_dim} < max(D={param_dim}, "
                             f"M + K={obs_dim + latent_dim})")
        if y_loss not in Y_LOSSES:
            raise ValueError(f"BidirectionalINN: y_loss must be one of {Y_LOSSES}, got {y_loss!r}")
        if y_loss == "ce" and obs_dim < 2:
            raise ValueError(f"BidirectionalINN: y_loss='ce' needs label vectors of M >= 2 classes, got M={obs_dim}")
        if not 0 < label_smoothing < 1:
            raise ValueError(f"BidirectionalINN: label_smoothing must lie in (0, 1), got {label_smoothing}")
        self.y_loss, self.label_smoothing = str(y_loss), float(label_smoothing)
        self.D, self.M, self.K, self.N = int(param_dim), int(obs_dim), int(latent_dim), int(nominal_dim)
        self.flow_config = flow if isinstance(flow, FlowConfig) else FlowConfig(**(flow or {}))
        self.pad_noise, self.y_noise = float(pad_noise), float(y_noise)
        self.flow = CouplingFlow(self.N, 0, self.flow_config)
        lo = torch.full((self.D,), -math.inf) if lo is None else torch.as_tensor(lo, dtype=torch.float32)
        hi = torch.full((self.D,), math.inf) if hi is None else torch.as_tensor(hi, dtype=torch.float32)
        self.support = SupportTransform(lo, hi)
        self.x_norm = Standardize(self.D)
        self.y_norm = Standardize(self.M)
        # optimizer steps taken so far (drives the L_x ramp; a buffer, so checkpoints resume it)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

    # -- construction / persistence ---------------------------------------------------------------------------
    @property
    def param_dim(self) -> int:
        return self.D

    def config(self) -> dict:
        return {"type": "inn", "param_dim": self.D, "obs_dim": self.M, "latent_dim": self.K,
                "nominal_dim": self.N, "flow": self.flow_config.to_dict(), "lo": _bound_list(self.support.lo),
                "hi": _bound_list(self.support.hi), "pad_noise": self.pad_noise, "y_noise": self.y_noise,
                "y_loss": self.y_loss, "label_smoothing": self.label_smoothing}

    @classmethod
    def from_config(cls, config: dict) -> BidirectionalINN:
        """Rebuild from :meth:`config` (configs saved before ``y_loss`` existed give ``"mse"``)."""
        c = dict(config)
        if c.pop("type", "inn") != "inn":
            raise ValueError(f"BidirectionalINN.from_config: not an 'inn' config: {config.get('type')!r}")
        lo, hi = _bound_tensor(c.pop("lo"), -math.inf), _bound_tensor(c.pop("hi"), math.inf)
        return cls(c.pop("param_dim"), c.pop("obs_dim"), lo=lo, hi=hi, flow=FlowConfig(**c.pop("flow")), **c)

    @torch.no_grad()
    def fit_normalization(self, x: Tensor, y: Tensor) -> BidirectionalINN:
        """Fit the standardisation of ``x`` (in the unconstrained space) and of ``y`` (in y-space) to training data."""
        self.x_norm.fit(self.support.inverse(x))
        self.y_norm.fit(self.y_space(y))
        return self

    # -- observations: y-space and its standardisation -----------------------------------------------------------
    def y_space(self, y: Tensor) -> Tensor:
        """Observations ``(n, M)`` -> y-space ``(n, M)``: ``y`` itself (``"mse"``), or for ``"ce"`` the centred log
        of the smoothed labels (:func:`encode_labels`; non-label ``y`` raises ``ValueError``)."""
        if self.y_loss == "mse":
            return y
        check_labels(y, self.M)
        return encode_labels(y, self.label_smoothing)

    def encode_y(self, y: Tensor) -> Tensor:
        """Observations ``(n, M)`` -> the standardised y-space value ``(n, M)`` that the inverse pass is fed."""
        return self.y_norm(self.y_space(y))

    def logits(self, fy: Tensor) -> Tensor:
        """Forward output ``f_y`` ``(n, M)`` (standardised) -> y-space ``(n, M)``: the logits for ``"ce"``."""
        return self.y_norm.inverse(fy)

    # -- the two directions in the internal (standardised, padded) space ------------------------------------------
    def encode_x(self, x: Tensor) -> Tensor:
        """Parameters ``(n, D)`` -> standardised unconstrained coordinates ``(n, D)``."""
        return self.x_norm(self.support.inverse(x))

    def decode_x(self, u: Tensor) -> Tensor:
        """Standardised unconstrained coordinates ``(n, D)`` -> parameters inside the support ``(n, D)``."""
        return self.support(self.x_norm.inverse(u))

    def prior_log_prob_internal(self, v: Tensor, prior_log_prob: Callable[[Tensor], Tensor]) -> Tensor:
        """Log-density ``(n,)`` at internal coordinates ``v`` ``(n, D)`` of a prior whose log-density on ``x`` is
        ``prior_log_prob``: ``log p(x) + log|dx/du| + log|du/dv|`` with ``u = x_norm^-1(v)``, ``x = T(u)``.

        ``x`` is evaluated strictly inside a bounded support: a saturated logit (``|u| > 17`` in float32) rounds onto
        the bound, where e.g. ``torch.distributions.Uniform`` has no density (or refuses the value)."""
        u = self.x_norm.inverse(v)
        lo, hi = self.support.lo, self.support.hi
        x = torch.minimum(torch.maximum(self.support(u), torch.nextafter(lo, hi)), torch.nextafter(hi, lo))
        return prior_log_prob(x) + self.support.log_abs_det(u) - self.x_norm.log_abs_det()

    def pad_x(self, u: Tensor, noise: float = 0.0) -> Tensor:
        """``[u, pad]`` of width ``N`` (pad: zeros, or Gaussian noise of std ``noise``)."""
        return torch.cat([u, noise * torch.randn(u.shape[0], self.N - self.D, device=u.device, dtype=u.dtype)], 1)

    def join_yz(self, y: Tensor, z: Tensor, noise: float = 0.0) -> Tensor:
        """``[y, z, pad]`` of width ``N``."""
        pad = noise * torch.randn(y.shape[0], self.N - self.M - self.K, device=y.device, dtype=y.dtype)
        return torch.cat([y, z, pad], 1)

    def split_yz(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Output ``(n, N)`` -> ``(y (n, M), z (n, K), pad (n, N - M - K))``."""
        return v[:, : self.M], v[:, self.M : self.M + self.K], v[:, self.M + self.K :]

    def forward(self, x_padded: Tensor) -> tuple[Tensor, Tensor]:
        """``f``: ``[x, pad] (n, N) -> ([y, z, pad] (n, N), log|det J| (n,))`` in the internal space."""
        return self.flow(x_padded)

    def inverse(self, yz_padded: Tensor) -> tuple[Tensor, Tensor]:
        """``g = f^-1``: ``[y, z, pad] (n, N) -> ([x, pad] (n, N), log|det J_g| (n,))`` in the internal space."""
        return self.flow.inverse(yz_padded)

    # -- posterior protocol ---------------------------------------------------------------------------------------
    def condition(self, y: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Standardised y-space values ``(B, M)`` of observations ``(B, M)`` (:meth:`encode_y`)."""
        if sizes is not None:
            raise ValueError("BidirectionalINN does not take set-valued observations")
        return self.encode_y(y)

    def latent_to_x(self, c: Tensor, z: Tensor) -> Tensor:
        """Parameters ``x = g_x(y, z)`` ``(n, D)`` for conditions ``c = condition(y)`` and latents ``z``, each with
        ``n`` rows, y-padding 0 (e.g. to map a grid of ``z``, thesis Fig. 4.5)."""
        return self.decode_x(self.inverse(self.join_yz(c, z))[0][:, : self.D])

    def sample_given(self, c: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` posterior samples per condition: ``x = g(y, z)``, ``z ~ N(0, I)``, padding 0; ``(n, B, D)``."""
        B = c.shape[0]
        z = torch.randn(n, B, self.K, generator=generator, device=c.device, dtype=c.dtype).reshape(n * B, self.K)
        return self.latent_to_x(c.repeat(n, 1), z).reshape(n, B, self.D)

    def log_prob_given(self, x: Tensor, c: Tensor) -> Tensor:
        """Not available: the bidirectional INN gives samples, not densities.

        The sampler pushes ``N(0, I_K)`` through ``z -> g_x(y, z, 0)``, a map ``R^K -> R^D``, and no configuration
        makes that an exact change of variables:

        - ``K < D`` (a deterministic forward model, e.g. inverse kinematics with ``K = D - M``): ``q(x|y)`` lives on
          a ``K``-dimensional manifold and has no density on ``R^D`` (thesis 4.1.1: the true posterior is singular
          too, which is why this model is not trained by maximum likelihood).
        - ``K = D`` (e.g. the Gaussian mixture, where ``y`` is a discrete label): this needs x-padding
          (``N >= M + K > D``). The full map ``[x, pad] <-> [y, z, pad]`` is bijective, but its restriction to
          ``y = y*``, zero padding, read on the ``x`` coordinates only, is a bijection only when training has made
          the padding carry no information exactly; in practice it folds (the Jacobian ``dg_x/dz`` changes sign),
          so ``log N(z) - log|det dg_x/dz|`` at one preimage is not the sampler's density, and the forward pass does
          not even give that preimage (``f([x, 0]) != [y*, z, 0]``).

        Use samples (``sample``, ``map`` with mean-shift, the diagnostics), or ``method="cinn"`` for densities.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(
            f"log_prob is not available for the bidirectional INN (method='inn'): its posterior q(x|y) is the "
            f"push-forward of a {self.K}-dimensional latent through g(y, z) and has no exact density for "
            f"D={self.D} parameters (K < D: a singular posterior on a manifold, thesis 4.1.1; K = D: the padded "
            "map restricted to fixed y is not an exact bijection). Use samples (sample, map with the mean-shift "
            "method) or method='cinn', which has an exact density.")


def inn_losses(model: BidirectionalINN, x: Tensor, y: Tensor, config: INNConfig,
               prior_log_prob: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """The unweighted loss terms of thesis 4.1.2 for a batch ``x (B, D)``, ``y (B, M)`` (see module docstring).

    ``L_kl`` (``config.w_kl > 0``, ``prior_log_prob`` maps parameters ``(n, D)`` to the prior's log-density
    ``(n,)``): the backward samples ``v^ = g(y, z, pad)`` of the ``L_x`` pass have the density
    ``q(v^) = p_in(y, z, pad) |det J_g|^-1`` (change of variables, no x-padding), and ``p_in`` does not depend on the
    weights because its inputs are drawn, not generated, so

        KL(q || p) = E[-log|det J_g(y, z, pad)| - log p(v^)] + const,

    with ``p`` the prior in the internal coordinates (:meth:`BidirectionalINN.prior_log_prob_internal`); ``L_kl`` is
    that expectation over the batch.

    With ``model.y_loss == "ce"`` the observations enter every pass as :meth:`BidirectionalINN.encode_y` (the
    centred log of the smoothed labels, standardised) and ``L_y`` is :func:`label_loss` on the logits
    ``model.logits(f_y(x))``; the forward optimum is then the same value the backward passes are fed.

    Returns:
        dict with scalar tensors ``y``, ``z``, ``x``, ``pad``, ``rec``, ``support`` and ``kl`` (zero where a term
        does not apply; ``support`` and ``kl`` are only computed when their weight is positive).
    """
    if (config.y_loss, config.label_smoothing) != (model.y_loss, model.label_smoothing) and (
            config.y_loss == "ce" or model.y_loss == "ce"):
        raise ValueError(f"inn_losses: config has y_loss={config.y_loss!r}, label_smoothing={config.label_smoothing} "
                         f"but the model was built with y_loss={model.y_loss!r}, "
                         f"label_smoothing={model.label_smoothing}")
    D, M, K, N = model.D, model.M, model.K, model.N
    kernel_x = config.kernel_x or config.kernel
    widths_x = config.widths_x or config.widths
    u = model.encode_x(x)
    ys = model.encode_y(y)
    ys = ys + config.y_noise * torch.randn_like(ys)
    zero = u.new_zeros(())

    # forward pass: L_y, L_z (gradient blocked through f_y), padding of the output kept at zero
    out = model(model.pad_x(u, config.pad_noise))[0]
    fy, fz, fpad = model.split_yz(out)
    if model.y_loss == "ce":
        l_y = label_loss(model.logits(fy), y, model.label_smoothing)
    else:
        l_y = ((fy - ys) ** 2).sum(-1).mean()
    z = torch.randn(u.shape[0], K, device=u.device, dtype=u.dtype)
    l_z = mmd(torch.cat([fy.detach(), fz], 1), torch.cat([ys, z], 1), kernel=config.kernel, widths=config.widths)
    l_pad = (fpad**2).sum(-1).mean() if N > M + K else zero

    # backward pass: L_x on backward samples for the batch's y; their x-padding kept at zero
    zb = torch.randn(u.shape[0], K, device=u.device, dtype=u.dtype)
    xb, logdet_b = model.inverse(model.join_yz(ys, zb, config.pad_noise))
    l_x = mmd(xb[:, :D], u, kernel=kernel_x, widths=widths_x)
    l_kl = zero
    if config.w_kl > 0:
        _check_kl(model, prior_log_prob)
        l_kl = -(logdet_b + model.prior_log_prob_internal(xb, prior_log_prob)).mean()
    if N > D:
        l_pad = l_pad + (xb[:, D:] ** 2).sum(-1).mean()

    # reconstruction with fresh noise in the y-padding: the padding must carry no information
    if N > M + K:
        xr = model.inverse(model.join_yz(fy.detach(), fz.detach(), config.pad_noise))[0]
        l_rec = ((xr[:, :D] - u) ** 2).sum(-1).mean()
    else:
        l_rec = zero  # exactly zero for an invertible map without padding

    # L_support (ours): backward samples from over-dispersed latents stay within support_radius standardised units
    l_support = zero
    if config.w_support > 0:  # on a quarter of the batch: the extra inverse pass then costs ~5 % of a step
        nt = max(1, u.shape[0] // 4)
        zt = config.support_latent_scale * torch.randn(nt, K, device=u.device, dtype=u.dtype)
        xt = model.inverse(model.join_yz(ys[:nt], zt, config.pad_noise))[0][:, :D]
        l_support = torch.relu(xt.abs() - config.support_radius).square().sum(-1).mean()
    return {"y": l_y, "z": l_z, "x": l_x, "pad": l_pad, "rec": l_rec, "support": l_support, "kl": l_kl}


def _check_kl(model: BidirectionalINN, prior_log_prob) -> None:
    if prior_log_prob is None or not callable(prior_log_prob):
        raise ValueError("INNConfig.w_kl > 0 needs the prior's log-density: fit_inn(..., prior_log_prob="
                         "prior.log_prob)")
    if model.N != model.D:
        raise ValueError(f"INNConfig.w_kl > 0 needs an INN without x-padding (nominal_dim = D = {model.D}), got "
                         f"nominal_dim {model.N}: the backward samples then have no density on the parameters alone")


def make_loss_fn(config: INNConfig, steps_per_epoch: int, *, ramp: bool = True,
                 prior_log_prob: Callable[[Tensor], Tensor] | None = None):
    """``loss_fn(model, (x, y)) -> (loss, parts)`` for ``sbi_inn.train.train``; the weighted sum of all terms
    (``prior_log_prob`` is passed to :func:`inn_losses` for ``L_kl``).

    With ``ramp`` the ``L_x`` weight follows ``config.x_ramp_epochs`` (counted by ``model.train_steps``, which the
    loss advances on every training-mode call with gradients enabled); without it the full ``w_x`` is used.
    """

    def loss_fn(model: BidirectionalINN, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
        x, y = batch[0], batch[1]
        terms = inn_losses(model, x, y, config, prior_log_prob)
        w_x = config.w_x
        if ramp and config.x_ramp_epochs > 0:
            w_x *= min(1.0, float(model.train_steps) / (config.x_ramp_epochs * steps_per_epoch))
        if model.training and torch.is_grad_enabled():
            model.train_steps += 1
        loss = (config.w_y * terms["y"] + config.w_z * terms["z"] + w_x * terms["x"]
                + config.w_pad * terms["pad"] + config.w_rec * terms["rec"] + config.w_support * terms["support"]
                + config.w_kl * terms["kl"])
        return loss, {f"L_{k}": float(v.detach()) for k, v in terms.items()}

    return loss_fn


def build_inn(param_dim: int, obs_dim: int, config: INNConfig, *, prior_bounds=None, seed: int = 0):
    """A fresh :class:`BidirectionalINN` for ``config`` (weights seeded by ``seed``; global RNG untouched)."""
    k, n = config.dims(param_dim, obs_dim)
    lo, hi = (None, None) if prior_bounds is None else prior_bounds
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BidirectionalINN(param_dim, obs_dim, latent_dim=k, nominal_dim=n, flow=config.flow, lo=lo, hi=hi,
                                pad_noise=config.pad_noise, y_noise=config.y_noise, y_loss=config.y_loss,
                                label_smoothing=config.label_smoothing)


def fit_inn(x_train: Tensor, y_train: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None, *,
            prior_bounds: tuple[Tensor, Tensor] | None = None, param_names: Sequence[str] | None = None,
            config: INNConfig | dict | None = None, device: str | torch.device = "cpu", seed: int = 0,
            show_progress: bool = True, checkpoint_path=None,
            resample: Callable[[int], tuple[Tensor, Tensor]] | None = None,
            prior_log_prob: Callable[[Tensor], Tensor] | None = None) -> Posterior:
    """Train a bidirectional INN on simulated pairs and return it as a :class:`~sbi_inn.posterior.Posterior`.

    Args:
        x_train, y_train: parameters ``(n, D)`` (inside the prior support) and observations ``(n, M)`` (label
            vectors for ``config.y_loss == "ce"``, else ``ValueError``).
        x_val, y_val: a validation split (optional; used for early stopping and the best-epoch weights).
        prior_bounds: ``(lo, hi)`` support bounds ``(D,)`` of the prior (``None``: unbounded).
        param_names: names of the ``D`` parameters (default ``x0, x1, ...``).
        config: an :class:`INNConfig` or a dict of its fields (unknown keys raise).
        device: where to train (a resolved ``torch.device`` or string; ``"auto"`` is resolved by the caller).
        seed: seeds the weight initialisation and replaces ``config.train.seed`` (shuffling, loss noise).
        show_progress: a progress bar over epochs.
        checkpoint_path: checkpoint written every epoch; an existing one is resumed.
        resample: train from the simulator directly: ``resample(epoch) -> (x, y)`` gives fresh pairs for every
            epoch (e.g. :func:`simulation_stream`), deterministic in ``epoch``; ``x_train, y_train`` then only fit
            the standardisation (pass ``resample(0)``).
        prior_log_prob: the prior's log-density, parameters ``(n, D)`` -> ``(n,)`` (e.g. ``prior.log_prob``);
            needed by ``config.w_kl > 0``, unused otherwise.

    Returns:
        The trained posterior; ``metadata`` holds the config, data sizes and the per-epoch history.
    """
    if config is None:
        config = INNConfig()
    elif isinstance(config, dict):
        config = INNConfig.from_dict(config)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=int(seed)))
    device = torch.device(device)
    x_train = torch.as_tensor(x_train, dtype=torch.float32)
    y_train = torch.as_tensor(y_train, dtype=torch.float32)
    if x_train.ndim != 2 or y_train.ndim != 2 or x_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"fit_inn: need x (n, D) and y (n, M) with equal n, got {tuple(x_train.shape)}, "
                         f"{tuple(y_train.shape)}")
    D, M = x_train.shape[1], y_train.shape[1]
    names = list(param_names) if param_names is not None else [f"x{i}" for i in range(D)]
    model = build_inn(D, M, config, prior_bounds=prior_bounds, seed=seed)
    if config.w_kl > 0:
        _check_kl(model, prior_log_prob)
    model.fit_normalization(x_train, y_train)
    model.to(device)
    val = None
    if x_val is not None and y_val is not None and len(x_val) > 0:
        val = (torch.as_tensor(x_val, dtype=torch.float32).to(device),
               torch.as_tensor(y_val, dtype=torch.float32).to(device))
    steps = num_batches(x_train.shape[0], batch_size_for(config.train, x_train.shape[0]))
    if resample is None:
        train_data = (x_train.to(device), y_train.to(device))
    else:
        def train_data(epoch: int) -> tuple[Tensor, Tensor]:
            x, y = resample(epoch)
            return (torch.as_tensor(x, dtype=torch.float32).to(device),
                    torch.as_tensor(y, dtype=torch.float32).to(device))
    history = train(model, make_loss_fn(config, steps, prior_log_prob=prior_log_prob), train_data, val,
                    config.train, device=device, checkpoint_path=checkpoint_path, show_progress=show_progress,
                    val_loss_fn=make_loss_fn(config, steps, ramp=False, prior_log_prob=prior_log_prob))
    metadata = {"method": "inn", "config": config.to_dict(), "num_train": int(x_train.shape[0]),
                "fresh_simulations_per_epoch": resample is not None,
                "num_val": 0 if val is None else int(val[0].shape[0]), "history": history}
    return Posterior(model, param_names=names, obs_shape=(M,), metadata=metadata)


def simulation_stream(simulate: Callable[..., Tensor], sample_prior: Callable[..., Tensor], num: int,
                      seed: int = 0, accept: Callable[[Tensor], Tensor] | None = None
                      ) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``epoch -> (x (num, D), y (num, M))``: fresh simulations for every epoch, the same ones for the same epoch.

    For cheap simulators (inverse kinematics: 50 M simulations/s) training on new draws each epoch removes
    overfitting in sparsely sampled regions at no cost. ``simulate(x, generator=g)`` and ``sample_prior(n,
    generator=g)`` follow the ``simulators`` contract.

    ``accept(y) -> (n,)`` probabilities in ``[0, 1]`` keeps each simulation with a probability that depends on its
    observation alone. The training pairs then follow ``p(x) p(y | x) a(y) / Z``, whose conditional is still the
    posterior ``p(x | y)``: only the mixture of observations changes, e.g. towards rare ones (``a`` largest where
    ``p(y)`` is small) that the prior would seldom simulate. Simulations are drawn in rounds until ``num`` are kept.
    """
    def draw(epoch: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 7_919 * int(epoch) + 101) % (2**63 - 1))
        if accept is None:
            x = sample_prior(num, generator=gen)
            return x, simulate(x, generator=gen)
        xs, ys, kept = [], [], 0
        for _ in range(10_000):
            x = sample_prior(num, generator=gen)
            y = simulate(x, generator=gen)
            p = accept(y)
            if p.shape != (num,) or not bool(((p >= 0) & (p <= 1)).all()):
                raise ValueError(f"simulation_stream: accept(y) must return ({num},) probabilities in [0, 1]")
            keep = torch.rand(num, generator=gen) < p
            xs.append(x[keep])
            ys.append(y[keep])
            kept += int(keep.sum())
            if kept >= num:
                return torch.cat(xs)[:num], torch.cat(ys)[:num]
        raise RuntimeError(f"simulation_stream: accept(y) kept only {kept} of {10_000 * num} simulations")

    return draw


def plan_epochs(config: INNConfig, x: Tensor, y: Tensor, budget_s: float, *, overhead: float = 1.1,
                prior_log_prob: Callable[[Tensor], Tensor] | None = None) -> int:
    """Epochs of ``config.train.batch_size`` steps over ``x`` ``(N, D)``, ``y`` ``(N, M)`` that fit in ``budget_s``.

    Times ten optimisation steps (after two warm-up steps) of a fresh model and scales by ``overhead`` for
    validation. Used to give ``TrainConfig.epochs`` a wall-clock budget: the learning rate decays per epoch, so a
    run cut short by ``max_time`` would never reach ``lr_final``.
    """
    model = build_inn(x.shape[1], y.shape[1], config).fit_normalization(x, y)
    loss_fn = make_loss_fn(config, 1, prior_log_prob=prior_log_prob)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    bs = batch_size_for(config.train, len(x))
    for i in range(12):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model, (x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs]))[0].backward()
        opt.step()
    per_step = (time.perf_counter() - t0) / 10
    return max(1, int(budget_s / (per_step * num_batches(len(x), bs) * overhead)))
