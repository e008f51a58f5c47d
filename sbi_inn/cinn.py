"""The conditional invertible neural network (cINN) posterior model of thesis ch. 3.

A cINN learns ``q(x | y)`` as a normalising flow over the parameters whose every coupling block receives the
summary ``c = phi(y)`` of the observation (thesis sec. 3.2, eq. 3.10; conditioning network, sec. 3.4). It is
trained by conditional maximum likelihood (eq. 3.8) and gives both exact densities and fast sampling.

The pipeline from parameters ``x`` (inside the prior's support) to the latent ``z`` is::

    x --support.inverse--> u (unconstrained) --standardise--> v --flow(. ; c)--> z ~ N(0, I)

so ``log q(x | y) = log N(z) + log|dz/dv| + log|dv/du| - log|dx/du|`` (eq. 3.5 with the Jacobians of the fixed
transforms), and samples ``x = T(u)`` lie inside the support by construction. Parameter and observation
standardisation constants are buffers fitted on the training data (:meth:`ConditionalINN.fit_standardization`), so
``.to(device)`` moves everything.

One-dimensional parameters (``D = 1``) cannot be split by a coupling block. Rather than padding with a noise
dimension (whose marginal density would need an integral), the flow is then an exact 1-D conditional flow:
``num_blocks`` layers, each a conditional affine map followed by a conditional monotone rational-quadratic spline
(Durkan et al. 2019) on ``[-B, B]`` with identity tails, all parameters predicted from ``c`` by MLPs of the
``FlowConfig`` width and depth (:class:`ConditionalSpline1d`).

References:
    thesis sec. 3.1 (eqs. 3.5, 3.8), sec. 3.2 (eq. 3.10), sec. 3.4 (conditioning network), sec. 3.5 (eq. 3.13),
    sec. 3.8.6 (eq. 3.14); Durkan et al. (2019), "Neural spline flows" (the 1-D flow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sbi_inn.flows import ACTIVATIONS, CouplingFlow, FlowConfig, rq_spline
from sbi_inn.summary import DeepSetSummary, MLPSummary, mlp
from sbi_inn.transforms import LinearGaussian, Standardize, SupportTransform, standard_normal_log_prob

SUMMARY_KINDS = ("mlp", "deepset", "none")
PRECONDITIONS = ("none", "shift", "linear")
DEFAULT_SUMMARY_DIM = 32


# -- exact 1-D conditional flow ---------------------------------------------------------------------------------
class ConditionalSpline1d(nn.Module):
    """Exact conditional flow ``R -> R`` for one-dimensional parameters, with the :class:`CouplingFlow` contract.

    Each of ``config.num_blocks`` layers maps ``v -> w = v * exp(s~) + t`` (``s~`` soft-clamped as in eq. 3.13)
    and then applies :func:`rq_spline` with ``bins`` bins on ``[-bound, bound]``; ``s, t`` and the spline
    parameters are predicted from the condition ``c``. Last layers start at zero, so a fresh flow is the identity.
    """

    def __init__(self, cond_dim: int, config: FlowConfig | None = None, bins: int = 8, bound: float = 5.0):
        super().__init__()
        config = config or FlowConfig()
        if cond_dim < 1:
            raise ValueError("ConditionalSpline1d: needs a condition (cond_dim >= 1)")
        self.dim, self.cond_dim, self.config, self.bins, self.bound = 1, cond_dim, config, bins, bound
        self.nets = nn.ModuleList()
        for _ in range(config.num_blocks):
            net = mlp(cond_dim, 3 * bins + 1, config.hidden, config.num_layers, config.activation)
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
            self.nets.append(net)

    def _params(self, net: nn.Module, c: Tensor):
        p = net(c)
        alpha = self.config.clamp
        s = alpha * torch.tanh(p[:, 0] / alpha)
        t = p[:, 1]
        K = self.bins
        return s, t, p[:, 2 : 2 + K], p[:, 2 + K : 2 + 2 * K], p[:, 2 + 2 * K :]

    def _check(self, x: Tensor, c: Tensor) -> None:
        if (x.ndim != 2 or x.shape[1] != 1 or c is None or c.ndim != 2 or c.shape[1] != self.cond_dim
                or c.shape[0] < 1 or x.shape[0] % c.shape[0]):
            got = None if c is None else tuple(c.shape)
            raise ValueError(f"ConditionalSpline1d: need x (N, 1) and c (N, {self.cond_dim}) or (B, {self.cond_dim}) "
                             f"with B dividing N, got {tuple(x.shape)} and {got}")

    def _params_rows(self, net: nn.Module, c: Tensor, n_rows: int):
        """Layer parameters per row: computed once per condition, repeated over the ``(n, B)`` row layout."""
        params = self._params(net, c)
        reps = n_rows // c.shape[0]
        return params if reps == 1 else tuple(p.repeat(reps, *([1] * (p.ndim - 1))) for p in params)

    def forward(self, x: Tensor, c: Tensor, *, jac: bool = True) -> tuple[Tensor, Tensor]:
        # ``jac`` is accepted for the CouplingFlow contract; the log-determinant is a by-product here, always returned
        self._check(x, c)
        v, logdet = x[:, 0], torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for net in self.nets:
            s, t, w_raw, h_raw, d_raw = self._params_rows(net, c, x.shape[0])
            v = v * torch.exp(s) + t
            v, ld = rq_spline(v, w_raw, h_raw, d_raw, self.bound)
            logdet = logdet + s + ld
        return v[:, None], logdet

    def inverse(self, z: Tensor, c: Tensor, *, jac: bool = True) -> tuple[Tensor, Tensor]:
        self._check(z, c)
        v, logdet = z[:, 0], torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for net in reversed(self.nets):
            s, t, w_raw, h_raw, d_raw = self._params_rows(net, c, z.shape[0])
            v, ld = rq_spline(v, w_raw, h_raw, d_raw, self.bound, inverse=True)
            v = (v - t) * torch.exp(-s)
            logdet = logdet + ld - s
        return v[:, None], logdet


# -- bounds <-> JSON ----------------------------------------------------------------------------------------------
def _bounds_to_json(t: Tensor) -> list[float | None]:
    """Finite bounds as floats, infinite ones as ``None`` (JSON has no inf)."""
    return [float(v) if math.isfinite(float(v)) else None for v in t]


def _bounds_from_json(values: Sequence[float | None], fill: float) -> Tensor:
    return torch.tensor([fill if v is None else float(v) for v in values], dtype=torch.float32)


# -- the model ----------------------------------------------------------------------------------------------------
class ConditionalINN(nn.Module):
    """Conditional INN ``q(x | y)`` with a jointly trained summary network (implements the Posterior protocol).

    Args:
        param_dim: number of parameters ``D``.
        obs_shape: shape of one observation ``(M,)`` (any shape for vectors, flattened by the MLP summary); for
            set-valued data the shape of one set member.
        support_low, support_high: per-parameter support bounds ``(D,)`` (``+-inf`` or ``None`` where unbounded),
            e.g. from ``sbi_inn.priors.support_bounds``; unbounded everywhere when omitted.
        is_set_valued: observations are sets ``(B, K, M)`` with sizes ``(B,)``.
        flow: architecture of the coupling flow (for ``D = 1``: of the 1-D spline flow).
        summary: ``"auto"`` (deep set for sets, MLP otherwise), ``"mlp"``, ``"deepset"``, ``"none"`` (the
            standardised observation itself is the condition; vectors only) or an ``nn.Module`` with attribute
            ``out_dim``, called as ``net(y)`` (vectors) or ``net(y, mask)`` (sets) on standardised observations.
            A posterior with a custom module saves its weights; loading needs an instance of the same
            architecture (``load_posterior(path, summary=module)``).
        summary_dim: summary features ``C`` (default 32; ignored for ``"none"`` and custom modules).
        summary_hidden, summary_layers: width and hidden-layer count of the summary network(s); ``summary_layers=None``
            gives 2 for the MLP and 1 for each of the deep set's psi and rho (psi runs on every set member, and one
            layer was as accurate as two on the set benchmark and faster: ``benchmarks/results/design_notes.md``).
        summary_activation: nonlinearity of the summary network(s).
        summary_pool: the deep set's pool, ``"mean_std"`` (default) or ``"mean"`` (``sbi_inn.summary.DeepSetSummary``).
        spline_bins: bins of the 1-D spline flow (``D = 1`` only).
        precondition: ``"none"`` (the flow maps ``v`` to ``z``), ``"shift"`` or ``"linear"``: the flow maps
            ``w = L^-1 (v - A f(y) - b)``, a linear-Gaussian model of the posterior fitted by ridge regression on the
            training data (:class:`sbi_inn.transforms.LinearGaussian`), where ``f(y)`` is the standardised observation
            (for sets: the mean of the standardised members). The condition ``c`` then carries the linear prediction
            ``A f(y) + b`` in its last ``D`` columns. ``"shift"`` is the same with ``L = I``: the flow models
            ``v - A f(y) - b``.
        interval_map: ``"logit"`` or ``"probit"``: the map of parameters bounded on both sides to the real line
            (:class:`sbi_inn.transforms.SupportTransform`). ``fit_posterior`` passes ``FitConfig.interval_map``
            (``"probit"`` by default); ``"logit"`` here is the map of the models saved before the option.

    Example:
        >>> model = ConditionalINN(2, (3,), flow=FlowConfig(num_blocks=2, hidden=16), summary_dim=4)
        >>> c = model.condition(torch.zeros(5, 3))
        >>> model.sample_given(c, 10, torch.Generator().manual_seed(0)).shape
        torch.Size([10, 5, 2])
    """

    def __init__(self, param_dim: int, obs_shape: Sequence[int], *, support_low=None, support_high=None,
                 is_set_valued: bool = False, flow: FlowConfig | None = None, summary: str | nn.Module = "auto",
                 summary_dim: int | None = None, summary_hidden: int = 128, summary_layers: int | None = None,
                 summary_activation: str = "relu", summary_pool: str = "mean_std", spline_bins: int = 8,
                 precondition: str = "none", interval_map: str = "logit"):
        super().__init__()
        if precondition not in PRECONDITIONS:
            raise ValueError(f"ConditionalINN: precondition must be one of {PRECONDITIONS}, got {precondition!r}")
        if param_dim < 1:
            raise ValueError(f"ConditionalINN: param_dim must be >= 1, got {param_dim}")
        self.param_dim = int(param_dim)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.is_set_valued = bool(is_set_valued)
        if self.is_set_valued and len(self.obs_shape) != 1:
            raise ValueError(f"ConditionalINN: set members must be vectors (M,), got obs_shape {self.obs_shape}")
        if summary_activation not in ACTIVATIONS:
            raise ValueError(f"ConditionalINN: summary_activation must be one of {sorted(ACTIVATIONS)}, got "
                             f"{summary_activation!r}")
        flow = flow or FlowConfig()
        self.flow_config = flow
        self.spline_bins = int(spline_bins)
        if summary_layers is None:
            summary_layers = 1 if self.is_set_valued else 2
        self.summary_hidden, self.summary_layers = int(summary_hidden), int(summary_layers)
        self.summary_activation = summary_activation
        self.summary_pool = summary_pool
        obs_size = math.prod(self.obs_shape)

        lo = torch.full((param_dim,), -math.inf) if support_low is None else _as_bounds(support_low, -math.inf)
        hi = torch.full((param_dim,), math.inf) if support_high is None else _as_bounds(support_high, math.inf)
        if lo.shape != (param_dim,) or hi.shape != (param_dim,):
            raise ValueError(f"ConditionalINN: support bounds must have shape ({param_dim},), got "
                             f"{tuple(lo.shape)} and {tuple(hi.shape)}")
        self.support = SupportTransform(lo, hi, interval=interval_map)
        self.x_standardize = Standardize(param_dim)
        self.y_standardize = Standardize(self.obs_shape)

        if isinstance(summary, nn.Module):
            if not isinstance(getattr(summary, "out_dim", None), int) or summary.out_dim < 1:
                raise ValueError("ConditionalINN: a custom summary module needs an integer attribute out_dim >= 1")
            self.summary_kind, self.summary_dim, self.summary = "custom", summary.out_dim, summary
        else:
            kind = ("deepset" if self.is_set_valued else "mlp") if summary == "auto" else summary
            if kind not in SUMMARY_KINDS:
                raise ValueError(f"ConditionalINN: summary must be 'auto', one of {SUMMARY_KINDS} or an nn.Module, "
                                 f"got {summary!r}")
            if kind == "deepset" and not self.is_set_valued:
                raise ValueError("ConditionalINN: summary='deepset' needs set-valued observations")
            if kind != "deepset" and self.is_set_valued:
                raise ValueError(f"ConditionalINN: set-valued observations need a permutation-invariant summary "
                                 f"('deepset' or a custom module), got {kind!r}")
            self.summary_kind = kind
            if kind == "none":
                self.summary_dim, self.summary = obs_size, nn.Flatten()
            else:
                self.summary_dim = int(summary_dim or DEFAULT_SUMMARY_DIM)
                if kind == "mlp":
                    self.summary = MLPSummary(obs_size, self.summary_dim, summary_hidden, summary_layers,
                                              summary_activation)
                else:
                    self.summary = DeepSetSummary(obs_size, self.summary_dim, summary_hidden, summary_layers,
                                                  summary_activation, pool=summary_pool)
        self.precondition = precondition
        self.linear = None
        if precondition != "none":
            self.linear = LinearGaussian(self.obs_shape[-1] if self.is_set_valued else obs_size, self.param_dim)
        self.cond_dim = self.summary_dim + (self.param_dim if self.linear is not None else 0)
        if self.param_dim >= 2:
            self.flow = CouplingFlow(self.param_dim, self.summary_dim, flow)
        else:
            self.flow = ConditionalSpline1d(self.summary_dim, flow, bins=self.spline_bins)

    # -- standardisation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_standardization(self, x: Tensor, y: Tensor, sizes: Tensor | None = None) -> ConditionalINN:
        """Fit the parameter and observation standardisation on training data.

        Args:
            x: parameters ``(n, D)`` inside the support; standardised in the unconstrained space.
            y: observations ``(n, *obs_shape)`` (sets: ``(n, K, M)`` zero-padded).
            sizes: set sizes ``(n,)`` (sets only).
        """
        dev = self.x_standardize.mean.device
        x, y = x.to(dev, torch.float32), y.to(dev, torch.float32)
        self.x_standardize.fit(self.support.inverse(x))
        if self.is_set_valued:
            self.y_standardize.fit(y, mask=self._mask(y, sizes))
        else:
            self.y_standardize.fit(y)
        if self.linear is not None:
            self.linear.fit(self.x_standardize(self.support.inverse(x)),
                            self._features(self.y_standardize(y), sizes), whiten=self.precondition == "linear")
        return self

    def _features(self, y: Tensor, sizes: Tensor | None) -> Tensor:
        """The linear model's features ``(B, F)`` of standardised observations ``y``: ``y`` itself, flattened; for
        sets its members' mean."""
        if not self.is_set_valued:
            return y.reshape(y.shape[0], -1)
        w = self._mask(y, sizes).to(y.dtype).unsqueeze(-1)
        return (y * w).sum(1) / w.sum(1).clamp_min(1)

    def _mask(self, y: Tensor, sizes: Tensor | None) -> Tensor:
        K = y.shape[1]
        if sizes is None:
            return torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
        return torch.arange(K, device=y.device)[None, :] < sizes.to(y.device)[:, None]

    # -- the Posterior protocol ----------------------------------------------------------------------------------
    def condition(self, y: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Summary ``c = phi(standardised y)`` ``(B, C)`` for observations ``(B, *obs_shape)`` (sets ``(B, K, M)``);
        with a preconditioner (``"shift"``, ``"linear"``) followed by the linear prediction ``(B, D)``: ``(B, C + D)``.
        """
        ys = self.y_standardize(y)
        if not self.is_set_valued:
            c = self.summary(ys)
        else:
            mask = self._mask(ys, sizes)
            c = self.summary(torch.where(mask.unsqueeze(-1), ys, torch.zeros((), dtype=ys.dtype, device=ys.device)),
                             mask)
        if self.linear is None:
            return c
        return torch.cat([c, self.linear.mean(self._features(ys, sizes))], dim=1)

    def _split(self, c: Tensor, n_rows: int) -> tuple[Tensor, Tensor | None]:
        """``(summary, linear prediction or None)`` from a condition of :meth:`condition`; the prediction is repeated
        over ``n_rows`` rows of the ``(n, B)`` layout (row ``r`` uses ``c[r % B]``), the summary is left to the flow."""
        if self.linear is None:
            return c, None
        mean = c[:, self.summary_dim :]
        reps = n_rows // mean.shape[0]
        return c[:, : self.summary_dim], mean if reps == 1 else mean.repeat(reps, 1)

    def _to_latent(self, v: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``z`` and ``log|dz/dv|`` ``(N,)`` for standardised parameters ``v`` ``(N, D)``."""
        cs, mean = self._split(c, v.shape[0])
        if mean is None:
            return self.flow(v, cs)
        z, logdet = self.flow(self.linear(v, mean), cs)
        return z, logdet + self.linear.log_abs_det()

    def log_prob_given(self, x: Tensor, c: Tensor) -> Tensor:
        """``log q(x | y)`` ``(N,)`` for parameters ``x`` ``(N, D)`` and summaries ``c`` ``(N, C)`` or ``(1, C)``.

        ``-inf`` outside the support; densities are with respect to ``x`` (all Jacobians included).
        """
        u = self.support.inverse(x)
        v = self.x_standardize(u)
        z, logdet = self._to_latent(v, c)
        logp = (standard_normal_log_prob(z) + logdet + self.x_standardize.log_abs_det()
                - self.support.log_abs_det(u))
        return torch.where(self.support.contains(x), logp, torch.full_like(logp, -math.inf))

    def sample_given(self, c: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples for each of the ``B`` summaries ``c`` ``(B, C)``, shape ``(n, B, D)``, inside the support.

        Each observation draws its latent noise from its own generator, seeded from ``generator`` in observation
        order, so splitting the observations into chunks (``Posterior.sample_batched``) reproduces the unchunked
        samples exactly under the same seed.
        """
        B = c.shape[0]
        z = torch.empty(B, n, self.param_dim, device=c.device, dtype=c.dtype)
        gen = torch.Generator(device=c.device)  # one generator re-seeded per row, cheaper than a new one per row
        for b, seed in enumerate(_row_seeds(generator, B)):
            torch.randn(n, self.param_dim, generator=gen.manual_seed(seed), out=z[b])
        z = z.transpose(0, 1).reshape(n * B, self.param_dim)  # rows (n, B): row r uses c[r % B]
        return self.decode(z, c).reshape(n, B, self.param_dim)

    def decode(self, z: Tensor, c: Tensor) -> Tensor:
        """Parameters ``(N, D)`` of latents ``z`` ``(N, D)`` under conditions ``c`` ``(N, C)`` or ``(B, C)`` with
        ``B`` dividing ``N`` (row ``r`` uses ``c[r % B]``): the inverse pass of :meth:`sample_given`, without noise."""
        c, mean = self._split(c, z.shape[0])
        if isinstance(self.flow, CouplingFlow):
            v = self.flow.sample_inverse(z, c)  # = flow.inverse(z, c, jac=False)[0], bit for bit
        else:
            v, _ = self.flow.inverse(z, c, jac=False)
        if mean is not None:
            v = self.linear.inverse(v, mean)
        return self.support(self.x_standardize.inverse(v))

    # -- training ---------------------------------------------------------------------------------------------
    def nll_rows(self, batch: tuple[Tensor, ...]) -> Tensor:
        """Conditional negative log-likelihood (eq. 3.8) per parameter dimension of each row, ``(N,)``.

        ``batch`` is ``(x, y)``, ``(x, y, sizes)`` or ``(x, y, mask)`` (as ``HDF5Dataset`` yields). Each value is
        ``-log q(v | y) / D`` in the standardised unconstrained space ``v`` (the standardisation and support
        Jacobians do not depend on the weights).
        """
        x, y = batch[0], batch[1]
        sizes = batch[2] if len(batch) > 2 else None
        if sizes is not None and sizes.dtype == torch.bool:
            sizes = sizes.sum(-1)
        c = self.condition(y, sizes)
        v = self.x_standardize(self.support.inverse(x))
        z, logdet = self._to_latent(v, c)
        return -(standard_normal_log_prob(z) + logdet) / self.param_dim

    def loss(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
        """The training loss ``(mean of nll_rows(batch), parts)``."""
        nll = self.nll_rows(batch).mean()
        return nll, {"nll_per_dim": float(nll.detach())}

    # -- configuration ----------------------------------------------------------------------------------------
    def config(self) -> dict:
        """JSON architecture description; ``ConditionalINN.from_config(config)`` rebuilds an untrained twin.

        A custom summary module is recorded by class name and ``out_dim`` only (its code is not JSON): rebuilding
        then needs an instance of the same architecture, ``from_config(config, summary=module)``.
        """
        if self.summary_kind == "custom":
            summary = {"kind": "custom", "dim": self.summary_dim,
                       "class": f"{type(self.summary).__module__}.{type(self.summary).__qualname__}"}
        else:
            summary = {"kind": self.summary_kind, "dim": self.summary_dim, "hidden": self.summary_hidden,
                       "layers": self.summary_layers, "activation": self.summary_activation}
            if self.summary_kind == "deepset":
                summary["pool"] = self.summary_pool
        return {"type": "cinn", "param_dim": self.param_dim, "obs_shape": list(self.obs_shape),
                "is_set_valued": self.is_set_valued, "support_low": _bounds_to_json(self.support.lo),
                "support_high": _bounds_to_json(self.support.hi), "flow": self.flow_config.to_dict(),
                "summary": summary, "spline_bins": self.spline_bins, "precondition": self.precondition,
                "interval_map": self.support.interval}

    @classmethod
    def from_config(cls, config: dict, summary: nn.Module | None = None) -> ConditionalINN:
        """Rebuild an untrained model; ``summary`` supplies the module of a custom-summary configuration."""
        if config.get("type") != "cinn":
            raise ValueError(f"ConditionalINN.from_config: not a cinn configuration (type {config.get('type')!r})")
        s = config["summary"]
        common = {"is_set_valued": config["is_set_valued"], "flow": FlowConfig(**config["flow"]),
                  "support_low": _bounds_from_json(config["support_low"], -math.inf),
                  "support_high": _bounds_from_json(config["support_high"], math.inf),
                  "spline_bins": config.get("spline_bins", 8),
                  "precondition": config.get("precondition", "none"),  # files written before the option: none
                  "interval_map": config.get("interval_map", "logit")}  # and the logit map
        if s["kind"] == "custom":
            if summary is None:
                raise ValueError(f"this posterior was trained with a custom summary network {s['class']} "
                                 f"(out_dim {s['dim']}), whose code is not stored; pass an instance of the same "
                                 "architecture: load_posterior(path, summary=module)")
            if getattr(summary, "out_dim", None) != s["dim"]:
                raise ValueError(f"the summary module given has out_dim {getattr(summary, 'out_dim', None)}, the "
                                 f"stored one ({s['class']}) has {s['dim']}")
            return cls(config["param_dim"], config["obs_shape"], summary=summary, **common)
        if summary is not None:
            raise ValueError(f"summary= is only for posteriors trained with a custom summary network; this one uses "
                             f"{s['kind']!r}")
        return cls(config["param_dim"], config["obs_shape"], summary=s["kind"], summary_dim=s["dim"],
                   summary_hidden=s["hidden"], summary_layers=s["layers"], summary_activation=s["activation"],
                   summary_pool=s.get("pool", "mean"),  # files written before the spread pool: eq. 3.14's mean
                   **common)


def _as_bounds(values, fill: float) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().to("cpu", torch.float32).reshape(-1)
    return _bounds_from_json(list(values), fill)


def _row_seeds(generator: torch.Generator | None, B: int) -> list[int]:
    """``B`` seeds drawn one after another from ``generator`` (fresh randomness when ``None``).

    One draw per row keeps the stream independent of how rows are chunked: torch's CPU ``randint`` is sequential,
    but CUDA draws depend on the tensor size, so on CUDA every seed is its own call; the ``B`` seeds are then read
    back in one transfer (one wait for the device per chunk, not one per row).
    """
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    dev = generator.device
    if dev.type == "cpu":
        return torch.randint(0, 2**62, (B,), generator=generator).tolist()
    return torch.cat([torch.randint(0, 2**62, (1,), generator=generator, device=dev) for _ in range(B)]).tolist()
