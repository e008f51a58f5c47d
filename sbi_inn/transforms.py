"""Bijections between an unconstrained space and a prior's support, and data standardisation.

Models train in the unconstrained space ``u`` and map samples back with ``x = T(u)``, so every sample lies inside
the prior's support: no leakage, no rejection loops. Per dimension, from the support bounds ``[lo, hi]``:

- unbounded: ``x = u``;
- bounded below: ``x = lo + exp(u)`` (log transform), above: ``x = hi - exp(u)``;
- bounded both sides: ``x = lo + (hi - lo) * sigmoid(u)`` (logit transform, ``interval="logit"``) or
  ``x = lo + (hi - lo) * Phi(u)`` with ``Phi`` the standard normal CDF (probit transform, ``interval="probit"``).

The probit map sends a uniform prior to exactly ``N(0, 1)`` and a density that stays positive at an edge to a
Gaussian tail in ``u``; the logit map sends both to exponential tails (``dx/du ~ exp(-|u|)``), which a flow with a
Gaussian base and bounded affine scales fits poorly (a posterior piled against a box edge).

Densities follow the change of variables ``log q(x) = log q(u) - log|dx/du|``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn, special

INTERVAL_MAPS = ("logit", "probit")


class SupportTransform(nn.Module):
    """Elementwise bijection ``R^D -> support`` for per-dimension bounds ``lo, hi`` (each ``(D,)``, may be inf);
    ``interval`` (``"logit"`` or ``"probit"``) is the map of the dimensions bounded on both sides.

    Example:
        >>> t = SupportTransform(torch.tensor([0.0, 0.0]), torch.tensor([1.0, math.inf]))  # [0, 1] x [0, inf)
        >>> x = t(torch.tensor([[0.0, 0.0], [-20.0, 3.0]]))
        >>> x.tolist()[0], bool(t.contains(x).all())
        ([0.5, 1.0], True)
    """

    def __init__(self, lo: Tensor, hi: Tensor, interval: str = "logit"):
        super().__init__()
        if interval not in INTERVAL_MAPS:
            raise ValueError(f"SupportTransform: interval must be one of {INTERVAL_MAPS}, got {interval!r}")
        self.interval = interval
        lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
        if lo.shape != hi.shape or lo.ndim != 1:
            raise ValueError(f"SupportTransform: bounds must be 1-D of equal length, got {lo.shape}, {hi.shape}")
        if not (hi > lo).all():
            raise ValueError("SupportTransform: every upper bound must exceed its lower bound")
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)

    @property
    def _kinds(self) -> tuple[Tensor, Tensor, Tensor]:
        lo_f, hi_f = torch.isfinite(self.lo), torch.isfinite(self.hi)
        return lo_f & hi_f, lo_f & ~hi_f, ~lo_f & hi_f  # both, lower only, upper only

    def _safe(self, bound: Tensor, mask: Tensor) -> Tensor:
        return torch.where(mask, bound, torch.zeros_like(bound))

    def forward(self, u: Tensor) -> Tensor:
        """Map unconstrained ``u`` ``(n, D)`` into the support.

        The result is clamped to the finite numbers strictly inside the support: far-out ``u`` saturate the sigmoid
        (``|u| > ~17`` in float32; the normal CDF at ``|u| > ~5.4`` next to a bound of magnitude 1) or overflow the
        exponential, which would put a sample exactly on a bound (where a bounded prior's density is 0) or at
        ``inf``; such samples move to the nearest representable number inside. NaN stays NaN (callers refuse it).
        """
        both, lower, upper = self._kinds
        lo, hi = self._safe(self.lo, both | lower), self._safe(self.hi, both | upper)
        x = u
        if self.interval == "logit":
            x = torch.where(both, lo + (hi - lo) * torch.sigmoid(u), x)
        else:  # from the nearer edge, so values next to either bound keep their precision; the tail probability
            # Phi(-|u|) = erfc(|u| / sqrt 2) / 2 stays accurate far out (torch's float32 ndtr is 1 + erf: 0 below -5.5)
            tail = 0.5 * special.erfc(u.abs() * (0.5**0.5))
            x = torch.where(both, torch.where(u <= 0, lo + (hi - lo) * tail, hi - (hi - lo) * tail), x)
        x = torch.where(lower, lo + torch.exp(u), x)
        x = torch.where(upper, hi - torch.exp(u), x)
        return torch.minimum(torch.maximum(x, self._inner(self.lo, self.hi, x)), self._inner(self.hi, self.lo, x))

    @staticmethod
    def _inner(bound: Tensor, toward: Tensor, like: Tensor) -> Tensor:
        """The representable number next to ``bound`` in the direction of ``toward``, in ``like``'s dtype; the
        largest finite number of that sign for an infinite bound."""
        bound, toward = bound.to(like.dtype), toward.to(like.dtype)
        big = torch.finfo(like.dtype).max
        finite = torch.nextafter(bound, toward)
        big = torch.full_like(bound, big)
        return torch.where(torch.isfinite(bound), finite, torch.where(bound > 0, big, -big))

    def inverse(self, x: Tensor) -> Tensor:
        """Map ``x`` inside the support to ``u``; points on or outside the boundary are clipped just inside."""
        both, lower, upper = self._kinds
        lo, hi = self._safe(self.lo, both | lower), self._safe(self.hi, both | upper)
        width = torch.where(both, hi - lo, torch.ones_like(hi))
        u = x
        if self.interval == "logit":
            p = ((x - lo) / width).clamp(1e-6, 1 - 1e-6)
            u = torch.where(both, torch.log(p) - torch.log1p(-p), u)
        else:  # the distance to the nearer edge, so values next to the upper bound keep their precision
            tiny = torch.finfo(x.dtype).tiny  # |u| <= 13 in float32
            p, q = ((x - lo) / width).clamp(tiny, 1), ((hi - x) / width).clamp(tiny, 1)
            z = special.ndtri(torch.minimum(p, q))  # <= 0: minus the distance in u from the centre
            u = torch.where(both, torch.where(p <= q, z, -z), u)
        u = torch.where(lower, torch.log((x - lo).clamp_min(1e-12)), u)
        u = torch.where(upper, torch.log((hi - x).clamp_min(1e-12)), u)
        return u

    def log_abs_det(self, u: Tensor) -> Tensor:
        """``log|det dx/du|`` at ``u``, shape ``(n,)``."""
        both, lower, upper = self._kinds
        width = torch.where(both, self.hi - self.lo, torch.ones_like(self.hi))
        per_dim = torch.zeros_like(u)
        if self.interval == "logit":
            per_dim = torch.where(both, torch.log(width) + F.logsigmoid(u) + F.logsigmoid(-u), per_dim)
        else:  # log of (hi - lo) * phi(u), the standard normal density
            per_dim = torch.where(both, torch.log(width) - 0.5 * u**2 - 0.5 * math.log(2 * math.pi), per_dim)
        per_dim = torch.where(lower | upper, u, per_dim)
        return per_dim.sum(-1)

    def contains(self, x: Tensor) -> Tensor:
        """Boolean ``(n,)``: whether each row lies inside the closed support."""
        return ((x >= self.lo) & (x <= self.hi)).all(-1)


class Standardize(nn.Module):
    """Affine standardisation ``(v - mean) / std`` with statistics stored as buffers (device follows the model).

    Example:
        >>> s = Standardize(2).fit(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
        >>> s.mean.tolist(), s.std.tolist(), s(torch.tensor([[2.0, 10.0]])).tolist()
        ([1.0, 20.0], [1.0, 10.0], [[1.0, -1.0]])
    """

    def __init__(self, dim: int | tuple[int, ...]):
        super().__init__()
        shape = (dim,) if isinstance(dim, int) else tuple(dim)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    @torch.no_grad()
    def fit(self, data: Tensor, mask: Tensor | None = None) -> Standardize:
        """Fit mean/std over the leading axis of ``data`` ``(n, ...)``; set rows are weighted by ``mask`` ``(n, K)``."""
        if mask is not None:
            w = mask.to(data.dtype).unsqueeze(-1)  # (n, K, 1)
            count = w.sum((0, 1)).clamp_min(1)
            mean = (data * w).sum((0, 1)) / count
            var = (((data - mean) ** 2) * w).sum((0, 1)) / count
        else:
            mean, var = data.mean(0), data.var(0, unbiased=False)
        std = var.sqrt()
        std = torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))  # constant dims
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.copy_(std.reshape(self.std.shape))
        return self

    def forward(self, v: Tensor) -> Tensor:
        return (v - self.mean) / self.std

    def inverse(self, v: Tensor) -> Tensor:
        return v * self.std + self.mean

    def log_abs_det(self) -> Tensor:
        """``log|det d(standardised)/dv|`` (a scalar): ``-sum(log std)``."""
        return -torch.log(self.std).sum()


LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the last axis, shape ``(n,)``."""
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


class LinearGaussian(nn.Module):
    """Conditional affine map ``w = L^-1 (v - A f - b)`` fitted by ridge regression of ``v`` on features ``f``.

    ``v`` ``(n, D)`` are standardised parameters and ``f`` ``(n, F)`` standardised observation features. The fit is the
    linear-Gaussian model ``v | f ~ N(A^T f + b, L L^T)``: ``A`` by ridge regression (penalty ``ridge`` times ``n`` on
    the centred, standardised features), ``L`` the Cholesky factor of the residual covariance. A flow on ``w`` then
    only has to learn how the posterior departs from this model: a linear-Gaussian posterior (the Gaussian linear
    task) is ``N(0, I)`` in ``w`` already, and a posterior much narrower than the prior is no longer a narrow target.
    ``fit(..., whiten=False)`` keeps ``L = I`` and only subtracts the linear prediction.
    The constants are buffers (fitted once on training data, like :class:`Standardize`, not trained), and the map is
    exact: ``log|dw/dv| = -sum(log diag L)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> f = torch.randn(4000, 3, generator=g); v = f[:, :2] + 0.5 * torch.randn(4000, 2, generator=g)
        >>> lg = LinearGaussian(3, 2).fit(v, f)
        >>> w = lg(v, lg.mean(f)); [round(float(s), 1) for s in w.std(0)]
        [1.0, 1.0]
    """

    def __init__(self, feature_dim: int, dim: int):
        super().__init__()
        self.register_buffer("A", torch.zeros(feature_dim, dim))
        self.register_buffer("b", torch.zeros(dim))
        self.register_buffer("L", torch.eye(dim))
        self.register_buffer("L_inv", torch.eye(dim))

    @torch.no_grad()
    def fit(self, v: Tensor, f: Tensor, ridge: float = 1e-3, whiten: bool = True) -> LinearGaussian:
        """Fit on ``v`` ``(n, D)`` and ``f`` ``(n, F)`` (in float64); returns ``self``. ``whiten=False`` keeps
        ``L = I``: the map then only subtracts the linear prediction."""
        v64, f64 = v.double(), f.double()
        n, D = v64.shape
        eye = torch.eye(D, dtype=torch.float64, device=v64.device)
        fm, vm = f64.mean(0), v64.mean(0)
        fc, vc = f64 - fm, v64 - vm
        gram = fc.T @ fc + ridge * n * torch.eye(fc.shape[1], dtype=torch.float64, device=fc.device)
        A = torch.linalg.solve(gram, fc.T @ vc)
        resid = vc - fc @ A
        cov = resid.T @ resid / max(n - 1, 1)
        cov = cov + 1e-6 * cov.diagonal().mean().clamp_min(1e-12) * eye
        L = torch.linalg.cholesky(cov) if whiten else eye
        self.A.copy_(A)
        self.b.copy_(vm - fm @ A)
        self.L.copy_(L)
        self.L_inv.copy_(torch.linalg.solve_triangular(L, eye, upper=False))
        return self

    def mean(self, f: Tensor) -> Tensor:
        """The linear prediction ``A^T f + b`` ``(n, D)`` for features ``f`` ``(n, F)``."""
        return f @ self.A + self.b

    def forward(self, v: Tensor, mean: Tensor) -> Tensor:
        """``w = L^-1 (v - mean)`` for rows ``v`` ``(N, D)`` and ``mean`` ``(N, D)`` (or broadcastable)."""
        return (v - mean) @ self.L_inv.T

    def inverse(self, w: Tensor, mean: Tensor) -> Tensor:
        return mean + w @ self.L.T

    def log_abs_det(self) -> Tensor:
        """``log|det dw/dv|`` (a scalar): ``-sum(log diag L)``."""
        return -torch.log(self.L.diagonal()).sum()
