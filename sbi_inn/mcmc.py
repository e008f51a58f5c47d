"""MCMC reference posteriors with emcee's affine-invariant ensemble sampler (the only module importing emcee).

``mcmc(log_likelihood, prior, y_obs, n)`` samples ``p(x | y_obs)`` from a likelihood and a prior, with burn-in and
thinning set from the integrated autocorrelation time; seeded, with the global torch RNG left as it was. Also
available as ``sbi_inn.reference.mcmc``.

References:
    Foreman-Mackey et al. (2013), "emcee: the MCMC hammer" (affine-invariant ensemble sampler, autocorrelation
    time and the 50-tau rule of thumb).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sbi_inn.diagnostics.metrics import as_tensor
from sbi_inn.priors import as_prior

__all__ = ["MCMCResult", "mcmc"]


@dataclass(frozen=True)
class MCMCResult:
    """Outcome of :func:`mcmc`.

    Attributes:
        samples: ``(num_samples, D)`` draws after burn-in and thinning.
        acceptance_fraction: mean acceptance fraction of the walkers.
        tau: integrated autocorrelation time per parameter, in steps, ``(D,)``.
        burn_in, thin: steps discarded and thinning used.
        num_steps: steps run by each walker.
        num_walkers: ensemble size.
        num_likelihood_evaluations: calls of ``log_likelihood`` summed over points (only points inside the prior
            support are evaluated).
        wall_time: seconds.
    """

    samples: Tensor
    acceptance_fraction: float
    tau: Tensor
    burn_in: int
    thin: int
    num_steps: int
    num_walkers: int
    num_likelihood_evaluations: int
    wall_time: float


def _in_support(prior, x: Tensor) -> Tensor:
    try:
        ok = prior.support.check(x)
    except NotImplementedError:
        return torch.ones(len(x), dtype=torch.bool)
    while ok.ndim > 1:
        ok = ok.all(-1)
    return ok & torch.isfinite(x).all(-1)


def mcmc(log_likelihood: Callable, prior, y_obs, num_samples: int, *, num_walkers: int | None = None,
         burn_in: int | None = None, thin: int | None = None, seed: int = 0, max_steps: int = 100_000,
         initial=None, show_progress: bool = False) -> MCMCResult:
    """Posterior samples by emcee's affine-invariant ensemble sampler on ``log p(x) + log p(y_obs | x)``.

    ``log_likelihood(y, x)`` is evaluated on all walkers at once (``y`` is ``y_obs`` repeated to ``(n, M)``, ``x``
    is ``(n, D)``, result ``(n,)``); points outside the prior's support get ``-inf`` without calling it. Walkers
    start at seeded prior draws. Unless given, burn-in is ``5 tau`` and thinning ``tau / 2`` with ``tau`` the
    largest integrated autocorrelation time; the chain is extended in blocks until it is at least ``50 tau`` long
    and yields ``num_samples`` thinned draws, or until ``max_steps`` (then a warning is issued).

    Args:
        log_likelihood: ``log_likelihood(y (n, M), x (n, D)) -> (n,)``, e.g. ``simulator.log_likelihood``.
        prior: a ``torch.distributions.Distribution`` with event shape ``(D,)`` (or a list of 1-D ones).
        y_obs: the observation ``(M,)``.
        num_samples: draws to return (the last ones of the thinned chain).
        num_walkers: ensemble size (default ``max(32, 4 D)``, even).
        burn_in, thin: fixed values instead of the autocorrelation-based ones.
        seed: seeds the initial walkers and emcee's random state; equal seeds give identical samples.
        max_steps: cap on steps per walker.
        initial: starting positions ``(num_walkers, D)`` instead of prior draws.
        show_progress: emcee's progress bar.

    Returns:
        :class:`MCMCResult`.

    References:
        Foreman-Mackey et al. (2013); emcee documentation "Autocorrelation analysis & convergence".
    """
    import emcee

    prior = as_prior(prior)
    d = prior.event_shape[0]
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    y = torch.as_tensor(y_obs)
    if y.ndim >= 2 and y.shape[0] == 1:
        y = y[0]
    if not torch.isfinite(y).all():
        raise ValueError("y_obs contains NaN or inf")
    w = num_walkers if num_walkers is not None else max(32, 4 * d)
    w += w % 2
    if w < 2 * d:
        raise ValueError(f"num_walkers must be at least 2 D = {2 * d}, got {w}")
    for name, v in (("burn_in", burn_in), ("thin", thin)):
        if v is not None and not (isinstance(v, int) and v >= (0 if name == "burn_in" else 1)):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'burn_in' else 'positive'} int, got {v!r}")

    if initial is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x0 = prior.sample((w,))
    else:
        x0 = as_tensor(initial, "initial", (2,), "(num_walkers, D)")
        if x0.shape != (w, d):
            raise ValueError(f"initial must have shape (num_walkers, D) = ({w}, {d}), got {tuple(x0.shape)}")
    dtype = x0.dtype if torch.is_floating_point(x0) else torch.get_default_dtype()
    y = y.to(dtype)
    evaluations = 0

    def log_prob(theta: np.ndarray) -> np.ndarray:
        nonlocal evaluations
        x = torch.as_tensor(theta, dtype=dtype)
        out = torch.full((len(x),), -math.inf, dtype=torch.float64)
        inside = _in_support(prior, x)
        if inside.any():
            xi = x[inside]
            with torch.no_grad():
                lp = prior.log_prob(xi) + log_likelihood(y[None].expand(len(xi), *y.shape), xi)
            lp = torch.as_tensor(lp).double().reshape(-1)
            out[inside] = lp.masked_fill(torch.isnan(lp), -math.inf)  # nan_to_num would make -inf finite
            evaluations += len(xi)
        return out.numpy()

    start_time = time.perf_counter()
    state = x0.double().cpu().numpy()
    finite = np.isfinite(log_prob(state))
    if not finite.any():  # every walker at zero density: the ensemble can never move
        raise ValueError(f"mcmc: none of the {w} starting points has a finite posterior density (outside the "
                         "prior's support, or log_likelihood is -inf or NaN there); pass initial= points inside "
                         "the support where the likelihood is positive, or check log_likelihood")
    sampler = emcee.EnsembleSampler(w, d, log_prob, vectorize=True)
    sampler.random_state = np.random.RandomState(seed).get_state()
    per_walker = math.ceil(num_samples / w)

    def plan(steps: int) -> tuple[int, int, float]:
        tau = float(np.max(sampler.get_autocorr_time(tol=0, discard=steps // 4)))
        tau = tau if math.isfinite(tau) and tau > 0 else 1.0
        b = burn_in if burn_in is not None else math.ceil(5 * tau)
        t = thin if thin is not None else max(1, int(tau / 2))
        return b, t, tau

    if burn_in is not None and thin is not None:
        steps = min(max_steps, burn_in + thin * per_walker)
        sampler.run_mcmc(state, steps, progress=show_progress)
        b, t = burn_in, thin
        _, _, tau = plan(steps)
    else:
        steps = 0
        block = min(max_steps, max(500, (burn_in or 0) + (thin or 1) * per_walker))
        while True:
            state = sampler.run_mcmc(state, block, progress=show_progress)
            steps += block
            b, t, tau = plan(steps)
            target = max(b + t * per_walker, math.ceil(50 * tau))
            if steps >= target or steps >= max_steps:
                break
            block = min(max_steps - steps, max(100, math.ceil(1.2 * target) - steps))
    if steps < 50 * tau:
        warnings.warn(f"mcmc: chain of {steps} steps is shorter than 50 autocorrelation times (tau = {tau:.1f}); "
                      "the samples may be unreliable, raise max_steps", RuntimeWarning, stacklevel=2)
    if (steps - b) // t < per_walker:
        t_new = max(1, (steps - b) // per_walker) if steps > b else 1
        if steps - b < per_walker:
            raise RuntimeError(f"mcmc: {steps} steps after burn-in {b} cannot give {num_samples} samples with "
                               f"{w} walkers; raise max_steps")
        warnings.warn(f"mcmc: thinning reduced from {t} to {t_new} to return {num_samples} samples within "
                      f"max_steps", RuntimeWarning, stacklevel=2)
        t = t_new
    chain = sampler.get_chain(discard=b, thin=t, flat=True)[-num_samples:]
    stuck = int((~np.isfinite(log_prob(chain))).sum())
    if stuck:  # walkers that never reached the posterior (started at zero density and never moved)
        raise RuntimeError(f"mcmc: {stuck} of the {num_samples} samples have zero posterior density (walkers that "
                           "never left a zero-density start); start all walkers where the density is positive "
                           "(initial=) or raise burn_in")
    samples = torch.as_tensor(chain, dtype=dtype)
    tau_all = torch.as_tensor(sampler.get_autocorr_time(tol=0, discard=min(b, steps // 2)), dtype=torch.float64)
    return MCMCResult(samples, float(np.mean(sampler.acceptance_fraction)), tau_all, b, t, steps, w, evaluations,
                      time.perf_counter() - start_time)


