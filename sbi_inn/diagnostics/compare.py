"""One table comparing posterior estimators on a test set (thesis Tables 4.1 and 4.2), as a pandas DataFrame.

Rows are methods; every metric column ``X`` has a bootstrap standard error ``X_se`` (resampling test
observations). ``to_markdown`` renders ``X ± X_se``; ``to_csv`` writes the raw numbers.

References:
    thesis sec. 4.2.2 (Table 4.1), sec. 4.2.3 "Error measures" (Table 4.2).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sbi_inn.diagnostics.calibration import coverage_indicators, default_alphas
from sbi_inn.diagnostics.metrics import (
    as_tensor,
    bootstrap,
    check_samples,
    check_truth,
    map_resimulation_error,
    point_estimate,
    resimulation_error,
)
from sbi_inn.diagnostics.two_sample import c2st, mmd

__all__ = ["compare", "to_markdown", "to_csv"]


def _draw(name: str, sampler, y: Tensor, num_samples: int, seed: int) -> Tensor:
    """Samples ``(n, B, D)`` of one method: precomputed, or drawn with ``sampler.sample_batched`` under ``seed``

    (passed as ``seed=`` where ``sample_batched`` takes one, as the package's posteriors do).
    """
    if isinstance(sampler, (Tensor, np.ndarray)):
        s = check_samples(sampler, f"posteriors[{name!r}]")
    elif hasattr(sampler, "sample_batched"):
        try:
            takes_seed = "seed" in inspect.signature(sampler.sample_batched).parameters
        except (TypeError, ValueError):
            takes_seed = False
        with torch.random.fork_rng(devices=[]):     # for samplers drawing from the global RNG
            torch.manual_seed(seed)
            drawn = sampler.sample_batched((num_samples,), y, seed=seed) if takes_seed \
                else sampler.sample_batched((num_samples,), y)
        s = check_samples(drawn, f"posteriors[{name!r}].sample_batched")
    else:
        raise TypeError(f"posteriors[{name!r}] must be samples (n, B, D) or have sample_batched(sample_shape, Y), "
                        f"got {type(sampler).__name__}")
    if s.shape[1] != y.shape[0]:
        raise ValueError(f"posteriors[{name!r}] has samples of shape {tuple(s.shape)}, but y_obs holds "
                         f"B = {y.shape[0]} observations")
    return s


def _mean_se(values: Tensor, num_bootstrap: int, seed: int) -> tuple[float, float]:
    return bootstrap(lambda v: v.mean(), values, num_resamples=num_bootstrap, seed=seed)


def compare(posteriors: Mapping[str, object], y_obs, x_true=None, reference=None, *,
            simulate: Callable | None = None, num_samples: int = 1000, seed: int = 0,
            wall_times: Mapping[str, float] | None = None, simulations_used: Mapping[str, int] | None = None,
            point: str = "mean_shift", two_sample_observations: int | None = None,
            c2st_options: Mapping | None = None, mmd_kernel: str = "imq",
            num_bootstrap: int = 200) -> pd.DataFrame:
    """Evaluate several posteriors on the same test observations.

    Args:
        posteriors: name -> posterior with ``sample_batched(sample_shape, Y) -> (n, B, D)``, or precomputed
            samples ``(n, B, D)``.
        y_obs: test observations ``(B, M)``.
        x_true: their ground-truth parameters ``(B, D)``: adds ``calibration_error`` and ``map_error``.
        reference: reference samples ``(n_ref, B, D)`` (columns ``c2st``, ``mmd``) or a dict name -> samples
            (columns ``c2st_<name>``, ``mmd_<name>``), e.g. from :mod:`sbi_inn.reference`.
        simulate: ``simulate(x (N, D)) -> y (N, M)``: adds ``resim_error_mean``, ``resim_error_median`` (over all
            samples) and ``map_resim_error`` (at the point estimate).
        num_samples: draws per observation for posteriors given as objects.
        seed: seed for sampling, the classifiers of C2ST and the bootstrap.
        wall_times, simulations_used: name -> number; become columns ``wall_time`` and ``simulations``.
        point: point estimate for the MAP columns: ``"mean_shift"`` (thesis), ``"median"`` or ``"mean"``.
        two_sample_observations: compute C2ST/MMD on the first this many observations only (they cost one
            classifier per observation).
        c2st_options: keyword options of :func:`sbi_inn.diagnostics.c2st` (``max_iter``, ``early_stopping``...).
        mmd_kernel: ``"imq"`` or ``"rbf"``.
        num_bootstrap: bootstrap replicates for the ``*_se`` columns.

    Returns:
        DataFrame indexed by method name; C2ST and MMD are averaged over observations, calibration error is the
        pooled median of ``|alpha_inl - alpha|``, ``map_error`` the RMSE over all parameters.
    """
    if not posteriors:
        raise ValueError("posteriors is empty")
    y = as_tensor(y_obs, "y_obs", (2,), "(B, M)")
    samples = {name: _draw(name, p, y, num_samples, seed) for name, p in posteriors.items()}
    dims = {s.shape[2] for s in samples.values()}
    if len(dims) != 1:
        raise ValueError(f"posteriors disagree on the parameter dimension D: {sorted(dims)}")
    expected = (y.shape[0], dims.pop())

    if reference is None:
        refs = {}
    elif isinstance(reference, Mapping):
        refs = {f"_{k}": check_samples(v, f"reference[{k!r}]") for k, v in reference.items()}
    else:
        refs = {"": check_samples(reference, "reference")}
    for key, r in refs.items():
        if r.shape[1:] != expected:
            raise ValueError(f"reference{key} has shape {tuple(r.shape)}, expected (n_ref, B, D) with "
                             f"(B, D) = {expected}")

    alphas = default_alphas()
    alpha_col = alphas[:, None]
    c2st_opts = dict(c2st_options or {})
    rows = {}
    for name, s in samples.items():
        row: dict[str, float] = {}
        k = s.shape[1] if two_sample_observations is None else min(two_sample_observations, s.shape[1])
        for key, r in refs.items():
            r = r.to(s)
            acc = torch.tensor([c2st(s[:, i], r[:, i], seed=seed, **c2st_opts) for i in range(k)])
            dist = torch.tensor([mmd(s[:, i], r[:, i], kernel=mmd_kernel) for i in range(k)])
            row[f"c2st{key}"], row[f"c2st{key}_se"] = _mean_se(acc, num_bootstrap, seed)
            row[f"mmd{key}"], row[f"mmd{key}_se"] = _mean_se(dist, num_bootstrap, seed)
        x_hat = point_estimate(s, point) if (simulate is not None or x_true is not None) else None
        if simulate is not None:
            d = resimulation_error(simulate, s, y)                                   # (n, B)
            row["resim_error_mean"], row["resim_error_mean_se"] = bootstrap(
                lambda v: v.mean(), d, num_resamples=num_bootstrap, seed=seed, axes=[1])
            row["resim_error_median"], row["resim_error_median_se"] = bootstrap(
                lambda v: v.median(), d, num_resamples=num_bootstrap, seed=seed, axes=[1])
            row["map_resim_error"], row["map_resim_error_se"] = _mean_se(
                map_resimulation_error(simulate, x_hat, y), num_bootstrap, seed)
        if x_true is not None:
            x = check_truth(x_true, s)
            inl = coverage_indicators(s, x, alphas).to(torch.float64)              # (B, A, D)
            row["calibration_error"], row["calibration_error_se"] = bootstrap(
                lambda v: (v.mean(0) - alpha_col.to(v)).abs().quantile(0.5), inl,
                num_resamples=num_bootstrap, seed=seed, axes=[0])
            sq = (x_hat - x).square().sum(-1)                                        # (B,)
            row["map_error"], row["map_error_se"] = bootstrap(
                lambda v: v.mean().sqrt(), sq, num_resamples=num_bootstrap, seed=seed)
        if wall_times is not None:
            row["wall_time"] = float(wall_times.get(name, math.nan))
        if simulations_used is not None:
            row["simulations"] = float(simulations_used.get(name, math.nan))
        rows[name] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "method"
    return df


def _fmt(v: float, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if float(v).is_integer() and abs(v) >= 10**digits:
        return f"{int(v)}"
    return f"{v:.{digits}g}"


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of ``df``; a column ``X`` with a partner ``X_se`` is shown as ``X ± X_se``.

    Written by hand (``DataFrame.to_markdown`` needs the optional ``tabulate`` package).
    """
    cols = [c for c in df.columns if not (str(c).endswith("_se") and str(c)[:-3] in df.columns)]
    header = [df.index.name or ""] + [str(c) for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
    for idx, rec in df.iterrows():
        cells = [str(idx)]
        for c in cols:
            text = _fmt(rec[c], digits)
            se = f"{c}_se"
            if se in df.columns and text and not math.isnan(rec[se]):
                text = f"{text} ± {_fmt(rec[se], digits - 1 if digits > 1 else 1)}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(df: pd.DataFrame, path) -> None:
    """Write ``df`` as CSV (index column ``method``)."""
    df.to_csv(path, index_label=df.index.name or "method")
