"""Calibration of posterior samples over a test set: central-interval calibration, SBC ranks, HPD coverage.

Shapes follow ``sample_batched``: samples ``(n, B, D)``, ground truths ``(B, D)``.

Calibration error (thesis sec. 4.2.2; Fig. 4.10 of sec. 4.2.3): for a confidence level ``alpha`` in (0, 1), the
``alpha``-central interval of a marginal posterior runs from its sample quantile ``(1 - alpha) / 2`` to
``(1 + alpha) / 2``. ``alpha_inl`` is the fraction of test observations whose ground truth lies inside that
interval, per parameter. A calibrated posterior has ``alpha_inl = alpha``; ``alpha_inl - alpha < 0`` means
over-confident (intervals too narrow), ``> 0`` under-confident. The calibration error is the median of
``|alpha_inl - alpha|``; with several parameters we pool all ``(alpha, parameter)`` pairs into one median.

References:
    thesis sec. 4.2.2 (definition of the calibration error, Table 4.1), sec. 4.2.3 (Table 4.2, Fig. 4.10); Talts et
    al. (2018), "Validating Bayesian inference algorithms with simulation-based calibration"; expected coverage of
    highest-density regions as in Hermans et al. (2022), "A trust crisis in simulation-based inference?".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from sbi_inn.diagnostics.metrics import as_tensor, check_samples, check_truth

__all__ = [
    "default_alphas",
    "coverage_indicators",
    "calibration_curve",
    "calibration_error",
    "calibration_summary",
    "sbc_ranks",
    "sbc_uniformity",
    "expected_coverage",
]

_MAX_ELEMENTS = 2**24


def default_alphas(num: int = 99) -> Tensor:
    """``num`` evenly spaced confidence levels strictly inside (0, 1): ``0.01, 0.02, ..., 0.99`` for 99."""
    return torch.arange(1, num + 1, dtype=torch.float64) / (num + 1)


def _check_alphas(alphas) -> Tensor:
    if alphas is None:
        return default_alphas()
    a = as_tensor(alphas, "alphas", (1,), "(A,)").to(torch.float64)
    if not ((a > 0) & (a < 1)).all():
        raise ValueError(f"alphas must lie strictly between 0 and 1, got min {a.min().item()}, max {a.max().item()}")
    return a


def _sorted_quantiles(sorted_s: Tensor, q: Tensor) -> Tensor:
    """Linear-interpolation quantiles (numpy's default) of samples sorted along dim 0; ``(Q, ...)``."""
    n = sorted_s.shape[0]
    pos = q.to(sorted_s.device, torch.float64) * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo).to(sorted_s.dtype).reshape(-1, *([1] * (sorted_s.ndim - 1)))
    return sorted_s[lo] + frac * (sorted_s[hi] - sorted_s[lo])


def coverage_indicators(samples, x_true, alphas=None) -> Tensor:
    """Whether each ground truth lies inside each ``alpha``-central marginal interval; bool ``(B, A, D)``.

    The per-observation building block of :func:`calibration_curve`; averaging over ``B`` gives ``alpha_inl``.
    Bootstrapping over its first axis puts error bars on the calibration error cheaply.
    """
    s = check_samples(samples)
    x = check_truth(x_true, s)
    a = _check_alphas(alphas)
    q = torch.cat([(1 - a) / 2, (1 + a) / 2])
    n, b, d = s.shape
    step = max(1, _MAX_ELEMENTS // (n * d))
    out = torch.empty(b, len(a), d, dtype=torch.bool, device=s.device)
    for start in range(0, b, step):
        chunk = s[:, start:start + step].sort(0).values
        qs = _sorted_quantiles(chunk, q)                                  # (2A, Bc, D)
        lo, hi = qs[: len(a)], qs[len(a):]
        xt = x[start:start + step][None]
        out[start:start + step] = ((lo <= xt) & (xt <= hi)).transpose(0, 1)
    return out


def calibration_curve(samples, x_true, alphas=None) -> tuple[Tensor, Tensor]:
    """Inlier fraction ``alpha_inl`` of the ``alpha``-central marginal intervals over the test set.

    Args:
        samples: posterior samples ``(n, B, D)``.
        x_true: ground truths ``(B, D)``.
        alphas: confidence levels ``(A,)`` in (0, 1); default 99 levels ``0.01 ... 0.99``.

    Returns:
        ``(alphas (A,), alpha_inl (A, D))``. The calibration curve of thesis Fig. 4.10 is
        ``alpha_inl - alphas[:, None]`` (negative = over-confident).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> alphas, inl = calibration_curve(torch.randn(200, 500, 1, generator=g), torch.randn(500, 1, generator=g))
        >>> inl.shape
        torch.Size([99, 1])
    """
    a = _check_alphas(alphas)
    inl = coverage_indicators(samples, x_true, a)
    return a, inl.to(torch.float64).mean(0)


def _reduce(values: Tensor, reduce: str) -> float:
    if reduce == "median":
        return float(values.median()) if values.numel() % 2 else float(values.quantile(0.5))
    if reduce == "mean":
        return float(values.mean())
    raise ValueError(f"reduce must be 'median' or 'mean', got {reduce!r}")


def calibration_error(samples, x_true, alphas=None, *, reduce: str = "median",
                      params: Sequence[int] | None = None) -> float:
    """Calibration error: median (or mean) of ``|alpha_inl - alpha|`` over all ``alpha`` and parameters.

    All ``(alpha, parameter)`` pairs are pooled into one median (the thesis reports one number for all
    parameters). ``params`` restricts the pool to a subset of parameter indices.

    Args:
        samples: posterior samples ``(n, B, D)``.
        x_true: ground truths ``(B, D)``.
        alphas: confidence levels ``(A,)``; default 99 levels ``0.01 ... 0.99``.
        reduce: ``"median"`` (the thesis' number) or ``"mean"``.
        params: parameter indices to include (default all).

    Returns:
        the error as a fraction (multiply by 100 for the thesis' percentages).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x_true = torch.randn(1000, 1, generator=g)            # truths from the prior N(0, 1)
        >>> prior_draws = torch.randn(200, 1000, 1, generator=g)  # an uninformative posterior: calibrated
        >>> calibration_error(prior_draws, x_true) < 0.02
        True
        >>> calibration_error(0.5 * prior_draws, x_true) > 0.1    # intervals half as wide: over-confident
        True

    References:
        thesis sec. 4.2.2 ("the median of |alpha_inl - alpha| over all alpha"), Tables 4.1 and 4.2.
    """
    a, inl = calibration_curve(samples, x_true, alphas)
    dev = inl - a[:, None]
    if params is not None:
        dev = dev[:, list(params)]
    return _reduce(dev.abs(), reduce)


def calibration_summary(samples, x_true, alphas=None) -> dict:
    """Calibration error in several reductions.

    Returns:
        a dict with ``median`` and ``mean`` of ``|alpha_inl - alpha|`` (pooled over alphas and parameters),
        ``signed_mean`` (mean of ``alpha_inl - alpha``; negative = over-confident), ``max``, and per-parameter
        tensors ``(D,)`` ``median_per_parameter``, ``mean_per_parameter``, ``signed_mean_per_parameter``.
    """
    a, inl = calibration_curve(samples, x_true, alphas)
    dev = inl - a[:, None]
    absdev = dev.abs()
    return {
        "median": _reduce(absdev, "median"),
        "mean": float(absdev.mean()),
        "signed_mean": float(dev.mean()),
        "max": float(absdev.max()),
        "median_per_parameter": absdev.quantile(0.5, dim=0),
        "mean_per_parameter": absdev.mean(0),
        "signed_mean_per_parameter": dev.mean(0),
    }


# -- simulation-based calibration ------------------------------------------------------------------------------------
def sbc_ranks(samples, x_true) -> Tensor:
    """SBC rank of each ground truth among its ``n`` posterior samples: ``#{samples < truth}``, int64 ``(B, D)``.

    For a calibrated posterior, and ground truths drawn from the prior with their observations simulated, the
    ranks are uniform on ``{0, ..., n}`` (Talts et al. 2018).

    Example:
        >>> samples = torch.tensor([[[0.0]], [[1.0]], [[2.0]]])  # n = 3 samples of B = 1 observation, D = 1
        >>> sbc_ranks(samples, torch.tensor([[1.5]])).tolist()
        [[2]]
    """
    s = check_samples(samples, min_draws=1)
    x = check_truth(x_true, s)
    return (s < x[None]).sum(0)


def sbc_uniformity(ranks, n: int, *, test: str = "chi2", num_bins: int | None = None, seed: int = 0) -> Tensor:
    """p-values of a uniformity test of SBC ranks, one per parameter, shape ``(D,)``.

    Args:
        ranks: ranks ``(B, D)`` (or ``(B,)``) in ``{0, ..., n}`` from :func:`sbc_ranks`.
        n: number of posterior samples the ranks were computed with.
        test: ``"chi2"``: Pearson chi-square on ``num_bins`` bins of consecutive ranks (expected counts exact
            for the discrete uniform); ``"ks"``: Kolmogorov-Smirnov on the jittered normalised ranks
            ``(rank + U) / (n + 1)``, which are exactly U(0, 1) under calibration (jitter seeded by ``seed``).
        num_bins: default ``min(20, n + 1, max(2, B // 5))`` (at least about five expected counts per bin).

    Returns:
        p-values ``(D,)``; small values reject uniformity (mis-calibration).
    """
    r = as_tensor(ranks, "ranks", (1, 2), "(B, D)").to(torch.float64)
    if r.ndim == 1:
        r = r[:, None]
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if (r < 0).any() or (r > n).any() or (r != r.round()).any():
        raise ValueError(f"ranks must be integers in [0, n] = [0, {n}], got range "
                         f"[{r.min().item()}, {r.max().item()}]")
    b, d = r.shape
    r_np = r.cpu().numpy()
    if test == "chi2":
        k = num_bins if num_bins is not None else min(20, n + 1, max(2, b // 5))
        if not 2 <= k <= n + 1:
            raise ValueError(f"num_bins must be between 2 and n + 1 = {n + 1}, got {k}")
        edges = np.round(np.linspace(0, n + 1, k + 1)).astype(int)            # bins of consecutive ranks
        expected = b * np.diff(edges) / (n + 1)
        p = []
        for j in range(d):
            counts = np.histogram(r_np[:, j], bins=edges - 0.5)[0]
            p.append(stats.chisquare(counts, expected).pvalue)
        return torch.tensor(p, dtype=torch.float64)
    if test == "ks":
        rng = np.random.default_rng(seed)
        u = (r_np + rng.random(r_np.shape)) / (n + 1)
        return torch.tensor([stats.kstest(u[:, j], "uniform").pvalue for j in range(d)], dtype=torch.float64)
    raise ValueError(f"test must be 'chi2' or 'ks', got {test!r}")


# -- expected coverage of highest-density regions ---------------------------------------------------------------------
def expected_coverage(log_prob_samples, log_prob_true, alphas=None) -> tuple[Tensor, Tensor]:
    """Empirical coverage of the posterior's highest-density regions, from log densities.

    The ``alpha`` highest-density region of an observation's posterior holds the points whose log density exceeds
    the ``(1 - alpha)`` quantile of the log densities of its posterior samples; the coverage is the fraction of
    ground truths inside it. Calibrated posteriors give ``coverage = alpha``; below = over-confident.

    Args:
        log_prob_samples: ``log q(x_i | y_b)`` of posterior samples, ``(n, B)``.
        log_prob_true: ``log q(x*_b | y_b)`` of the ground truths, ``(B,)``.
        alphas: credibility levels ``(A,)``; default 99 levels ``0.01 ... 0.99``.

    Returns:
        ``(alphas (A,), coverage (A,))``.
    """
    lp = as_tensor(log_prob_samples, "log_prob_samples", (2,), "(n, B)")
    lt = as_tensor(log_prob_true, "log_prob_true", (1,), "(B,)").to(device=lp.device, dtype=lp.dtype)
    if lp.shape[1] != lt.shape[0]:
        raise ValueError(f"log_prob_true must have shape (B,) = ({lp.shape[1]},) to match log_prob_samples of "
                         f"shape {tuple(lp.shape)}, got {tuple(lt.shape)}")
    if lp.shape[0] < 2:
        raise ValueError(f"log_prob_samples needs at least 2 samples per observation, got shape {tuple(lp.shape)}")
    a = _check_alphas(alphas)
    thresholds = _sorted_quantiles(lp.sort(0).values, 1 - a)                   # (A, B)
    return a, (lt[None] >= thresholds).to(torch.float64).mean(1)
