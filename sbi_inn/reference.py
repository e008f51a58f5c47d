"""Reference posteriors to compare learned posteriors against: rejection ABC, MCMC (emcee) and exact samplers.

``abc_rejection`` needs only a simulator, ``likelihood_rejection`` a noise-free model with Gaussian observation
noise, ``mcmc`` a log-likelihood (``sbi_inn.mcmc``, re-exported here), ``exact`` a simulator with an analytic posterior
(``simulator.sample_posterior``). All are seeded: the same ``seed`` gives the same samples, and the global torch RNG
is left as it was. The simulators run through ``sbi_inn.simulation`` (chunk ``i`` of the ``abc`` or ``rejection``
stream of ``SeedTree(seed)``), like every other simulation in the package.

References:
    thesis sec. 4.2.2 and app. B.4 (rejection ABC with a threshold or a quantile).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sbi_inn.diagnostics.metrics import as_tensor
from sbi_inn.mcmc import MCMCResult, mcmc
from sbi_inn.priors import as_prior
from sbi_inn.simulation import SeedTree, Simulation

__all__ = ["ABCResult", "MCMCResult", "abc_rejection", "abc_rejection_batch", "mcmc", "exact", "exact_batch"]

_NORM_ORDER = {"euclidean": 2.0, "manhattan": 1.0, "chebyshev": math.inf}
_MAX_DISTANCES = 2**24


@dataclass(frozen=True)
class ABCResult:
    """Outcome of rejection ABC.

    Attributes:
        samples: accepted parameters, ``(N, D)`` (``abc_rejection``) or ``(N, B, D)`` (``abc_rejection_batch``).
        distances: their distances to the observation, ``(N,)`` or ``(N, B)``.
        epsilon: the threshold used; in quantile mode the largest accepted distance (``(B,)`` for a batch).
        acceptance_rate: accepted / simulated (in quantile mode ``N / num_simulations``).
        num_simulations: simulations run.
        wall_time: seconds.
        scale: the per-dimension distance scale used, ``(M,)``.
    """

    samples: Tensor
    distances: Tensor
    epsilon: float | Tensor
    acceptance_rate: float
    num_simulations: int
    wall_time: float
    scale: Tensor


# -- rejection ABC ---------------------------------------------------------------------------------------------------
def _progress(show: bool, total: int | None):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="sim")


def _simulate_chunk(sim: Simulation, size: int, seed: int, index: int, obs_dim: int):
    """Prior draws ``(size, D)`` and simulations ``(size, M)`` of chunk ``index`` of the ``abc`` stream of
    ``SeedTree(seed)`` (``sbi_inn.simulation``; global RNG untouched), with the rows whose simulation returned NaN or
    inf marked ``(size,)`` invalid."""
    chunk = sim.chunk(SeedTree(seed).chunk_seeds(index, "abc"), size)
    if chunk.sizes is not None:
        raise TypeError("simulate returned a tuple (a set-valued simulator?); ABC needs simulate(x) -> y (N, M)")
    if chunk.y.shape[1] != obs_dim:
        raise ValueError(f"simulate returns observations of dimension {chunk.y.shape[1]}, y_obs has {obs_dim}")
    return chunk.x, chunk.y, chunk.valid


def _resolve_scale(scale, y_pilot: Tensor) -> Tensor:
    m = y_pilot.shape[1]
    if scale is None:
        return torch.ones(m, dtype=y_pilot.dtype, device=y_pilot.device)
    if isinstance(scale, str):
        if scale != "mad":
            raise ValueError(f"scale must be None, 'mad' or a tensor (M,), got {scale!r}")
        finite = y_pilot[torch.isfinite(y_pilot).all(1)]
        if len(finite) < 2:
            raise ValueError("scale='mad' needs finite simulations in the first chunk")
        mad = (finite - finite.median(0).values).abs().median(0).values
        return torch.where(mad > 0, mad, torch.ones_like(mad))
    s = as_tensor(scale, "scale", (1,), "(M,)").to(device=y_pilot.device, dtype=y_pilot.dtype)
    if s.shape != (m,) or not (s > 0).all():
        raise ValueError(f"scale must be positive with shape (M,) = ({m},), got {s.tolist()}")
    return s


def _distances(y_sim: Tensor, y_obs: Tensor, scale: Tensor, distance) -> Tensor:
    """Distances ``(N, B)`` between simulations ``(N, M)`` and observations ``(B, M)``; NaN becomes inf."""
    a, b = y_sim / scale, y_obs / scale
    if callable(distance):
        d = torch.stack([torch.as_tensor(distance(a, b[i])).reshape(-1) for i in range(len(b))], 1)
    else:
        d = torch.cdist(a[None].double(), b[None].double(), p=_NORM_ORDER[distance])[0]
    return torch.nan_to_num(d.to(y_sim.dtype), nan=math.inf)


def _check_abc_args(simulate, prior, y_obs, num_samples, distance, chunk_size):
    if not callable(simulate):
        raise TypeError(f"simulate must be callable, got {type(simulate).__name__}")
    prior = as_prior(prior)
    y = as_tensor(y_obs, "y_obs", (1, 2), "(M,) or (B, M)")
    if y.ndim == 1:
        y = y[None]
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not callable(distance) and distance not in _NORM_ORDER:
        raise ValueError(f"distance must be one of {sorted(_NORM_ORDER)} or a callable, got {distance!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return prior, y


def abc_rejection(simulate: Callable, prior, y_obs, num_samples: int, *, epsilon: float | None = None,
                  quantile: float | None = None, distance: str | Callable = "euclidean", scale=None,
                  chunk_size: int = 100_000, max_simulations: int = 10**8, seed: int = 0,
                  show_progress: bool = False) -> ABCResult:
    """Rejection ABC for one observation, with a distance threshold or an acceptance quantile (thesis B.4).

    Threshold mode (``epsilon``): draw ``x`` from the prior, simulate, keep ``x`` where
    ``dist(y, y_obs) < epsilon``, chunk after chunk, until ``num_samples`` are accepted (the first ones in
    simulation order are returned). Quantile mode (``quantile = q``): run exactly ``round(num_samples / q)``
    simulations and keep the ``num_samples`` closest, sorted by distance, with a running top-N so memory stays
    bounded by ``num_samples + chunk_size``.

    Args:
        simulate: ``simulate(x (N, D)) -> y (N, M)``; gets a seeded ``generator=`` if its signature has one.
        prior: a ``torch.distributions.Distribution`` with event shape ``(D,)`` (or a list of 1-D ones).
        y_obs: the observation ``(M,)``.
        num_samples: ``N``, samples to return.
        epsilon: acceptance threshold (exactly one of ``epsilon`` and ``quantile``).
        quantile: accepted fraction ``q`` in (0, 1].
        distance: ``"euclidean"``, ``"manhattan"``, ``"chebyshev"``, or ``distance(y (N, M), y_obs (M,)) -> (N,)``
            (applied after scaling).
        scale: per-dimension divisor of ``y - y_obs``: ``None`` (none), ``"mad"`` (median absolute deviation of
            the first chunk's simulations) or a tensor ``(M,)``.
        chunk_size: simulations per call of ``simulate``.
        max_simulations: threshold mode raises a RuntimeError when this many simulations did not yield ``N``.
        seed: seeds chunk ``i``'s prior draws and simulation noise from ``(seed, i)``.
        show_progress: tqdm progress bar.

    Returns:
        :class:`ABCResult` with ``samples (N, D)`` and ``distances (N,)``. Simulations with NaN outputs are never
        accepted.

    Example:
        >>> import torch
        >>> prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1), 1.0), 1)
        >>> res = abc_rejection(lambda x: x, prior, torch.tensor([0.5]), 100, quantile=0.1, chunk_size=300)
        >>> res.samples.shape, res.num_simulations
        (torch.Size([100, 1]), 1000)
    """
    if (epsilon is None) == (quantile is None):
        raise ValueError("give exactly one of epsilon (threshold mode) and quantile (quantile mode)")
    prior, y = _check_abc_args(simulate, prior, y_obs, num_samples, distance, chunk_size)
    if y.shape[0] != 1:
        raise ValueError(f"abc_rejection takes one observation (M,), got shape {tuple(y.shape)}; "
                         "use abc_rejection_batch for several")
    if quantile is not None:
        res = abc_rejection_batch(simulate, prior, y, num_samples, quantile=quantile, distance=distance,
                                  scale=scale, chunk_size=chunk_size, seed=seed, show_progress=show_progress)
        return ABCResult(res.samples[:, 0], res.distances[:, 0], float(res.epsilon[0]), res.acceptance_rate,
                         res.num_simulations, res.wall_time, res.scale)
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon!r}")

    start_time = time.perf_counter()
    sim = Simulation(simulate, prior, dtype=None)
    scale_t = None

    def propose(index: int, size: int):
        nonlocal scale_t
        x, y_sim, valid = _simulate_chunk(sim, size, seed, index, y.shape[1])
        if scale_t is None:
            scale_t = _resolve_scale(scale, y_sim[valid])
        d = _distances(y_sim, y.to(y_sim), scale_t, distance)[:, 0].masked_fill(~valid, math.inf)
        keep = d < epsilon
        return x[keep], d[keep]

    (x, d), num_accepted, num_sims = _accept_until(
        propose, num_samples, chunk_size, max_simulations, show_progress,
        f"abc_rejection with epsilon={epsilon}", "Raise max_simulations or epsilon, or use quantile=")
    return ABCResult(x, d, float(epsilon), num_accepted / num_sims, num_sims, time.perf_counter() - start_time,
                     scale_t)


def _accept_until(propose, num_samples: int, chunk_size: int, max_simulations: int, show_progress: bool,
                  what: str, advice: str):
    """Call ``propose(index, size)`` on chunks ``0, 1, ...`` of at most ``chunk_size`` simulations until
    ``num_samples`` are accepted; ``propose`` returns the accepted rows (tensors of equal length, the parameters
    first). Returns the first ``num_samples`` rows of each, the number accepted and the simulations run; a
    ``RuntimeError`` with the acceptance rate so far when ``max_simulations`` did not yield enough."""
    bar = _progress(show_progress, None)
    kept, num_accepted, num_sims, index = [], 0, 0, 0
    try:
        while num_accepted < num_samples:
            if num_sims >= max_simulations:
                rate = num_accepted / max(num_sims, 1)
                need = f"about {num_samples / rate:.3g}" if rate > 0 else "far more"
                raise RuntimeError(f"{what}: only {num_accepted} of {num_samples} samples accepted after {num_sims} "
                                   f"simulations (max_simulations); acceptance rate so far {rate:.3g}, so {need} "
                                   f"simulations are needed. {advice}")
            size = min(chunk_size, max_simulations - num_sims)
            rows = propose(index, size)
            kept.append(rows)
            num_accepted += len(rows[0])
            num_sims += size
            index += 1
            if bar is not None:
                bar.update(size)
                bar.set_postfix(accepted=num_accepted)
    finally:
        if bar is not None:
            bar.close()
    return [torch.cat(part)[:num_samples] for part in zip(*kept)], num_accepted, num_sims


def abc_rejection_batch(simulate: Callable, prior, y_obs, num_samples: int, *, quantile: float,
                        distance: str | Callable = "euclidean", scale=None, chunk_size: int = 100_000,
                        seed: int = 0, show_progress: bool = False) -> ABCResult:
    """Quantile-mode rejection ABC for ``B`` observations sharing one set of ``round(N / q)`` simulations.

    Each observation keeps its own ``N`` closest simulations (sorted by distance), as in the thesis' tissue
    experiment (4.2.3: 256 closest of 50 000 for every test observation). Arguments as in
    :func:`abc_rejection`, with ``y_obs`` of shape ``(B, M)``.

    Returns:
        :class:`ABCResult` with ``samples (N, B, D)`` (the ``sample_batched`` layout), ``distances (N, B)`` and
        ``epsilon (B,)`` (each observation's largest accepted distance).
    """
    prior, y = _check_abc_args(simulate, prior, y_obs, num_samples, distance, chunk_size)
    if not (quantile is not None and 0 < quantile <= 1):
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    total = int(round(num_samples / quantile))
    if total < num_samples:
        raise ValueError(f"num_samples / quantile = {total} simulations is fewer than num_samples = {num_samples}")
    start_time = time.perf_counter()
    sim = Simulation(simulate, prior, dtype=None)
    b = y.shape[0]
    step = max(1, min(chunk_size, _MAX_DISTANCES // b))
    bar = _progress(show_progress, total)
    best_x = best_d = scale_t = None
    try:
        for index, start in enumerate(range(0, total, step)):
            size = min(step, total - start)
            x, y_sim, valid = _simulate_chunk(sim, size, seed, index, y.shape[1])
            if scale_t is None:
                scale_t = _resolve_scale(scale, y_sim[valid])
            d = _distances(y_sim, y.to(y_sim), scale_t, distance).masked_fill(~valid[:, None], math.inf)  # (size, B)
            if best_d is None:
                k = min(num_samples, size)
                best_d, idx = d.topk(k, dim=0, largest=False, sorted=True)
                best_x = x[idx]                                                     # (k, B, D)
            else:
                k0 = best_d.shape[0]
                cand = torch.cat([best_d, d])
                best_d, idx = cand.topk(min(num_samples, len(cand)), dim=0, largest=False, sorted=True)
                old = best_x.gather(0, idx.clamp(max=k0 - 1)[..., None].expand(-1, -1, x.shape[1]))
                new = x[(idx - k0).clamp(min=0)]
                best_x = torch.where((idx < k0)[..., None], old, new)
            if bar is not None:
                bar.update(size)
    finally:
        if bar is not None:
            bar.close()
    if not torch.isfinite(best_d[-1]).all():
        raise ValueError(f"abc_rejection: fewer than num_samples = {num_samples} of the {total} simulations returned "
                         "finite observations (the rest were NaN or inf), so the accepted set would hold invalid "
                         "ones; check the simulator or lower num_samples")
    return ABCResult(best_x, best_d, best_d[-1].clone(), num_samples / total, total,
                     time.perf_counter() - start_time, scale_t)


# -- exact posteriors ------------------------------------------------------------------------------------------------
def exact(simulator, y_obs, num_samples: int, seed: int = 0) -> Tensor:
    """``num_samples`` exact posterior draws ``(N, D)`` from ``simulator.sample_posterior`` for one observation."""
    return exact_batch(simulator, torch.as_tensor(y_obs)[None], num_samples, seed)[:, 0]


def exact_batch(simulator, y_obs, num_samples: int, seed: int = 0) -> Tensor:
    """Exact posterior draws for ``B`` observations ``(B, M)``, in the ``sample_batched`` layout ``(N, B, D)``."""
    y = as_tensor(y_obs, "y_obs", (2,), "(B, M)")
    gen = torch.Generator().manual_seed(seed)
    out = [simulator.sample_posterior(y[i], num_samples, generator=gen) for i in range(y.shape[0])]
    return torch.stack(out, 1)


# -- exact rejection sampling under Gaussian observation noise -------------------------------------------------------
@dataclass(frozen=True)
class RejectionResult:
    """Outcome of :func:`likelihood_rejection`.

    Attributes:
        samples: exact posterior draws ``(N, D)``, in proposal order.
        acceptance_rate: accepted / proposed over all chunks run; it estimates
            ``p(y_obs) * prod_m sqrt(2 pi) sigma_m``, the evidence over the likelihood's maximum.
        num_simulations: prior draws proposed (and simulated).
        wall_time: seconds.
    """

    samples: Tensor
    acceptance_rate: float
    num_simulations: int
    wall_time: float


def likelihood_rejection(simulate: Callable, prior, y_obs, num_samples: int, *, noise_std, seed: int = 0,
                         chunk_size: int = 1_000_000, max_simulations: int = 10**9,
                         show_progress: bool = False) -> RejectionResult:
    """Exact posterior samples for ``y = s(x) + N(0, diag(sigma^2))`` by rejection sampling from the prior.

    Draws ``x`` from the prior and accepts it with probability ``exp(-||(y_obs - s(x)) / sigma||^2 / 2)``, the
    Gaussian likelihood divided by its maximum (zero residual). Accepted draws are distributed exactly as the
    posterior ``p(x | y_obs)``, unlike rejection ABC, whose samples are blurred by its tolerance. The expected
    acceptance rate is ``p(y_obs) prod_m sqrt(2 pi) sigma_m``, so this suits observations of a few dimensions and
    cheap simulators (inverse kinematics with ``sigma = 0.01``: a few in 10 000).

    Args:
        simulate: the noise-free model ``s(x (N, D)) -> (N, M)`` (torch or numpy), e.g.
            ``InverseKinematics.forward_kinematics``; the noise is the ``noise_std`` given here, not the simulator's.
        prior: a ``torch.distributions.Distribution`` with event shape ``(D,)`` (or a list of 1-D ones).
        y_obs: the observation ``(M,)``.
        num_samples: ``N``, posterior draws to return (the first ``N`` accepted).
        noise_std: ``sigma``, a positive float or ``(M,)`` per-dimension standard deviations.
        seed: chunk ``i`` draws its prior samples and acceptance uniforms from the ``rejection`` stream of
            ``SeedTree(seed)``; the same seed gives the same samples. The global torch RNG is left as it was.
        chunk_size: proposals per call of ``simulate``.
        max_simulations: a ``RuntimeError`` (with the acceptance rate so far) when this many proposals did not
            yield ``N`` samples.
        show_progress: tqdm progress bar over proposals.

    Returns:
        :class:`RejectionResult` with ``samples (N, D)``.

    Example:
        >>> import torch
        >>> prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1), 1.0), 1)
        >>> res = likelihood_rejection(lambda x: x, prior, torch.tensor([1.0]), 2000, noise_std=0.5, seed=0)
        >>> round(float(res.samples.mean()), 1), round(float(res.samples.std()), 2)  # exact: 0.8 and 0.45
        (0.8, 0.45)
    """
    if not callable(simulate):
        raise TypeError(f"simulate must be callable, got {type(simulate).__name__}")
    prior = as_prior(prior)
    y = as_tensor(y_obs, "y_obs", (1, 2), "(M,)")
    if y.ndim == 2:
        if y.shape[0] != 1:
            raise ValueError(f"likelihood_rejection takes one observation (M,), got shape {tuple(y.shape)}")
        y = y[0]
    if not torch.isfinite(y).all():
        raise ValueError("y_obs contains NaN or inf")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    sigma = torch.as_tensor(noise_std, dtype=torch.float64).reshape(-1)
    if sigma.numel() not in (1, y.numel()) or not (torch.isfinite(sigma) & (sigma > 0)).all():
        raise ValueError(f"noise_std must be a positive finite number or {y.numel()} of them (one per observed "
                         f"dimension), got {noise_std!r}")
    y64 = y.to(torch.float64)

    start_time = time.perf_counter()
    sim = Simulation(simulate, prior, dtype=None)
    sim.is_set_valued = False
    tree = SeedTree(seed)

    def propose(index: int, size: int):
        prior_seed, sim_seed, accept_seed = tree.seeds("rejection", index, n=3)
        chunk = sim.chunk((prior_seed, sim_seed), size)
        if chunk.y.shape[1] != y.numel():
            raise ValueError(f"simulate must map (N, D) to (N, M) = ({size}, {y.numel()}); it returned shape "
                             f"{tuple(chunk.y.shape)}")
        r = (chunk.y.to(torch.float64) - y64) / sigma
        log_accept = torch.nan_to_num(-0.5 * (r * r).sum(1), nan=-math.inf)
        u = torch.rand(size, generator=torch.Generator().manual_seed(accept_seed), dtype=torch.float64)
        return (chunk.x[u.log() < log_accept],)

    (x,), num_accepted, num_sims = _accept_until(
        propose, num_samples, chunk_size, max_simulations, show_progress, "likelihood_rejection",
        "Raise max_simulations, or check that y_obs is reachable by the model and noise_std is right")
    return RejectionResult(x, num_accepted / num_sims, num_sims, time.perf_counter() - start_time)


__all__ += ["RejectionResult", "likelihood_rejection"]
