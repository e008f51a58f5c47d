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
  prior, exact by the change of variables (``sbi_inn.losses.inn_losses``); it needs the prior's density and no
  x-padding.

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
    thesis sec. 4.1 (method, eqs. 4.1-4.2), sec. 4.1.2 (the losses and the choice of ``L_y``); app. B.1 (proof that
    ``L_y = L_z = 0`` gives the posterior, and ``L_x`` then vanishes too), app. B.5.1-B.5.2 (architectures),
    app. B.5.4 (kernels); label smoothing as in sec. 5.3 (alpha = 0.05, after Szegedy et al., 2016).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sbi_inn.checks import check_types
from sbi_inn.config import override
from sbi_inn.flows import CouplingFlow, FlowConfig
from sbi_inn.losses import DEFAULT_WIDTHS, KERNELS, Y_LOSSES, check_labels, encode_labels
from sbi_inn.train import TrainConfig
from sbi_inn.transforms import Standardize, SupportTransform

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
            ``z ~ N(0, I)``) and the prior, in nats (``sbi_inn.losses.inn_losses``). Where ``L_x`` (an MMD) barely
            feels a few samples far outside the prior, ``L_kl`` charges each its prior log-density. Needs the prior's
            log-density (``fit_posterior`` passes ``prior.log_prob``; a simulation file alone has none) and no
            x-padding (``N = D``, e.g. a deterministic simulator with ``K = D - M``).
        flow: the coupling-flow architecture (default: thesis B.5.2 with a soft clamp of 1, stable at lr 3e-3).
        train: optimisation settings (Adam, decaying learning rate, clipping; ``sbi_inn.train``).

    The default weights, tuned on the inverse-kinematics problem, give ``L_y`` and the MMD terms comparable effect
    (thesis sec. 4.1.3); the IK study raises ``w_y`` to 100 and widens the subnets, the Gaussian-mixture study uses
    ``w_y = 10``. The soft clamp is 1 because a clamp of 2 diverged at learning rates above 1e-3 (the tuning runs are
    in ``benchmarks/results/design_notes.md``).

    With ``y_loss="ce"`` raise ``w_y`` about tenfold (the Gaussian-mixture test uses 100 where the squared loss uses
    10): near its optimum the CE constrains the logits of the classes a label does not carry only weakly (curvature
    about ``eps / M``), so at the squared-loss weight ``f_y`` stays far from the y-space value, and ``L_z``, which
    matches ``[f_y, f_z]`` against ``[y, z]``, fails too (measurements: ``benchmarks/results/design_notes.md``).
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
        check_types(self)  # a JSON value of the wrong type is named here
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
            object.__setattr__(self, "flow", override(DEFAULT_INN_FLOW, self.flow, "INNConfig.flow"))
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", override(DEFAULT_INN_TRAIN, self.train, "INNConfig.train"))

    @classmethod
    def from_dict(cls, d: dict) -> INNConfig:
        """Build from a (possibly nested) dict; unknown keys raise ``TypeError`` naming them."""
        return override(cls(), d, "INNConfig")

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


def _bound_tensor(values: Sequence | None, fill: float) -> Tensor | None:
    if values is None:
        return None
    return torch.tensor([fill if v is None else float(v) for v in values], dtype=torch.float32)


def _noise(like: Tensor, width: int, std: float, generator: torch.Generator | None) -> Tensor:
    """``(n, width)`` padding: zeros, or N(0, std^2) noise from ``generator`` (required then: no global RNG)."""
    if std == 0 or width == 0:
        return like.new_zeros(like.shape[0], width)
    if generator is None:
        raise ValueError("padding noise needs a torch.Generator (the library never draws from the global RNG)")
    return std * torch.randn(like.shape[0], width, generator=generator, device=like.device, dtype=like.dtype)


class BidirectionalINN(nn.Module):
    """Invertible ``[x, pad] <-> [y, z, pad]`` with standardisation and support transform as buffers.

    Args:
        param_dim: ``D``. obs_dim: ``M``. latent_dim: ``K``. nominal_dim: ``N >= max(D, M + K)``.
        flow: coupling-flow architecture.
        support_low, support_high: prior support bounds ``(D,)`` (``None`` or inf where unbounded), as in
            ``sbi_inn.cinn.ConditionalINN``.
        pad_noise, y_noise: training noise levels (see the module docstring); kept with the model.
        y_loss, label_smoothing: ``"mse"`` (y-space = ``y``) or ``"ce"`` (y-space = centred log of the smoothed
            label vectors, ``sbi_inn.losses.encode_labels``); kept with the model, since sampling must encode ``y``
            the same way.

    Implements the model protocol of ``sbi_inn.posterior``; the condition is the standardised y-space value of the
    observation (:meth:`encode_y`).

    Example:
        >>> inn = BidirectionalINN(2, 4, latent_dim=2, nominal_dim=8, flow=FlowConfig(num_blocks=2, hidden=16))
        >>> inn.sample_given(inn.condition(torch.eye(4)[:1], None), 5, torch.Generator()).shape
        torch.Size([5, 1, 2])
    """

    def __init__(self, param_dim: int, obs_dim: int, *, latent_dim: int, nominal_dim: int,
                 flow: FlowConfig | dict | None = None, support_low: Tensor | None = None,
                 support_high: Tensor | None = None,
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
        lo = torch.full((self.D,), -math.inf) if support_low is None else torch.as_tensor(support_low,
                                                                                             dtype=torch.float32)
        hi = torch.full((self.D,), math.inf) if support_high is None else torch.as_tensor(support_high,
                                                                                          dtype=torch.float32)
        self.support = SupportTransform(lo, hi)
        self.x_standardize = Standardize(self.D)
        self.y_standardize = Standardize(self.M)

    # -- construction / persistence ---------------------------------------------------------------------------
    @property
    def param_dim(self) -> int:
        return self.D

    def config(self) -> dict:
        return {"type": "inn", "param_dim": self.D, "obs_dim": self.M, "latent_dim": self.K,
                "nominal_dim": self.N, "flow": self.flow_config.to_dict(),
                "support_low": _bound_list(self.support.lo), "support_high": _bound_list(self.support.hi),
                "pad_noise": self.pad_noise, "y_noise": self.y_noise, "y_loss": self.y_loss,
                "label_smoothing": self.label_smoothing}

    @classmethod
    def from_config(cls, config: dict) -> BidirectionalINN:
        """Rebuild from :meth:`config` (configs saved before ``y_loss`` existed give ``"mse"``)."""
        c = dict(config)
        if c.pop("type", "inn") != "inn":
            raise ValueError(f"BidirectionalINN.from_config: not an 'inn' config: {config.get('type')!r}")
        lo = _bound_tensor(c.pop("support_low", c.pop("lo", None)), -math.inf)  # "lo"/"hi": files before 0.2
        hi = _bound_tensor(c.pop("support_high", c.pop("hi", None)), math.inf)
        return cls(c.pop("param_dim"), c.pop("obs_dim"), support_low=lo, support_high=hi,
                   flow=FlowConfig(**c.pop("flow")), **c)

    @torch.no_grad()
    def fit_standardization(self, x: Tensor, y: Tensor, sizes: Tensor | None = None) -> BidirectionalINN:
        """Fit the standardisation of ``x`` (in the unconstrained space) and of ``y`` (in y-space) to training data."""
        if sizes is not None:
            raise ValueError("BidirectionalINN does not take set-valued observations; use method='cinn'")
        self.x_standardize.fit(self.support.inverse(x))
        self.y_standardize.fit(self.y_space(y))
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # files of sbi_inn 0.1: a training-step counter, and the standardisations named x_norm / y_norm
        state_dict.pop(prefix + "train_steps", None)
        for key in [k for k in state_dict if k.startswith((prefix + "x_norm.", prefix + "y_norm."))]:
            state_dict[key.replace("_norm.", "_standardize.", 1)] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- observations: y-space and its standardisation -----------------------------------------------------------
    def y_space(self, y: Tensor) -> Tensor:
        """Observations ``(n, M)`` -> y-space ``(n, M)``: ``y`` itself (``"mse"``), or for ``"ce"`` the centred log
        of the smoothed labels (``sbi_inn.losses.encode_labels``; non-label ``y`` raises ``ValueError``)."""
        if self.y_loss == "mse":
            return y
        check_labels(y, self.M)
        return encode_labels(y, self.label_smoothing)

    def encode_y(self, y: Tensor) -> Tensor:
        """Observations ``(n, M)`` -> the standardised y-space value ``(n, M)`` that the inverse pass is fed."""
        return self.y_standardize(self.y_space(y))

    def logits(self, fy: Tensor) -> Tensor:
        """Forward output ``f_y`` ``(n, M)`` (standardised) -> y-space ``(n, M)``: the logits for ``"ce"``."""
        return self.y_standardize.inverse(fy)

    # -- the two directions in the internal (standardised, padded) space ------------------------------------------
    def encode_x(self, x: Tensor) -> Tensor:
        """Parameters ``(n, D)`` -> standardised unconstrained coordinates ``(n, D)``."""
        return self.x_standardize(self.support.inverse(x))

    def decode_x(self, u: Tensor) -> Tensor:
        """Standardised unconstrained coordinates ``(n, D)`` -> parameters inside the support ``(n, D)``."""
        return self.support(self.x_standardize.inverse(u))

    def prior_log_prob_internal(self, v: Tensor, prior_log_prob: Callable[[Tensor], Tensor]) -> Tensor:
        """Log-density ``(n,)`` at internal coordinates ``v`` ``(n, D)`` of a prior whose log-density on ``x`` is
        ``prior_log_prob``: ``log p(x) + log|dx/du| + log|du/dv|`` with ``u = x_standardize^-1(v)``, ``x = T(u)``.

        ``x`` is evaluated strictly inside a bounded support: a saturated logit (``|u| > 17`` in float32) rounds onto
        the bound, where e.g. ``torch.distributions.Uniform`` has no density (or refuses the value)."""
        u = self.x_standardize.inverse(v)
        lo, hi = self.support.lo, self.support.hi
        x = torch.minimum(torch.maximum(self.support(u), torch.nextafter(lo, hi)), torch.nextafter(hi, lo))
        return prior_log_prob(x) + self.support.log_abs_det(u) - self.x_standardize.log_abs_det()

    def pad_x(self, u: Tensor, noise: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """``[u, pad]`` of width ``N`` (pad: zeros, or Gaussian noise of std ``noise`` drawn from ``generator``)."""
        return torch.cat([u, _noise(u, self.N - self.D, noise, generator)], 1)

    def join_yz(self, y: Tensor, z: Tensor, noise: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """``[y, z, pad]`` of width ``N`` (pad as in :meth:`pad_x`)."""
        return torch.cat([y, z, _noise(y, self.N - self.M - self.K, noise, generator)], 1)

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


def build_inn(param_dim: int, obs_dim: int, config: INNConfig, *, support_low=None, support_high=None,
              seed: int = 0) -> BidirectionalINN:
    """A fresh :class:`BidirectionalINN` for ``config`` (weights seeded by ``seed``; global RNG untouched)."""
    k, n = config.dims(param_dim, obs_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BidirectionalINN(param_dim, obs_dim, latent_dim=k, nominal_dim=n, flow=config.flow,
                                support_low=support_low, support_high=support_high,
                                pad_noise=config.pad_noise, y_noise=config.y_noise, y_loss=config.y_loss,
                                label_smoothing=config.label_smoothing)
