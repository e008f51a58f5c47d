"""Point-estimate and posterior-shape metrics: re-simulation error, MAP/RMSE, z-score, contraction, bootstrap.

Every function is a pure function of arrays. Shapes follow ``sample_batched``: posterior samples ``(n, B, D)``
(``n`` draws for each of ``B`` test observations), ground truths ``(B, D)``, observations ``(B, M)``. Torch
tensors and numpy arrays are both accepted; arrays come back as torch tensors and scalars as Python floats.

References:
    thesis sec. 4.2.2 (re-simulation error ``||s(x^) - y*||_2``), sec. 4.2.3 "Error measures"
    and Table 4.2 (RMSE of MAP estimates found with mean shift, uncertainties by bootstrapping);
    Schad, Betancourt & Vasishth (2021), "Toward a principled Bayesian workflow" (z-score and contraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_inn.meanshift import mean_shift as _mean_shift
from sbi_inn.simulation import SeedTree, Simulation

__all__ = [
    "resimulation_error",
    "map_resimulation_error",
    "point_estimate",
    "mean_shift",
    "map_error",
    "map_error_per_parameter",
    "posterior_zscore",
    "posterior_contraction",
    "bootstrap",
]


# -- validation shared by the diagnostics modules -------------------------------------------------------------------
def as_tensor(value, name: str, ndims: Sequence[int] | None = None, shape_hint: str = "") -> Tensor:
    """``value`` as a floating tensor; raise a ValueError naming ``name`` when it is empty, non-finite or mis-shaped."""
    if isinstance(value, Tensor):
        t = value.detach()
    else:
        try:
            a = np.asarray(value)
            if a.dtype.kind not in "biufc":
                raise TypeError(f"dtype {a.dtype}")
            t = torch.as_tensor(a)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a torch tensor or numpy array of numbers, got {type(value).__name__} "
                            f"({err})") from err
    if not torch.is_floating_point(t):
        if t.dtype == torch.bool or t.dtype.is_complex:
            raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
        t = t.to(torch.get_default_dtype())
    if ndims is not None and t.ndim not in ndims:
        hint = f" {shape_hint}" if shape_hint else ""
        raise ValueError(f"{name} must have {' or '.join(f'{k}' for k in ndims)} dimensions{hint}, "
                         f"got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    bad = ~torch.isfinite(t)
    if bad.any():
        raise ValueError(f"{name} contains NaN or inf ({int(bad.sum())} of {t.numel()} entries, "
                         f"shape {tuple(t.shape)})")
    return t


def check_samples(samples, name: str = "samples", min_draws: int = 2) -> Tensor:
    """Validate posterior samples of shape ``(n, B, D)`` with ``n >= min_draws``."""
    s = as_tensor(samples, name, (3,), "(n, B, D): n draws for each of B observations; "
                  "for one observation use samples[:, None]")
    if s.shape[0] < min_draws:
        raise ValueError(f"{name} needs at least {min_draws} draws per observation, got shape {tuple(s.shape)} "
                         f"(n = {s.shape[0]})")
    return s


def check_truth(x_true, samples: Tensor, name: str = "x_true") -> Tensor:
    """Validate ground truths ``(B, D)`` against samples ``(n, B, D)``; returned on the samples' device/dtype."""
    x = as_tensor(x_true, name, (2,), "(B, D)")
    if x.shape != samples.shape[1:]:
        raise ValueError(f"{name} must have shape (B, D) = {tuple(samples.shape[1:])} to match samples of shape "
                         f"{tuple(samples.shape)}, got {tuple(x.shape)}")
    return x.to(device=samples.device, dtype=samples.dtype)


# -- re-simulation ---------------------------------------------------------------------------------------------------
def simulate_chunked(simulate: Callable, x: Tensor, chunk_size: int = 100_000,
                     generator: torch.Generator | None = None) -> Tensor:
    """Run ``simulate`` on ``x`` ``(N, D)`` in chunks; returns ``(N, M)`` on ``x``'s device (floating outputs keep
    their dtype).

    The simulator is called through ``sbi_inn.simulation.Simulation``: ``generator`` is passed on when
    ``simulate`` takes one (as every simulator in ``simulators`` does); without ``generator`` chunk ``i`` is seeded
    from the ``resimulation`` stream of ``SeedTree(0)``, so the result is reproducible and the global RNG untouched.
    Numpy outputs are accepted; set-valued outputs (tuples) are rejected.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    sim = Simulation(simulate, require_prior=False, dtype=None)
    sim.is_set_valued = False
    tree = SeedTree(0)
    out = []
    for i, start in enumerate(range(0, x.shape[0], chunk_size)):
        xs = x[start:start + chunk_size]
        out_i = sim.call(xs, generator if generator is not None else tree.seed("resimulation", i))
        if isinstance(out_i, tuple):
            raise TypeError("simulate returned a tuple (a set-valued simulator?); these diagnostics need "
                            "simulate(x (N, D)) -> y (N, M)")
        ys = sim.parse(xs, out_i).y
        out.append(ys.to(dtype=x.dtype) if torch.is_floating_point(x) and ys.dtype != x.dtype else ys)
    return torch.cat(out)


def resimulation_error(simulate: Callable, samples, y_obs, *, chunk_size: int = 100_000,
                       generator: torch.Generator | None = None) -> Tensor:
    """Euclidean distance between the re-simulated posterior samples and the observation, ``||s(x^) - y*||_2``.

    Args:
        simulate: ``simulate(x (N, D)) -> y (N, M)``; called in chunks on the flattened samples.
        samples: posterior samples ``(n, B, D)``, or ``(n, D)`` for a single observation.
        y_obs: observations ``(B, M)``, or ``(M,)`` with ``(n, D)`` samples.
        chunk_size: simulations per call of ``simulate``.
        generator: passed to ``simulate`` when it accepts one (noisy simulators).

    Returns:
        distances ``(n, B)`` (``(n,)`` for a single observation); reduce with ``.mean()`` or ``.median()``.

    Example:
        >>> import torch
        >>> resimulation_error(lambda x: 2 * x, torch.ones(5, 3, 1), torch.full((3, 1), 2.5)).mean().item()
        0.5

    References:
        thesis sec. 4.2.2 (the Euclidean distance; Table 4.1: its mean and median), app. B.3 (averaged over the whole
        posterior for inverse kinematics), sec. 4.2.3 (at the MAP estimate for the tissue problem, Table 4.2).
    """
    s = as_tensor(samples, "samples", (2, 3), "(n, B, D) or (n, D)")
    y = as_tensor(y_obs, "y_obs", (1, 2), "(B, M) or (M,)").to(device=s.device, dtype=s.dtype)
    single = s.ndim == 2
    if single:
        if y.ndim == 2 and y.shape[0] != 1:
            raise ValueError(f"samples of shape (n, D) = {tuple(s.shape)} need a single observation y_obs of "
                             f"shape (M,), got {tuple(y.shape)}; pass samples (n, B, D) for several")
        s, y = s[:, None], y.reshape(1, -1)
    elif y.ndim != 2 or y.shape[0] != s.shape[1]:
        raise ValueError(f"y_obs must have shape (B, M) with B = {s.shape[1]} to match samples of shape "
                         f"{tuple(s.shape)}, got {tuple(y.shape)}")
    n, b, d = s.shape
    y_sim = simulate_chunked(simulate, s.reshape(n * b, d), chunk_size, generator).reshape(n, b, -1)
    if y_sim.shape[-1] != y.shape[-1]:
        raise ValueError(f"simulate returns observations of dimension {y_sim.shape[-1]}, but y_obs has shape "
                         f"{tuple(y.shape)}")
    dist = torch.linalg.vector_norm(y_sim - y, dim=-1)
    return dist[:, 0] if single else dist


def map_resimulation_error(simulate: Callable, x_map, y_obs, *, generator: torch.Generator | None = None) -> Tensor:
    """Re-simulation error of point estimates ``x_map`` ``(B, D)`` against ``y_obs`` ``(B, M)``; shape ``(B,)``.

    References:
        thesis Table 4.2 ("MAP re-simulation error").
    """
    x = as_tensor(x_map, "x_map", (2,), "(B, D)")
    return resimulation_error(simulate, x[None], y_obs, generator=generator)[0]


# -- point estimates -------------------------------------------------------------------------------------------------
def mean_shift(samples, *, bandwidth: float | None = None, num_starts: int = 8, max_iter: int = 100,
               tol: float = 1e-3, max_elements: int = 2**24) -> Tensor:
    """Posterior mode of each observation by mean shift; ``(n, B, D)`` -> ``(B, D)``.

    Validates ``samples`` and calls :func:`sbi_inn.meanshift.mean_shift` (see there for the algorithm).
    """
    return _mean_shift(check_samples(samples, min_draws=2), bandwidth=bandwidth, num_starts=num_starts,
                       max_iter=max_iter, tol=tol, max_elements=max_elements)


def point_estimate(samples, method: str = "mean_shift") -> Tensor:
    """Point estimate per observation from samples ``(n, B, D)``: ``"mean_shift"`` (MAP), ``"median"`` or ``"mean"``.

    Returns:
        ``(B, D)`` tensor.
    """
    s = check_samples(samples, min_draws=1 if method in ("mean", "median") else 2)
    if method == "mean":
        return s.mean(0)
    if method == "median":
        return s.quantile(0.5, dim=0) if s.numel() <= 2**24 else s.sort(0).values[(s.shape[0] - 1) // 2]
    if method == "mean_shift":
        return mean_shift(s)
    raise ValueError(f"method must be 'mean_shift', 'median' or 'mean', got {method!r}")


def _paired(x_hat, x_true, names=("x_map", "x_true")) -> tuple[Tensor, Tensor]:
    a = as_tensor(x_hat, names[0], (2,), "(B, D)")
    b = as_tensor(x_true, names[1], (2,), "(B, D)")
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape (B, D), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return a, b.to(device=a.device, dtype=a.dtype)


def map_error(x_map, x_true, params: Sequence[int] | None = None) -> float:
    """RMSE of point estimates over the test set, ``sqrt(E_y* ||x^ - x*||^2)`` on the parameters ``params``.

    Args:
        x_map: point estimates ``(B, D)``.
        x_true: ground truths ``(B, D)``.
        params: indices of the parameter subspace (default: all ``D``); ``[i]`` gives one parameter's RMSE.

    Example:
        >>> map_error([[0.0, 0.0], [0.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]])
        3.5355339059327378

    References:
        thesis 4.2.3 "Error measures" and Table 4.2 ("MAP error sO2", "MAP error all").
    """
    a, b = _paired(x_map, x_true)
    if params is not None:
        idx = list(params)
        if not idx or any(not (-a.shape[1] <= i < a.shape[1]) for i in idx):
            raise ValueError(f"params must be non-empty indices into D = {a.shape[1]} parameters, got {params!r}")
        a, b = a[:, idx], b[:, idx]
    return math.sqrt(float((a - b).square().sum(-1).mean()))


def map_error_per_parameter(x_map, x_true) -> Tensor:
    """RMSE of each parameter over the test set, shape ``(D,)``."""
    a, b = _paired(x_map, x_true)
    return (a - b).square().mean(0).sqrt()


# -- posterior z-score and contraction -------------------------------------------------------------------------------
def posterior_zscore(samples, x_true) -> Tensor:
    """Posterior z-score ``(mean - truth) / std`` per observation and parameter, shape ``(B, D)``.

    References:
        Schad, Betancourt & Vasishth (2021), sec. 3.
    """
    s = check_samples(samples)
    x = check_truth(x_true, s)
    return (s.mean(0) - x) / s.std(0).clamp_min(torch.finfo(s.dtype).tiny)


def posterior_contraction(samples, prior) -> Tensor:
    """Posterior contraction ``1 - var_post / var_prior`` per observation and parameter, shape ``(B, D)``.

    Args:
        samples: posterior samples ``(n, B, D)``.
        prior: a ``torch.distributions.Distribution`` with event shape ``(D,)`` (its ``variance``, or the variance
            of 100 000 seeded prior draws where it has none), or the prior variances ``(D,)``.

    References:
        Schad, Betancourt & Vasishth (2021), sec. 3.
    """
    s = check_samples(samples)
    if isinstance(prior, Distribution):
        try:
            var = prior.variance
        except NotImplementedError:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                var = prior.sample((100_000,)).var(0)
        var = torch.as_tensor(var)
    else:
        var = as_tensor(prior, "prior variance", (1,), "(D,)")
    var = var.to(device=s.device, dtype=s.dtype)
    if var.shape != s.shape[2:]:
        raise ValueError(f"prior variance must have shape (D,) = ({s.shape[2]},), got {tuple(var.shape)}")
    if not (var > 0).all():
        raise ValueError(f"prior variances must be positive, got {var.tolist()}")
    return 1 - s.var(0) / var


# -- bootstrap -------------------------------------------------------------------------------------------------------
def bootstrap(stat_fn: Callable, *arrays, num_resamples: int = 1000, seed: int = 0,
              axes: Sequence[int] | None = None):
    """Statistic and its bootstrap standard error, resampling test-set items (the ``B`` axis) with replacement.

    Args:
        stat_fn: ``stat_fn(*arrays)`` returning a number (or a tensor of numbers).
        arrays: arrays sharing the test-set axis: by default axis 1 for 3-D arrays (samples ``(n, B, D)``) and
            axis 0 otherwise (``(B,)``, ``(B, D)``, ...).
        num_resamples: number of bootstrap replicates.
        seed: seed of the resampling indices.
        axes: the test-set axis of each array, overriding the default.

    Returns:
        ``(value, std_error)``: ``stat_fn`` on the full arrays and the standard deviation of its replicates;
        floats for scalar statistics, tensors otherwise.

    Example:
        >>> import torch
        >>> value, se = bootstrap(lambda v: v.mean(), torch.arange(100.0), num_resamples=200)
        >>> value
        49.5

    References:
        thesis Table 4.2 ("we determine uncertainties (+-) by statistical bootstrapping").
    """
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    if num_resamples < 2:
        raise ValueError(f"num_resamples must be >= 2, got {num_resamples}")
    tensors = [as_tensor(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    if axes is None:
        axes = [1 if t.ndim == 3 else 0 for t in tensors]
    if len(axes) != len(tensors):
        raise ValueError(f"axes must give one axis per array ({len(tensors)}), got {list(axes)}")
    sizes = {t.shape[ax] for t, ax in zip(tensors, axes)}
    if len(sizes) != 1:
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(f"arrays must share the test-set axis length; shapes {shapes} along axes {list(axes)}")
    size = sizes.pop()

    def _value(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        return v.detach().cpu()

    value = _value(stat_fn(*tensors))
    gen = torch.Generator().manual_seed(seed)
    reps = []
    for _ in range(num_resamples):
        idx = torch.randint(size, (size,), generator=gen)
        reps.append(_value(stat_fn(*(t.index_select(ax, idx.to(t.device)) for t, ax in zip(tensors, axes)))))
    se = torch.stack(reps).std(0)
    if value.ndim == 0:
        return float(value), float(se)
    return value, se
