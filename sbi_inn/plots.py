"""Figures of posteriors and diagnostics (the only module of sbi_inn that imports matplotlib and corner).

Plots draw what :mod:`sbi_inn.diagnostics` computes; they do not compute metrics themselves. Each function returns
a ``matplotlib.figure.Figure`` and saves it when ``path`` is given. Figures are created as plain ``Figure``
objects rendered by the Agg canvas, so no pyplot state or global backend is touched (Jupyter still displays a
returned figure), and nothing needs closing.

References:
    thesis sec. 4.2.1, Fig. 4.2 (Gaussian-mixture samples); sec. 4.2.2, Fig. 4.6 (arm configurations); sec. 4.2.3,
    Fig. 4.8 (posterior marginals with prior and truth) and Fig. 4.10 (calibration curves); Talts et al. (2018)
    (SBC rank histograms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

__all__ = ["corner_plot", "calibration_plot", "sbc_plot", "arm_plot", "mixture_scatter"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
PRIOR_COLOR = "0.6"


def _np(value, name: str, ndims: Sequence[int]) -> np.ndarray:
    a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    a = a.astype(np.float64)
    if a.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _figure(**kwargs) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def _labels(d: int, param_names, units) -> list[str]:
    names = list(param_names) if param_names is not None else [f"$x_{{{i + 1}}}$" for i in range(d)]
    if len(names) != d:
        raise ValueError(f"param_names has {len(names)} entries for D = {d} parameters")
    if units is None:
        return names
    if len(units) != d:
        raise ValueError(f"units has {len(units)} entries for D = {d} parameters")
    return [f"{n} [{u}]" if u else n for n, u in zip(names, units)]


def corner_plot(samples: Mapping[str, object], *, truth=None, prior_samples=None, param_names=None, units=None,
                path=None, bins: int = 30, quantile_range: float = 0.995) -> Figure:
    """Pairwise marginals of several posteriors overlaid in distinct colours (thesis sec. 4.2.3, Fig. 4.8).

    Args:
        samples: name -> posterior samples ``(n, D)`` (one observation); a single array is named "posterior".
        truth: ground truth ``(D,)``, drawn as dashed black lines.
        prior_samples: prior draws ``(N, D)``, shaded grey underneath.
        param_names, units: axis labels (units in brackets).
        path: save the figure there.
        bins: histogram bins.
        quantile_range: each axis spans this central fraction of all posterior samples (and the truth).

    Returns:
        the figure (``D x D`` axes, legend at the top right).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> fig = corner_plot({"cINN": torch.randn(500, 2, generator=g)}, truth=torch.zeros(2), param_names=["a", "b"])
        >>> len(fig.axes)
        4
    """
    import corner

    if not isinstance(samples, Mapping):
        samples = {"posterior": samples}
    if not samples:
        raise ValueError("samples is empty")
    arrays = {k: _np(v, f"samples[{k!r}]", (2,)) for k, v in samples.items()}
    dims = {a.shape[1] for a in arrays.values()}
    if len(dims) != 1:
        raise ValueError(f"all sample sets need the same D, got shapes {[a.shape for a in arrays.values()]}")
    d = dims.pop()
    truth_np = None if truth is None else _np(truth, "truth", (1,))
    if truth_np is not None and truth_np.shape != (d,):
        raise ValueError(f"truth must have shape (D,) = ({d},), got {truth_np.shape}")
    prior_np = None if prior_samples is None else _np(prior_samples, "prior_samples", (2,))
    if prior_np is not None and prior_np.shape[1] != d:
        raise ValueError(f"prior_samples must have shape (N, {d}), got {prior_np.shape}")

    pooled = np.concatenate(list(arrays.values()))
    tail = (1 - quantile_range) / 2
    lo, hi = np.quantile(pooled, tail, axis=0), np.quantile(pooled, 1 - tail, axis=0)
    if truth_np is not None:
        lo, hi = np.minimum(lo, truth_np), np.maximum(hi, truth_np)
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    ranges = list(zip(lo - pad, hi + pad))
    labels = _labels(d, param_names, units)

    fig = _figure(figsize=(2.2 * d + 1, 2.2 * d + 1))
    if prior_np is not None:  # shaded density in 2-D, filled histograms in 1-D
        corner.corner(prior_np, bins=bins, range=ranges, labels=labels, fig=fig, color=PRIOR_COLOR,
                      plot_datapoints=False, plot_density=True, plot_contours=False, no_fill_contours=True,
                      hist_kwargs={"density": True, "histtype": "stepfilled", "alpha": 0.35, "color": PRIOR_COLOR})
    handles = []
    for i, (name, a) in enumerate(arrays.items()):
        color = COLORS[i % len(COLORS)]
        corner.corner(a, bins=bins, range=ranges, labels=labels, fig=fig, color=color, plot_datapoints=False,
                      plot_density=False, no_fill_contours=True, levels=(0.68, 0.95),
                      hist_kwargs={"density": True, "color": color, "lw": 1.3}, contour_kwargs={"linewidths": 1.0})
        handles.append(Line2D([], [], color=color, label=f"{name}"))
    axes = np.array(fig.axes).reshape(d, d)
    for j in range(d):      # corner sets each diagonal's y-limit from the last histogram: use the highest one
        ax = axes[j, j]
        top = max((p.get_path().vertices[:, 1].max() for p in ax.patches), default=1.0)
        ax.set_ylim(0, 1.1 * top)
    if truth_np is not None:
        corner.overplot_lines(fig, truth_np, color="k", linestyle="--", linewidth=1.0)
        handles.append(Line2D([], [], color="k", linestyle="--", label="truth"))
    if prior_np is not None:
        handles.append(Line2D([], [], color=PRIOR_COLOR, lw=6, alpha=0.5, label="prior"))
    fig.legend(handles=handles, loc="upper right", frameon=False)
    return _finish(fig, path)


def calibration_plot(alphas, curves, param_names=None, path=None) -> Figure:
    """Calibration curves ``alpha_inl - alpha`` against ``alpha`` (thesis sec. 4.2.3, Fig. 4.10).

    Args:
        alphas: confidence levels ``(A,)`` as returned by ``diagnostics.calibration_curve``.
        curves: calibration curves ``alpha_inl - alpha`` ``(A, D)`` (one line per parameter in one panel), or a
            dict method -> ``(A, D)`` (one panel per parameter, one line per method). Negative = over-confident.
        param_names: names of the ``D`` parameters.
        path: save the figure there.

    Returns:
        the figure (one panel, or one per parameter for a dict of methods).

    Example:
        >>> from sbi_inn.diagnostics import calibration_curve
        >>> g = torch.Generator().manual_seed(0)
        >>> alphas, inl = calibration_curve(torch.randn(100, 50, 2, generator=g), torch.randn(50, 2, generator=g))
        >>> len(calibration_plot(alphas, inl - alphas[:, None], ["a", "b"]).axes)
        1
    """
    a = _np(alphas, "alphas", (1,))
    many = isinstance(curves, Mapping)
    data = {k: _np(v, f"curves[{k!r}]", (1, 2)) for k, v in curves.items()} if many \
        else {"": _np(curves, "curves", (1, 2))}
    data = {k: v[:, None] if v.ndim == 1 else v for k, v in data.items()}
    for k, v in data.items():
        if v.shape[0] != len(a):
            raise ValueError(f"curves{'[' + repr(k) + ']' if k else ''} has {v.shape[0]} rows for {len(a)} alphas")
    d = next(iter(data.values())).shape[1]
    names = _labels(d, param_names, None)
    panels = d if many else 1
    fig = _figure(figsize=(3.6 * panels, 3.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False, sharey=True)[0]
    for ax in axes:
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(r"confidence $\alpha$")
        ax.set_xlim(0, 1)
    axes[0].set_ylabel(r"$\alpha_\mathrm{inl} - \alpha$  (< 0: over-confident)")
    if many:
        for j in range(d):
            for i, (name, v) in enumerate(data.items()):
                axes[j].plot(a, v[:, j], color=COLORS[i % len(COLORS)], label=name)
            axes[j].set_title(names[j])
        axes[0].legend(frameon=False)
    else:
        v = data[""]
        for j in range(d):
            axes[0].plot(a, v[:, j], color=COLORS[j % len(COLORS)], label=names[j])
        axes[0].legend(frameon=False)
    return _finish(fig, path)


def sbc_plot(ranks, n: int, path=None, *, param_names=None, num_bins: int | None = None,
             confidence: float = 0.99) -> Figure:
    """SBC rank histograms and ECDF differences, with ``confidence`` bands of a uniform distribution.

    Args:
        ranks: ranks ``(B, D)`` in ``{0, ..., n}`` from ``diagnostics.sbc_ranks``.
        n: posterior samples per observation used for the ranks.
        path: save the figure there.
        param_names: names of the ``D`` parameters.
        num_bins: histogram bins (default ``min(20, n + 1, max(2, B // 5))``).
        confidence: level of the pointwise binomial bands.
    """
    r = _np(ranks, "ranks", (1, 2))
    r = r[:, None] if r.ndim == 1 else r
    b, d = r.shape
    names = _labels(d, param_names, None)
    k = num_bins if num_bins is not None else min(20, n + 1, max(2, b // 5))
    edges = np.round(np.linspace(0, n + 1, k + 1)) - 0.5
    fig = _figure(figsize=(3.2 * d, 5.0), layout="constrained")
    axes = fig.subplots(2, d, squeeze=False)
    tail = (1 - confidence) / 2
    p_bin = np.diff(edges) / (n + 1)
    lo_h, hi_h = stats.binom.ppf(tail, b, p_bin), stats.binom.ppf(1 - tail, b, p_bin)
    grid = np.linspace(0, 1, 201)
    lo_e = stats.binom.ppf(tail, b, grid) / b - grid
    hi_e = stats.binom.ppf(1 - tail, b, grid) / b - grid
    for j in range(d):
        ax = axes[0, j]
        ax.fill_between(edges, np.append(lo_h, lo_h[-1]), np.append(hi_h, hi_h[-1]), step="post",
                        color=PRIOR_COLOR, alpha=0.4, lw=0)
        ax.hist(r[:, j], bins=edges, color=COLORS[0], histtype="step", lw=1.3)
        ax.set_title(names[j])
        ax.set_xlabel("rank")
        ax = axes[1, j]
        u = np.sort((r[:, j] + 0.5) / (n + 1))
        ecdf = np.searchsorted(u, grid, side="right") / b
        ax.fill_between(grid, lo_e, hi_e, color=PRIOR_COLOR, alpha=0.4, lw=0)
        ax.plot(grid, ecdf - grid, color=COLORS[0])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("normalised rank")
    axes[0, 0].set_ylabel("count")
    axes[1, 0].set_ylabel("ECDF − uniform")
    return _finish(fig, path)


def arm_plot(joint_positions, target, path=None, *, highlight: int | None = None, max_arms: int = 2000,
             title: str | None = None) -> Figure:
    """Sampled arm configurations of the inverse-kinematics problem (thesis sec. 4.2.2, Fig. 4.6).

    Args:
        joint_positions: ``(n, 4, 2)`` positions of rail mount, joints and end point (from
            ``InverseKinematics.joint_positions``), or a dict name -> ``(n, 4, 2)`` for side-by-side panels.
            Coordinate 0 (along the rail) is drawn vertically so the rail is the dotted line on the left.
        target: the observed end point ``(2,)``, drawn as a grey cross.
        path: save the figure there.
        highlight: index of one configuration to emphasise (e.g. the most likely one).
        max_arms: draw at most this many arms per panel (faint lines).
        title: figure title.
    """
    panels = joint_positions if isinstance(joint_positions, Mapping) else {"": joint_positions}
    data = {k: _np(v, f"joint_positions{'[' + repr(k) + ']' if k else ''}", (3,)) for k, v in panels.items()}
    for v in data.values():
        if v.shape[1:] != (4, 2):
            raise ValueError(f"joint_positions must have shape (n, 4, 2), got {v.shape}")
    t = _np(target, "target", (1,))
    if t.shape != (2,):
        raise ValueError(f"target must have shape (2,), got {t.shape}")
    fig = _figure(figsize=(3.6 * len(data), 3.8), layout="constrained")
    axes = fig.subplots(1, len(data), squeeze=False)[0]
    for ax, (name, v) in zip(axes, data.items()):
        shown = v[:max_arms]
        alpha = float(np.clip(20.0 / max(len(shown), 1), 0.02, 0.6))
        ax.axvline(0.0, color="k", ls=":", lw=1.0)
        for i in range(4 - 1):
            ax.plot(shown[:, i:i + 2, 1].T, shown[:, i:i + 2, 0].T, color=COLORS[i], alpha=alpha, lw=1.0)
        ax.plot(shown[:, 0, 1], shown[:, 0, 0], "s", color="k", ms=2, alpha=alpha)
        if highlight is not None:
            ax.plot(v[highlight, :, 1], v[highlight, :, 0], "-o", color="k", lw=2.0, ms=3)
        ax.plot(t[1], t[0], "x", color="0.4", ms=12, mew=3)
        ax.set_aspect("equal")
        ax.set_xlabel("position (across rail)")
        if name:
            ax.set_title(name)
    axes[0].set_ylabel("position along rail")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def mixture_scatter(samples_by_label: Mapping[object, object], path=None, *, title: str | None = None,
                    max_points: int = 5000) -> Figure:
    """2-D samples coloured by their conditioning label (thesis sec. 4.2.1, Fig. 4.2).

    Args:
        samples_by_label: label -> samples ``(n, 2)`` (e.g. posterior samples for each one-hot observation).
        path: save the figure there.
        title: axes title.
        max_points: scatter at most this many points per label.
    """
    if not samples_by_label:
        raise ValueError("samples_by_label is empty")
    fig = _figure(figsize=(4.2, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (label, s) in enumerate(samples_by_label.items()):
        a = _np(s, f"samples_by_label[{label!r}]", (2,))
        if a.shape[1] != 2:
            raise ValueError(f"samples_by_label[{label!r}] must have shape (n, 2), got {a.shape}")
        a = a[:max_points]
        ax.scatter(a[:, 0], a[:, 1], s=3, alpha=0.5, color=COLORS[i % len(COLORS)], label=str(label), lw=0)
    ax.set_aspect("equal")
    ax.legend(markerscale=4, frameon=False, loc="best")
    if title:
        ax.set_title(title)
    return _finish(fig, path)
