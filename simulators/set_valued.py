"""Set-valued simulators: each observation is an unordered set of ``K`` i.i.d. draws, ``K`` varying per simulation.

This is the setting of BayesFlow (thesis sec. 3.8.6, Radev et al. 2020), where a permutation-invariant summary network
``phi({y_k}) = rho(sum_k psi(y_k))`` (deep sets, eq. 3.14) conditions the cINN. Two models:

* :class:`ConjugateGaussianSets` (``"gaussian_sets"``): ``y_k ~ N(mu, sigma2 I)`` with the conjugate
  Normal-Inverse-Gamma prior, so the posterior is known exactly for any set size.
* :class:`DriftDiffusion` (``"ddm"``): two-choice reaction times from a Wiener drift-diffusion model, with the
  Navarro & Fuss (2009) first-passage-time density as likelihood.

``simulate(x, *, generator=None, sizes=None)`` returns ``(y, sizes)``: ``y`` of shape ``(n, K_pad, M)``, zero past
each set's size, and ``sizes`` (int64, ``(n,)``). Set sizes are drawn as ``K ~ Uniform{min_size..max_size}`` from
``generator`` and ``K_pad = max_size``; when the caller fixes ``sizes`` (an int or an ``(n,)`` integer tensor, any
``K >= 1``) nothing is drawn for them and ``K_pad = max(sizes)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from sbi_inn.priors import BoxUniform
from simulators.base import Simulator

__all__ = ["ConjugateGaussianSets", "DriftDiffusion", "NormalInverseGamma", "wiener_log_density"]


# ---------------------------------------------------------------------------------------------------------------
# Normal-Inverse-Gamma distribution
# ---------------------------------------------------------------------------------------------------------------
class NormalInverseGamma(Distribution):
    """Normal-Inverse-Gamma ``NIG(loc, lam, a, b)`` over ``(mu, sigma2)``, event shape ``(d + 1,)``.

    ``sigma2 ~ InvGamma(a, b)`` (shape ``a``, scale ``b``) and ``mu | sigma2 ~ N(loc, sigma2 / lam * I_d)``; a value
    is ``(mu_1, ..., mu_d, sigma2)``. ``sample`` accepts an optional ``generator`` (gamma draws by Marsaglia &
    Tsang 2000), so posterior draws are reproducible without touching the global RNG.

    Args:
        loc: mean of ``mu``, shape ``(..., d)``; a scalar means ``d = 1``.
        lam: pseudo-count ``lambda > 0`` scaling the variance of ``mu``, shape ``(...)``.
        a, b: shape and scale of the inverse-gamma on ``sigma2``, both ``> 0``.

    Example:
        >>> nig = NormalInverseGamma(0.0, 1.0, 3.0, 2.0)
        >>> nig.event_shape, nig.mean.tolist()
        (torch.Size([2]), [0.0, 1.0])

    References:
        Murphy (2007), "Conjugate Bayesian analysis of the Gaussian distribution" (Normal-Inverse-Gamma prior).
    """

    arg_constraints = {"loc": constraints.real_vector, "lam": constraints.positive, "a": constraints.positive,
                       "b": constraints.positive}
    has_rsample = False

    def __init__(self, loc, lam, a, b, validate_args=None):
        dtype = torch.get_default_dtype()
        loc = torch.as_tensor(loc, dtype=loc.dtype if isinstance(loc, Tensor) else dtype)
        if loc.ndim == 0:
            loc = loc[None]
        lam, a, b = (torch.as_tensor(p, dtype=loc.dtype, device=loc.device) for p in (lam, a, b))
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], lam.shape, a.shape, b.shape)
        self.loc = loc.expand(batch_shape + loc.shape[-1:])
        self.lam, self.a, self.b = (p.expand(batch_shape) for p in (lam, a, b))
        self.dim = loc.shape[-1]
        super().__init__(batch_shape, torch.Size([self.dim + 1]), validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(
            constraints.cat([constraints.real, constraints.positive], dim=-1, lengths=[self.dim, 1]), 1)

    @property
    def mean(self) -> Tensor:
        """``(loc, b / (a - 1))``; the ``sigma2`` entry is ``inf`` for ``a <= 1``."""
        s2 = torch.where(self.a > 1, self.b / (self.a - 1), math.inf)
        return torch.cat([self.loc, s2[..., None]], -1)

    @property
    def variance(self) -> Tensor:
        """``(b / ((a - 1) lam), b^2 / ((a - 1)^2 (a - 2)))``; ``inf`` where the moment does not exist."""
        v_mu = torch.where(self.a > 1, self.b / ((self.a - 1) * self.lam), math.inf)
        v_s2 = torch.where(self.a > 2, self.b**2 / ((self.a - 1) ** 2 * (self.a - 2)), math.inf)
        return torch.cat([v_mu[..., None].expand_as(self.loc), v_s2[..., None]], -1)

    @property
    def mode(self) -> Tensor:
        """Joint mode ``(loc, b / (a + 1 + d / 2))``."""
        return torch.cat([self.loc, (self.b / (self.a + 1 + self.dim / 2))[..., None]], -1)

    def sample(self, sample_shape=(), generator: torch.Generator | None = None) -> Tensor:
        """Draws of shape ``sample_shape + batch_shape + (d + 1,)``, from ``generator`` when given."""
        shape = self._extended_shape(sample_shape)[:-1]
        with torch.no_grad():
            gamma = _sample_gamma(self.a.expand(shape), generator)
            s2 = self.b / gamma
            eps = torch.randn(shape + (self.dim,), generator=generator, dtype=self.loc.dtype, device=self.loc.device)
            mu = self.loc + (s2 / self.lam).sqrt()[..., None] * eps
        return torch.cat([mu, s2[..., None]], -1)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log InvGamma(sigma2; a, b) + log N(mu; loc, sigma2 / lam I)``; ``-inf`` for ``sigma2 <= 0``."""
        if self._validate_args:
            self._validate_sample(value)
        mu, s2 = value[..., :-1], value[..., -1]
        inside = s2 > 0
        s2 = torch.where(inside, s2, torch.ones_like(s2))
        lp = (self.a * self.b.log() - torch.lgamma(self.a) - (self.a + 1) * s2.log() - self.b / s2
              - 0.5 * self.dim * (math.log(2 * math.pi) + s2.log() - self.lam.log())
              - 0.5 * self.lam * ((mu - self.loc) ** 2).sum(-1) / s2)
        return torch.where(inside, lp, -math.inf)


def _sample_gamma(alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gamma(alpha, 1) draws; Marsaglia & Tsang (2000) with boosting for ``alpha < 1`` when a generator is given."""
    if generator is None:
        return torch._standard_gamma(alpha)
    kw = {"generator": generator, "dtype": alpha.dtype, "device": alpha.device}
    boost = alpha < 1
    d = torch.where(boost, alpha + 1, alpha) - 1 / 3
    c = 1 / (9 * d).sqrt()
    out = torch.empty_like(alpha)
    todo = torch.ones_like(alpha, dtype=torch.bool)
    while todo.any():
        idx = todo.nonzero(as_tuple=True)
        z = torch.randn(idx[0].shape, **kw)
        u = torch.rand(idx[0].shape, **kw)
        di, ci = d[idx], c[idx]
        v = (1 + ci * z) ** 3
        ok = (v > 0) & (u.log() < 0.5 * z**2 + di - di * v + di * v.clamp_min(1e-30).log())
        acc = tuple(i[ok] for i in idx)
        out[acc] = (di * v)[ok]
        todo[acc] = False
    if boost.any():
        u = torch.rand(alpha.shape, **kw)
        out = torch.where(boost, out * u.pow(1 / alpha), out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# shared set handling
# ---------------------------------------------------------------------------------------------------------------
class _SetSimulator(Simulator):
    """Set-size drawing, padding and input checks shared by the set-valued simulators."""

    is_set_valued = True
    min_size: int
    max_size: int

    def _init_sizes(self, min_size: int, max_size: int) -> None:
        if isinstance(min_size, bool) or isinstance(max_size, bool) or not all(
                float(s).is_integer() for s in (min_size, max_size)):
            raise TypeError(f"{self.name}: min_size and max_size must be integers, got {min_size!r}, {max_size!r}")
        if min_size < 1:
            raise ValueError(f"{self.name}: min_size must be >= 1, got {min_size}")
        if min_size > max_size:
            raise ValueError(f"{self.name}: min_size ({min_size}) must not exceed max_size ({max_size})")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def simulate(self, x: Tensor, *, generator: torch.Generator | None = None, sizes=None):
        """Simulate one set per parameter vector.

        Args:
            x: parameters, shape ``(n, D)``.
            generator: source of randomness; a fresh, randomly seeded one when ``None``.
            sizes: set sizes, an int or an ``(n,)`` integer tensor (each ``>= 1``); drawn from
                ``Uniform{min_size..max_size}`` when ``None``.

        Returns:
            ``(y, sizes)``: ``y`` of shape ``(n, K_pad, M)``, exactly zero in rows ``k >= sizes[i]``, with
            ``K_pad = max_size`` when sizes are drawn and ``max(sizes)`` when given; ``sizes`` int64 ``(n,)``.
        """
        x = self.check_parameters(x)
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        n = x.shape[0]
        if sizes is None:
            sizes = torch.randint(self.min_size, self.max_size + 1, (n,), generator=generator, device=x.device)
            k_pad = self.max_size
        else:
            sizes = self._check_sizes(sizes, n).to(x.device)
            k_pad = int(sizes.max()) if n else 0
        mask = torch.arange(k_pad, device=x.device) < sizes[:, None]
        return self._simulate_sets(x, mask, generator), sizes

    __call__ = simulate

    def _simulate_sets(self, x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _check_sizes(self, sizes, n: int) -> Tensor:
        sizes = torch.as_tensor(sizes)
        if sizes.is_floating_point() or sizes.dtype == torch.bool or sizes.is_complex():
            raise TypeError(f"{self.name}: sizes must be integers, got dtype {sizes.dtype}")
        sizes = sizes.to(torch.int64)
        if sizes.ndim == 0:
            sizes = sizes.expand(n)
        if sizes.shape != (n,):
            raise ValueError(f"{self.name}: sizes must be an int or have shape ({n},), got {tuple(sizes.shape)}")
        if (sizes < 1).any():
            raise ValueError(f"{self.name}: set sizes must be >= 1, got min {int(sizes.min())}")
        return sizes.clone()

    def _check_sets(self, y, sizes, dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
        """One set ``(K, M)`` or a batch ``(B, K, M)`` plus optional sizes -> ``(y (B, K, M), sizes (B,), mask)``."""
        y = torch.as_tensor(y, dtype=dtype, device=device)
        if y.ndim == 2:
            y = y[None]
        if y.ndim != 3 or y.shape[-1] != self.obs_dim or y.shape[1] == 0:
            raise ValueError(f"{self.name}: y must be one set (K, {self.obs_dim}) or a batch (B, K, {self.obs_dim}) "
                             f"with K >= 1 ({', '.join(self.obs_names)}), got {tuple(y.shape)}")
        b, k = y.shape[:2]
        if sizes is None:
            sizes = torch.full((b,), k, dtype=torch.int64, device=device)
        else:
            sizes = self._check_sizes(sizes, b).to(device)
            if (sizes > k).any():
                raise ValueError(f"{self.name}: a set size ({int(sizes.max())}) exceeds the {k} rows of y")
        mask = torch.arange(k, device=device) < sizes[:, None]
        if not torch.isfinite(y[mask]).all():
            raise ValueError(f"{self.name}: observations contain NaN or inf")
        return y, sizes, mask

    @staticmethod
    def _pair(b: int, n: int, name: str) -> None:
        if b not in (1, n):
            raise ValueError(f"{name}: got {b} sets for {n} parameter vectors; pass one set or one per vector")


def _check_hyper(name: str, **values: float) -> None:
    for key, v in values.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: {key} must be a positive finite number, got {v!r}")


def _check_range(name: str, key: str, r: Sequence[float], low: float = -math.inf, high: float = math.inf):
    r = tuple(float(v) for v in r)
    if len(r) != 2 or not all(math.isfinite(v) for v in r) or not (low <= r[0] < r[1] <= high):
        raise ValueError(f"{name}: {key} must be (low, high) with {low} <= low < high <= {high}, got {r!r}")
    return r


# ---------------------------------------------------------------------------------------------------------------
# conjugate Gaussian sets
# ---------------------------------------------------------------------------------------------------------------
class ConjugateGaussianSets(_SetSimulator):
    """Sets of ``y_k ~ N(mu, sigma2 I_d)`` i.i.d. with a conjugate Normal-Inverse-Gamma prior.

    Parameters ``x = (mu, sigma2)`` (``(mu_1..mu_d, sigma2)`` for ``dim > 1``; arbitrary units, ``sigma2`` in units
    squared) with prior ``sigma2 ~ InvGamma(a0, b0)``, ``mu | sigma2 ~ N(mu0, sigma2 / lambda0 I)``. For a set
    of size ``K`` with mean ``ybar`` the posterior is ``NIG(mu_n, lambda_n, a_n, b_n)``::

        lambda_n = lambda0 + K,     mu_n = (lambda0 mu0 + K ybar) / lambda_n,     a_n = a0 + K d / 2,
        b_n = b0 + 1/2 sum_k |y_k - ybar|^2 + lambda0 K |ybar - mu0|^2 / (2 lambda_n)

    Args:
        min_size, max_size: range of the set size ``K`` (inclusive).
        dim: dimension ``d`` of each set element (``M = d``).
        mu0, lambda0, a0, b0: prior hyper-parameters (``lambda0, a0, b0 > 0``).

    Example:
        >>> sim = ConjugateGaussianSets()
        >>> gen = torch.Generator().manual_seed(0)
        >>> y, sizes = sim.simulate(torch.tensor([[0.0, 1.0]]), sizes=10, generator=gen)
        >>> tuple(y.shape), sim.sample_posterior(y[0], 5).shape
        ((1, 10, 1), torch.Size([5, 2]))

    References:
        Murphy (2007), "Conjugate Bayesian analysis of the Gaussian distribution" (NIG posterior, d = 1);
        thesis sec. 3.8.6 (BayesFlow, set-valued observations).
    """

    name = "gaussian_sets"

    def __init__(self, min_size: int = 1, max_size: int = 100, dim: int = 1, mu0: float = 0.0,
                 lambda0: float = 1.0, a0: float = 3.0, b0: float = 2.0):
        self._init_sizes(min_size, max_size)
        if isinstance(dim, bool) or not float(dim).is_integer() or dim < 1:
            raise ValueError(f"{self.name}: dim must be a positive integer, got {dim!r}")
        if not (isinstance(mu0, (int, float)) and math.isfinite(mu0)):
            raise ValueError(f"{self.name}: mu0 must be a finite number, got {mu0!r}")
        _check_hyper(self.name, lambda0=lambda0, a0=a0, b0=b0)
        self.dim = int(dim)
        self.mu0, self.lambda0, self.a0, self.b0 = float(mu0), float(lambda0), float(a0), float(b0)
        mu_names = ["mu"] if self.dim == 1 else [f"mu_{i + 1}" for i in range(self.dim)]
        self.param_names = mu_names + ["sigma2"]
        self.param_units = ["a.u."] * self.dim + ["a.u.^2"]
        self.obs_names = ["y"] if self.dim == 1 else [f"y_{i + 1}" for i in range(self.dim)]
        self.obs_units = ["a.u."] * self.dim
        self.prior = NormalInverseGamma(torch.full((self.dim,), self.mu0), self.lambda0, self.a0, self.b0)

    def config(self) -> dict:
        return {"min_size": self.min_size, "max_size": self.max_size, "dim": self.dim, "mu0": self.mu0,
                "lambda0": self.lambda0, "a0": self.a0, "b0": self.b0}

    def check_parameters(self, x: Tensor) -> Tensor:
        x = super().check_parameters(x)
        if (x[:, -1] <= 0).any():
            raise ValueError(f"{self.name}: sigma2 must be > 0 (outside the prior's support)")
        return x

    def _simulate_sets(self, x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        n, k = mask.shape
        eps = torch.randn((n, k, self.dim), generator=generator, dtype=x.dtype, device=x.device)
        y = x[:, None, :-1] + x[:, -1, None, None].sqrt() * eps
        return y * mask[..., None]

    def _stats(self, y, sizes, dtype, device):
        """Set size ``K``, mean ``ybar`` ``(B, d)`` and scatter ``sum |y - ybar|^2`` ``(B,)``."""
        y, sizes, mask = self._check_sets(y, sizes, dtype, device)
        m = mask[..., None].to(dtype)
        k = sizes.to(dtype)
        ybar = (y * m).sum(1) / k[:, None]
        scatter = (((y - ybar[:, None]) * m) ** 2).sum((1, 2))
        return k, ybar, scatter

    def log_likelihood(self, y: Tensor, x: Tensor, sizes=None) -> Tensor:
        """``sum_k log N(y_k; mu, sigma2 I)`` over the valid rows, shape ``(n,)``.

        Args:
            y: one set ``(K, M)`` (broadcast over ``x``) or one set per parameter vector ``(n, K, M)``.
            x: parameters ``(n, D)`` with ``sigma2 > 0``.
            sizes: number of valid rows, an int / ``(n,)`` tensor; all ``K`` rows when ``None``.
        """
        x = self.check_parameters(x)
        k, ybar, scatter = self._stats(y, sizes, x.dtype, x.device)
        self._pair(k.shape[0], x.shape[0], self.name)
        mu, s2 = x[:, :-1], x[:, -1]
        sq = scatter + k * ((ybar - mu) ** 2).sum(-1)
        return -0.5 * k * self.dim * (math.log(2 * math.pi) + s2.log()) - 0.5 * sq / s2

    def posterior(self, y: Tensor, size=None) -> NormalInverseGamma:
        """The exact conjugate posterior ``NIG(mu_n, lambda_n, a_n, b_n)`` for one set ``y`` ``(K, M)``.

        Computed in float64; the returned distribution has the dtype of ``y`` (the default dtype for integer ``y``).
        """
        y = torch.as_tensor(y)
        dtype = y.dtype if y.is_floating_point() else torch.get_default_dtype()
        k, ybar, scatter = self._stats(y, size, torch.float64, y.device)
        if k.shape[0] != 1:
            raise ValueError(f"{self.name}: the posterior takes one set (K, {self.obs_dim}), got {k.shape[0]} sets")
        k, ybar, scatter = k[0], ybar[0], scatter[0]
        lam_n = self.lambda0 + k
        mu_n = (self.lambda0 * self.mu0 + k * ybar) / lam_n
        a_n = self.a0 + 0.5 * k * self.dim
        b_n = self.b0 + 0.5 * scatter + self.lambda0 * k * ((ybar - self.mu0) ** 2).sum() / (2 * lam_n)
        return NormalInverseGamma(*(p.to(dtype) for p in (mu_n, lam_n, a_n, b_n)))

    def sample_posterior(self, y: Tensor, n: int, *, generator: torch.Generator | None = None,
                         size=None) -> Tensor:
        """``n`` exact posterior draws ``(n, D)`` for one set ``y`` (``(K, M)``, or padded plus ``size``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{self.name}: n must be a non-negative int, got {n!r}")
        return self.posterior(y, size).sample((n,), generator=generator)

    def log_posterior(self, x: Tensor, y: Tensor, size=None) -> Tensor:
        """Exact ``log p(x | y)`` for parameters ``x`` ``(n, D)`` and one set ``y``, shape ``(n,)``."""
        x = super().check_parameters(x)
        y = torch.as_tensor(y, device=x.device)
        dtype = torch.promote_types(x.dtype, y.dtype) if y.is_floating_point() else x.dtype
        return self.posterior(y.to(dtype), size).log_prob(x.to(dtype)).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# drift-diffusion model
# ---------------------------------------------------------------------------------------------------------------
def wiener_log_density(t: Tensor, choice: Tensor, v: Tensor, a: Tensor, w: Tensor) -> Tensor:
    """Log first-passage-time density of a Wiener process with drift ``v``, unit diffusion, boundaries ``0, a``.

    The process starts at ``w * a``; ``choice = 1`` is the upper boundary ``a``, ``0`` the lower boundary ``0``.
    With ``u = t / a^2``, ``f_0(t | v, a, w) = a^-2 exp(-v a w - v^2 t / 2) f(u | w)`` and the upper-boundary
    density is ``f_0(t | -v, a, 1 - w)``. The standardised density uses the small-time expansion
    ``f(u | w) = (2 pi u^3)^-1/2 sum_k (w + 2k) exp(-(w + 2k)^2 / (2u))``, ``|k| <= 5``, for ``u < 1`` and the
    large-time expansion ``f(u | w) = pi sum_k k exp(-k^2 pi^2 u / 2) sin(k pi w)``, ``k = 1..8``, for ``u >= 1``;
    the first omitted terms are below ``1e-20`` relative in either regime. Computed in float64;
    all arguments broadcast; ``t <= 0`` gives ``-inf``.

    References:
        Navarro & Fuss (2009), "Fast and accurate calculations for first-passage times in Wiener diffusion
        models", J. Math. Psychol. 53 (small- and large-time expansions).
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    args = (torch.as_tensor(z, dtype=torch.float64, device=t.device) for z in (choice, v, a, w))
    t, choice, v, a, w = torch.broadcast_tensors(t, *args)
    upper = choice > 0.5
    v = torch.where(upper, -v, v)
    w = torch.where(upper, 1 - w, w)
    pos = t > 0
    u = torch.where(pos, t, 1.0) / a**2
    small = u < 1
    us = torch.where(small, u, 0.5)[..., None]
    ul = torch.where(small, 1.0, u)[..., None]
    ks = torch.arange(-5, 6, dtype=torch.float64, device=t.device)
    wk = w[..., None] + 2 * ks
    # small time: factor out the k = 0 term exp(-w^2 / 2u); the remaining exponents are <= 0
    series_s = (wk * torch.exp(-(wk**2 - w[..., None] ** 2) / (2 * us))).sum(-1)
    log_small = (-0.5 * math.log(2 * math.pi) - 1.5 * us[..., 0].log() - w**2 / (2 * us[..., 0])
                 + series_s.clamp_min(1e-300).log())
    kl = torch.arange(1, 9, dtype=torch.float64, device=t.device)
    # large time: factor out the k = 1 decay exp(-pi^2 u / 2)
    series = (kl * torch.exp(-(kl**2 - 1) * math.pi**2 * ul / 2) * torch.sin(kl * math.pi * w[..., None])).sum(-1)
    log_large = math.log(math.pi) - math.pi**2 * ul[..., 0] / 2 + series.clamp_min(1e-300).log()
    log_f = torch.where(small, log_small, log_large)
    out = log_f - 2 * a.log() - v * a * w - v**2 * t / 2
    return torch.where(pos, out, -math.inf)


class DriftDiffusion(_SetSimulator):
    """Two-choice reaction times from a drift-diffusion (Wiener) model; each set element is ``(rt, choice)``.

    Parameters ``x = (v, a, t0)`` (plus ``z`` when ``fit_bias=True``): drift ``v`` (1/s), boundary separation
    ``a`` (a.u.), non-decision time ``t0`` (s) and relative starting point ``z`` in ``(0, 1)`` (fixed to ``z``
    otherwise; 0.5 is unbiased). Unit diffusion. Independent uniform priors on ``v_range``, ``a_range``,
    ``t0_range`` (and ``z_range``). An element is ``rt = t0 + T`` (s), with ``T`` the first-passage time of
    ``X_t = z a + v t + W_t`` through ``{0, a}``, and ``choice = 1`` for the upper boundary ``a``, 0 for ``0``.

    Simulation: all walkers of the batch move together on a grid of step ``dt`` (exact Gaussian increments of the
    drifted Brownian motion, in blocks of steps); a crossing *between* grid points is detected with the Brownian-
    bridge probability ``exp(-2 d_0 d_1 / dt)`` (``d_0, d_1`` the distances of the step's end points to the
    boundary), which removes the ``O(sqrt(dt))`` overshoot bias of plain Euler-Maruyama; the hit time is the
    step's midpoint (error ``<= dt / 2``). Walkers still running at ``max_time`` are completed with the exact
    large-time asymptotics: residual time ``~ Exp(v^2/2 + pi^2/(2 a^2))`` and side from the exact hitting
    probability from their current position (relative error ``~ exp(-3 pi^2 max_time / (2 a^2))``). So every
    element is valid (no NaN, no truncation) and ``rt > t0`` always. The bridge test uses the nearer boundary
    only, which needs ``a >> sqrt(dt)`` (``a >= 0.5`` vs ``sqrt(1 ms) = 0.03`` by default). Cost is about one
    Gaussian and one uniform draw per walker and step, so it scales as ``1 / dt``; thanks to the bridge correction a
    coarser step stays accurate (``dt = 5e-3`` is measured in ``benchmarks/results/design_notes.md``).

    Args:
        min_size, max_size: range of the number of trials ``K`` per set (inclusive).
        dt: simulation step (s). max_time: decision time after which the asymptotic completion is used (s).
        fit_bias: infer the starting point ``z`` as a fourth parameter. z: the fixed starting point otherwise.
        v_range, a_range, t0_range, z_range: bounds of the uniform priors.

    Example:
        >>> sim = DriftDiffusion()
        >>> gen = torch.Generator().manual_seed(0)
        >>> y, sizes = sim.simulate(torch.tensor([[1.0, 1.5, 0.3]]), sizes=5, generator=gen)
        >>> tuple(y.shape), bool((y[0, :, 0] > 0.3).all())
        ((1, 5, 2), True)

    References:
        Ratcliff & McKoon (2008), "The diffusion decision model"; Navarro & Fuss (2009) for the likelihood;
        thesis sec. 3.8.6 (BayesFlow on models from psychology).
    """

    name = "ddm"
    obs_names = ["rt", "choice"]
    obs_units = ["s", ""]

    def __init__(self, min_size: int = 1, max_size: int = 100, dt: float = 1e-3, max_time: float = 10.0,
                 fit_bias: bool = False, z: float = 0.5, v_range: Sequence[float] = (-3.0, 3.0),
                 a_range: Sequence[float] = (0.5, 2.5), t0_range: Sequence[float] = (0.1, 0.5),
                 z_range: Sequence[float] = (0.3, 0.7)):
        self._init_sizes(min_size, max_size)
        _check_hyper(self.name, dt=dt, max_time=max_time)
        if max_time < 10 * dt:
            raise ValueError(f"{self.name}: max_time ({max_time}) must be at least 10 dt ({dt})")
        if not isinstance(fit_bias, bool):
            raise TypeError(f"{self.name}: fit_bias must be a bool, got {fit_bias!r}")
        if not (isinstance(z, (int, float)) and 0 < z < 1):
            raise ValueError(f"{self.name}: z must be in (0, 1), got {z!r}")
        self.dt, self.max_time, self.fit_bias, self.z = float(dt), float(max_time), fit_bias, float(z)
        self.v_range = _check_range(self.name, "v_range", v_range)
        self.a_range = _check_range(self.name, "a_range", a_range, low=1e-12)
        self.t0_range = _check_range(self.name, "t0_range", t0_range, low=0.0)
        self.z_range = _check_range(self.name, "z_range", z_range, low=1e-12, high=1 - 1e-12)
        ranges = [self.v_range, self.a_range, self.t0_range] + ([self.z_range] if fit_bias else [])
        self.param_names = ["v", "a", "t0"] + (["z"] if fit_bias else [])
        self.param_units = ["1/s", "a.u.", "s"] + ([""] if fit_bias else [])
        self.prior = BoxUniform([r[0] for r in ranges], [r[1] for r in ranges])

    def config(self) -> dict:
        return {"min_size": self.min_size, "max_size": self.max_size, "dt": self.dt, "max_time": self.max_time,
                "fit_bias": self.fit_bias, "z": self.z, "v_range": list(self.v_range), "a_range": list(self.a_range),
                "t0_range": list(self.t0_range), "z_range": list(self.z_range)}

    def check_parameters(self, x: Tensor) -> Tensor:
        x = super().check_parameters(x)
        if (x[:, 1] <= 0).any():
            raise ValueError(f"{self.name}: boundary separation a must be > 0")
        if (x[:, 2] < 0).any():
            raise ValueError(f"{self.name}: non-decision time t0 must be >= 0")
        if self.fit_bias and ((x[:, 3] <= 0) | (x[:, 3] >= 1)).any():
            raise ValueError(f"{self.name}: starting point z must be in (0, 1)")
        return x

    def _unpack(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z = x[:, 3] if self.fit_bias else torch.full_like(x[:, 0], self.z)
        return x[:, 0], x[:, 1], x[:, 2], z

    def choice_probability(self, x: Tensor) -> Tensor:
        """Exact ``P(choice = 1) = (1 - exp(-2 v a z)) / (1 - exp(-2 v a))`` (``z`` at ``v = 0``), shape ``(n,)``."""
        v, a, _, z = (p.double() for p in self._unpack(self.check_parameters(x)))
        return _p_upper(v, a, z * a).to(x.dtype)

    def mean_rt(self, x: Tensor) -> Tensor:
        """Exact ``E[rt] = t0 + (a P_up - z a) / v`` (``z a (a - z a)`` at ``v = 0``), shape ``(n,)``.

        For ``z = 1/2`` this is ``t0 + a / (2v) tanh(a v / 2)``.
        """
        v, a, t0, z = (p.double() for p in self._unpack(self.check_parameters(x)))
        x0 = z * a
        small = v.abs() < 1e-6
        vs = torch.where(small, 1.0, v)
        t = torch.where(small, x0 * (a - x0), (a * _p_upper(v, a, x0) - x0) / vs)
        return (t0 + t).to(x.dtype)

    def _simulate_sets(self, x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        n, k = mask.shape
        y = torch.zeros((n, k, 2), dtype=x.dtype, device=x.device)
        if n * k == 0 or not mask.any():
            return y
        v, a, t0, z = self._unpack(x)
        row = mask.nonzero(as_tuple=True)
        t, choice = self._first_passage(v[row[0]], a[row[0]], z[row[0]], generator)
        y[row] = torch.stack([t0[row[0]] + t.to(x.dtype), choice.to(x.dtype)], -1)
        return y

    def _first_passage(self, v: Tensor, a: Tensor, z: Tensor, generator: torch.Generator):
        """Decision times (float64) and choices (bool, upper) for walkers ``(N,)``; scheme in the class docstring."""
        dt, dev = self.dt, v.device
        kw = {"generator": generator, "dtype": torch.float32, "device": dev}
        t_out = torch.empty(v.shape, dtype=torch.float64, device=dev)
        c_out = torch.empty(v.shape, dtype=torch.bool, device=dev)
        idx = torch.arange(v.shape[0], device=dev)
        a32, pos, drift = a.float(), (z * a).float(), (v * dt).float()
        n_steps = max(1, round(self.max_time / dt))
        step = 0
        while idx.numel() and step < n_steps:
            m = idx.numel()
            block = min(n_steps - step, max(16, min(256, 2**22 // m)))
            # rows: time steps, columns: walkers (cumsum over rows is much faster than over columns)
            path = torch.empty((block + 1, m), dtype=torch.float32, device=dev)
            path[0] = pos
            torch.randn((block, m), out=path[1:], **kw)
            path[1:].mul_(math.sqrt(dt)).add_(drift)
            torch.cumsum(path, 0, out=path)
            # Brownian-bridge crossing probability exp(-2 d0 d1 / dt) for the nearer boundary; it is >= 1 once the
            # end point is outside. (Using the nearer boundary only drops terms ~exp(-a^2 / (2 dt)).)
            d_up = a32 - path
            prod = torch.minimum(d_up[:-1] * d_up[1:], path[:-1] * path[1:])
            hit = torch.rand((block, m), **kw) < prod.mul_(-2 / dt).exp_()
            done = hit.any(0)
            if done.any():
                r = done.nonzero(as_tuple=True)[0]
                f = hit[:, r].to(torch.uint8).argmax(0)
                t_out[idx[r]] = (step + f.double() + 0.5) * dt
                c_out[idx[r]] = path[f + 1, r] > 0.5 * a32[r]
                keep = ~done
                idx, pos, drift, a32 = idx[keep], path[-1, keep], drift[keep], a32[keep]
            else:
                pos = path[-1].clone()
            step += block
        if idx.numel():  # still running at max_time: exact large-time completion
            vv, aa = v[idx].double(), a[idx].double()
            xx = torch.minimum(pos.double().clamp_min(1e-9), aa - 1e-9)
            rate = vv**2 / 2 + math.pi**2 / (2 * aa**2)
            t_out[idx] = n_steps * dt + torch.empty_like(rate).exponential_(generator=generator) / rate
            u = torch.rand(idx.shape, generator=generator, dtype=torch.float64, device=dev)
            c_out[idx] = u < _p_upper(vv, aa, xx)
        return t_out, c_out

    def log_likelihood(self, y: Tensor, x: Tensor, sizes=None) -> Tensor:
        """``sum_k log f(rt_k - t0, choice_k | v, a, z)`` (Navarro & Fuss density) over valid rows, shape ``(n,)``.

        Args:
            y: one set ``(K, 2)`` of ``(rt, choice)`` (broadcast over ``x``) or one set per vector ``(n, K, 2)``;
                choices must be 0 or 1.
            x: parameters ``(n, D)``.
            sizes: number of valid rows, an int / ``(n,)`` tensor; all ``K`` rows when ``None``.

        Returns:
            ``(n,)`` in the dtype of ``x``; ``-inf`` when some ``rt <= t0``.
        """
        x = self.check_parameters(x)
        y, sizes, mask = self._check_sets(y, sizes, torch.float64, x.device)
        self._pair(y.shape[0], x.shape[0], self.name)
        choice = y[..., 1]
        if not ((choice == 0) | (choice == 1) | ~mask).all():
            raise ValueError(f"{self.name}: choices must be 0 or 1")
        v, a, t0, z = (p.double()[:, None] for p in self._unpack(x))
        logf = wiener_log_density(y[..., 0] - t0, choice, v, a, z)
        return torch.where(mask, logf, 0.0).sum(-1).to(x.dtype)


def _p_upper(v: Tensor, a: Tensor, x0: Tensor) -> Tensor:
    """Probability to hit ``a`` before ``0`` from ``x0`` with drift ``v`` and unit diffusion."""
    small = v.abs() < 1e-8
    vs = torch.where(small, 1.0, v)
    return torch.where(small, x0 / a, torch.expm1(-2 * vs * x0) / torch.expm1(-2 * vs * a))
