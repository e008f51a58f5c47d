"""A diagnostics report of a posterior on test simulations: metrics, a table and figures, written on request.

:func:`report` draws posterior samples for test observations whose ground-truth parameters are known (drawn from
the prior, their observations simulated: the setting of SBC) and computes, from the same samples, the calibration
error and curves, SBC ranks with uniformity p-values, posterior z-scores and contraction, the error of a point
estimate and, given the simulator, the re-simulation errors. ``sbi-inn diagnose`` is this function plus reading
and writing files.

References:
    thesis sec. 4.2.2 (calibration error, re-simulation error, Table 4.1), sec. 4.2.3 (MAP error, Table 4.2,
    calibration curves of Fig. 4.10); Talts et al. (2018) (SBC); Schad, Betancourt & Vasishth (2021) (z-score and
    contraction).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from sbi_inn.diagnostics.calibration import calibration_curve, calibration_summary, sbc_ranks, sbc_uniformity
from sbi_inn.diagnostics.compare import to_markdown
from sbi_inn.diagnostics.metrics import (
    as_tensor,
    map_error,
    map_error_per_parameter,
    map_resimulation_error,
    point_estimate,
    posterior_contraction,
    posterior_zscore,
    resimulation_error,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FILES", "POINT_ESTIMATES", "Report", "report"]

POINT_ESTIMATES = ("auto", "mean_shift", "median", "mean")
_FIGURES = ("calibration", "sbc", "corner")
FILES = ("metrics.json", "metrics.csv", "metrics.md", *(f"{name}.png" for name in _FIGURES))  # what write() writes


@dataclass(frozen=True)
class Report:
    """What :func:`report` computed.

    Attributes:
        metrics: JSON-ready dict (NaN and inf as ``None``): the caller's ``info`` first, then the scalar metrics,
            per-parameter dicts keyed by parameter name, the calibration curve and ``notes``.
        table: one row per parameter plus ``all`` (pooled over parameters); columns ``calib_median``,
            ``calib_mean``, ``calib_signed``, ``sbc_p``, ``z_mean``, ``z_std``, ``contraction``, ``map_rmse`` and,
            with a simulator, ``resim_mean`` and ``resim_median`` (``all`` only); columns without values dropped.
        figures: ``"calibration"``, ``"sbc"`` and ``"corner"`` (first observation) -> matplotlib figure.
        notes: remarks a reader of the numbers needs (the caller's and this function's).
        legend: what the table's rows and columns mean.
    """

    metrics: dict
    table: pd.DataFrame
    figures: dict[str, Figure]
    notes: tuple[str, ...]
    legend: str

    @property
    def markdown(self) -> str:
        """The text of ``metrics.md``: the table, its legend and the notes."""
        notes = "".join(f"\n- {note}" for note in self.notes)
        return to_markdown(self.table, digits=3) + "\n\n" + self.legend + "\n" + notes + "\n"

    def write(self, folder, *, overwrite: bool = False) -> list[Path]:
        """Write ``metrics.json``, ``metrics.csv``, ``metrics.md`` and one PNG per figure into ``folder`` (created).

        Raises:
            FileExistsError: when one of these files exists and ``overwrite`` is false (nothing is written then).

        Returns:
            the paths written, in :data:`FILES` order.
        """
        out = Path(folder)
        paths = [out / name for name in FILES]
        existing = [p for p in paths if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} exists (the report would overwrite {len(existing)} file"
                                  f"{'s' if len(existing) > 1 else ''} in {out}); pass overwrite=True to replace "
                                  f"them")
        out.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(json.dumps(self.metrics, indent=2) + "\n")
        self.table.to_csv(paths[1], index_label="parameter")
        paths[2].write_text(self.markdown)
        for name in _FIGURES:
            self.figures[name].savefig(out / f"{name}.png", dpi=150, bbox_inches="tight")
        return paths


def report(posterior, x, y, *, sizes=None, simulate: Callable | None = None, prior_samples=None,
           num_samples: int = 1000, point: str = "auto", seed: int = 0, show_progress: bool = True,
           param_units: Sequence[str] | None = None, source: str | None = None, info: Mapping | None = None,
           notes: Sequence[str] = ()) -> Report:
    """Diagnose ``posterior`` on test observations ``y`` with known ground truths ``x``.

    Args:
        posterior: an object with ``param_names`` (``D`` names) and ``sample_batched((n,), Y, sizes=, seed=,
            show_progress=) -> (n, B, D)``, e.g. a :class:`sbi_inn.Posterior`.
        x: ground-truth parameters ``(B, D)``, drawn from the prior.
        y: their simulated observations ``(B, M)`` (sets: ``(B, K, M)`` with ``sizes`` ``(B,)``).
        simulate: ``x (N, D) -> y (N, M)`` for the re-simulation errors (given ``generator=`` when it takes one);
            ``None`` leaves them out. Not for set-valued observations.
        prior_samples: prior draws ``(N, D)``: their variance is the prior variance of the contraction, and the
            corner plot shades them; ``None`` leaves the contraction out.
        num_samples: posterior samples per observation (at least 2).
        point: point estimate for the MAP error: ``"mean_shift"``, ``"median"``, ``"mean"``, or ``"auto"``
            (mean shift up to 100 observations, else the median).
        seed: seed of the posterior samples and of the re-simulations.
        show_progress: a progress bar while sampling.
        param_units: units of the ``D`` parameters for the corner plot's axes.
        source: where the observations come from, for the legend (e.g. ``"test.h5 (split all)"``).
        info: JSON-ready entries placed first in ``metrics`` (model and data paths, the simulator).
        notes: remarks to carry into the report.

    Returns:
        a :class:`Report`; ``Report.write(folder)`` writes it.
    """
    names = list(posterior.param_names)
    d = len(names)
    x = as_tensor(x, "x", (2,), "(B, D)").cpu()
    b = x.shape[0]
    if x.shape[1] != d:
        raise ValueError(f"x has {x.shape[1]} parameters per row but the posterior infers {d} ({', '.join(names)})")
    if len(y) != b:
        raise ValueError(f"x holds {b} ground truths but y holds {len(y)} observations")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (calibration needs quantiles of several draws), got "
                         f"{num_samples!r}")
    if point not in POINT_ESTIMATES:
        raise ValueError(f"point must be one of {', '.join(map(repr, POINT_ESTIMATES))}, got {point!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if simulate is not None and (sizes is not None or getattr(posterior, "is_set_valued", False)):
        raise ValueError("the re-simulation error compares vector observations; pass simulate=None for set-valued "
                         "observations")
    prior = None if prior_samples is None else as_tensor(prior_samples, "prior_samples", (2,), "(N, D)").cpu()
    if prior is not None and prior.shape[1] != d:
        raise ValueError(f"prior_samples must have shape (N, {d}), got {tuple(prior.shape)}")
    if prior is not None and len(prior) < 2:
        raise ValueError(f"prior_samples needs at least 2 rows for a variance, got {len(prior)}")
    notes = list(notes)
    if prior is None:
        notes.append("contraction left out: no prior samples given")

    n = num_samples
    t0 = time.perf_counter()
    samples = posterior.sample_batched((n,), y, sizes=sizes, seed=seed, show_progress=show_progress).cpu()
    sampling_seconds = time.perf_counter() - t0

    calib = calibration_summary(samples, x)
    alphas, inl = calibration_curve(samples, x)
    ranks = sbc_ranks(samples, x)
    sbc_p = sbc_uniformity(ranks, n)
    z = posterior_zscore(samples, x)
    nan = torch.full((d,), math.nan)
    contraction = nan[None] if prior is None else posterior_contraction(samples, prior.var(0))
    point = point if point != "auto" else ("mean_shift" if b <= 100 else "median")
    x_hat = point_estimate(samples, point)
    resim = map_resim = None
    if simulate is not None:
        gen = torch.Generator().manual_seed(seed)
        resim = resimulation_error(simulate, samples, y, generator=gen)
        map_resim = map_resimulation_error(simulate, x_hat, y, generator=gen)

    per_param = {
        "calib_median": calib["median_per_parameter"], "calib_mean": calib["mean_per_parameter"],
        "calib_signed": calib["signed_mean_per_parameter"], "sbc_p": sbc_p,
        "z_mean": z.mean(0), "z_std": z.std(0) if b > 1 else nan,
        "contraction": contraction.mean(0), "map_rmse": map_error_per_parameter(x_hat, x),
    }
    overall = {"calib_median": calib["median"], "calib_mean": calib["mean"], "calib_signed": calib["signed_mean"],
               "sbc_p": float(sbc_p.min()), "z_mean": float(z.mean()),
               "z_std": float(z.std()) if z.numel() > 1 else math.nan,
               "contraction": float(contraction.mean()), "map_rmse": map_error(x_hat, x),
               "resim_mean": None if resim is None else float(resim.mean()),
               "resim_median": None if resim is None else float(resim.median())}
    metrics = {
        **dict(info or {}), "num_observations": b, "num_samples": n, "seed": seed,
        "calibration_error_median": calib["median"], "calibration_error_mean": calib["mean"],
        "calibration_error_signed": calib["signed_mean"], "calibration_error_max": calib["max"],
        "calibration_error_per_parameter": _by_name(names, calib["median_per_parameter"]),
        "calibration_curve": {"alphas": alphas.tolist(),
                              "alpha_inl": {k: inl[:, j].tolist() for j, k in enumerate(names)}},
        "sbc_p_values": _by_name(names, sbc_p), "sbc_min_p_value": float(sbc_p.min()),
        "zscore_mean": _by_name(names, z.mean(0)), "zscore_std": _by_name(names, per_param["z_std"]),
        "contraction_mean": None if prior is None else _by_name(names, contraction.mean(0)),
        "point_estimate": point, "map_error": overall["map_rmse"],
        "map_error_per_parameter": _by_name(names, per_param["map_rmse"]),
        "resimulation_error_mean": overall["resim_mean"], "resimulation_error_median": overall["resim_median"],
        "map_resimulation_error": None if map_resim is None else float(map_resim.mean()),
        "sampling_seconds": sampling_seconds, "notes": notes,
    }
    legend = ("Rows: each parameter, then `all` (pooled over parameters; its `sbc_p` is the smallest p-value and "
              f"its `map_rmse` the RMSE over all parameters). {b} test observations"
              f"{f' of {source}' if source else ''}, {n} posterior samples each; point estimate: {point}. "
              "`calib_*`: |alpha_inl - alpha| over 99 levels (signed: alpha_inl - alpha, negative = "
              "over-confident); `sbc_p`: chi-square uniformity of SBC ranks; `z_*`: posterior z-scores; `resim_*`: "
              "distance of re-simulated samples to the observation.")
    return Report(metrics=_plain(metrics), table=_table(names, per_param, overall),
                  figures=_figures(samples, x, alphas, inl, ranks, n, names, prior, param_units),
                  notes=tuple(notes), legend=legend)


def _figures(samples, x, alphas, inl, ranks, n, names, prior, units) -> dict:
    """Calibration curves, SBC rank histograms and the corner plot of the first observation."""
    from sbi_inn import plots

    units = list(units) if units is not None and len(units) == len(names) else None
    return {
        "calibration": plots.calibration_plot(alphas, inl - alphas[:, None], names),
        "sbc": plots.sbc_plot(ranks, n, param_names=names),
        "corner": plots.corner_plot({"posterior": samples[:, 0]}, truth=x[0],
                                    prior_samples=None if prior is None else prior[:5000], param_names=names,
                                    units=units),
    }


def _by_name(names, values) -> dict:
    return {k: float(v) for k, v in zip(names, values.tolist())}


def _table(names, per_param: dict, overall: dict) -> pd.DataFrame:
    """One row per parameter plus ``all``; the re-simulation columns are filled for ``all`` only."""
    rows = {k: {c: float(v[j]) for c, v in per_param.items()} for j, k in enumerate(names)}
    rows["all"] = {c: (math.nan if v is None else v) for c, v in overall.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "parameter"
    return table.dropna(axis=1, how="all")


def _plain(obj):
    """JSON-safe copy: NaN and inf become ``None``, tuples lists."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
