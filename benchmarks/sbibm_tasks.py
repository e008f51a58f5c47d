"""Five tasks of the SBI benchmark (Lueckmann et al. 2021, "Benchmarking simulation-based inference"), re-implemented.

``gaussian_linear``, ``gaussian_linear_uniform``, ``bernoulli_glm``, ``sir`` and ``lotka_volterra``: priors and
simulators written from the paper's appendix and the task definitions published with its ``sbibm`` package (version
1.1.0), so that the benchmark's observations and reference posterior samples (data files, read by
``bench_sbibm.py``) can score posteriors fitted to *our* simulations. No code of ``sbibm`` is used or needed.

Each task has ``prior`` (a ``torch.distributions.Distribution`` with ``.support``), ``sample_prior(n, generator)``,
``simulate(x, generator=None)`` (batched ``(n, dim_x) -> (n, dim_y)``, all randomness from the ``torch.Generator``),
``log_likelihood(y, x)`` (exact, up to a constant that does not depend on ``x``), ``dim_x``, ``dim_y``,
``param_names`` and ``obs_names``. The definitions, with the benchmark's constants:

* ``gaussian_linear``: ``x ~ N(0, 0.1 I_10)``, ``y ~ N(x, 0.1 I_10)`` (0.1 is the *variance*: sbibm builds the
  precision matrices as ``inverse(0.1 I)``). Posterior ``N(y / 2, 0.05 I)`` (:meth:`GaussianLinear.posterior`).
* ``gaussian_linear_uniform``: ``x ~ U([-1, 1]^10)``, ``y ~ N(x, 0.1 I_10)``; posterior: independent normals
  ``N(y_i, 0.1)`` truncated to ``[-1, 1]`` (:meth:`GaussianLinearUniform.posterior_moments`).
* ``bernoulli_glm``: 10 parameters, an offset ``b`` and a 9-tap filter ``h``; 100 time bins of a white-noise
  stimulus ``I_t ~ N(0, 1)`` (frozen: ``numpy.random.RandomState(42)``, float32); design matrix ``X`` (100, 10)
  with ``X[t, 0] = 1`` and ``X[t, 1 + j] = I_{t - j}`` (0 before the start); spikes ``s_t ~ Bernoulli(sigmoid(X
  x)_t)``; observation: the 10 sufficient statistics ``X^T s`` (spike count and the spike-triggered sums at lags
  0..8, which is what sbibm's ``conv1d(s, I, padding=8)[-9:]`` computes). Prior ``N(0, B^-1)`` with precision
  ``B = diag(0.5, F^T F)``, ``F = D D + diag(sqrt(j / 9))``, ``D`` the first-difference matrix (smoothness of
  the filter). The likelihood of the statistics is exact up to a constant: ``x . y - sum_t softplus((X x)_t)``.
* ``sir``: ``beta ~ LogNormal(log 0.4, 0.5)``, ``gamma ~ LogNormal(log 0.125, 0.2)``; ``dS = -beta S I / N``,
  ``dI = beta S I / N - gamma I``, ``dR = gamma I`` with ``N = 10^6``, ``(S, I, R)(0) = (N - 1, 1, 0)``, solved on
  days 0..160; the infected at days 0, 17, ..., 153 (every 17th of the 161 daily values: 10 points) are observed as
  ``Binomial(1000, I / N)`` counts.
* ``lotka_volterra``: ``(alpha, beta, gamma, delta) ~ LogNormal((-0.125, -3, -0.125, -3), 0.5)``; prey ``u`` and
  predators ``v`` with ``du = alpha u - beta u v``, ``dv = -gamma v + delta u v``, ``(u, v)(0) = (30, 1)``, solved
  on ``[0, 20]``; both species at t = 0, 2.1, ..., 18.9 (every 21st of the 201 values saved every 0.1) observed
  with log-normal noise ``LogNormal(log(clip(u, 1e-10, 1e4)), 0.1)``: 10 prey values, then 10 predator values.

The two ODEs are solved for the whole batch at once by :func:`solve_ode`, an embedded Dormand-Prince 5(4)
integrator (the method of ``scipy.integrate.solve_ivp(method="RK45")``) with a step size of its own for every
trajectory, stepping exactly onto the observation times; SIR in population fractions, Lotka-Volterra in log
populations (so populations stay positive and the multiplicative noise sees relative accuracy).
``tests/test_sbibm_tasks.py`` checks it against ``solve_ivp``; ``bench_sbibm.py --check`` checks every task against
the benchmark's reference posteriors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, LogNormal, MultivariateNormal, Uniform

TASKS = ("gaussian_linear", "gaussian_linear_uniform", "bernoulli_glm", "sir", "lotka_volterra")


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    return generator


class Task:
    """Common interface: ``prior``, ``sample_prior``, ``simulate``, ``log_likelihood`` and the dimensions."""

    name: str = "task"
    param_names: list[str] = []
    obs_names: list[str] = []
    prior: Distribution

    @property
    def dim_x(self) -> int:
        return len(self.param_names)

    @property
    def dim_y(self) -> int:
        return len(self.obs_names)

    def _check(self, x) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != self.dim_x:
            raise ValueError(f"{self.name}: parameters must have shape (n, {self.dim_x}), got {tuple(x.shape)}")
        return x

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` prior draws ``(n, dim_x)`` from ``generator`` (the distributions' own ``sample`` takes none)."""
        return self._sample_prior(int(n), _generator(generator))

    def simulate(self, x, generator: torch.Generator | None = None) -> Tensor:
        """Observations ``(n, dim_y)`` (float32) for parameters ``x`` ``(n, dim_x)``."""
        return self._simulate(self._check(x), _generator(generator))

    __call__ = simulate

    def log_likelihood(self, y, x) -> Tensor:
        """``log p(y | x)`` up to a constant independent of ``x``; ``y`` ``(n, dim_y)`` or ``(dim_y,)``, ``x`` ``(n,
        dim_x)`` -> ``(n,)``."""
        x = self._check(x).double()
        y = torch.as_tensor(y, dtype=torch.float64)
        return self._log_likelihood(y.expand(x.shape[0], self.dim_y), x)

    def _sample_prior(self, n: int, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _simulate(self, x: Tensor, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError


def _gaussian_log_likelihood(y: Tensor, x: Tensor, var: float) -> Tensor:
    return -0.5 * ((y - x) ** 2).sum(-1) / var - 0.5 * y.shape[-1] * math.log(2 * math.pi * var)


# -- Gaussian linear ---------------------------------------------------------------------------------------------------
class GaussianLinear(Task):
    """``x ~ N(0, 0.1 I)``, ``y ~ N(x, 0.1 I)`` in 10 dimensions (variances, as in sbibm)."""

    name = "gaussian_linear"

    def __init__(self, dim: int = 10, prior_var: float = 0.1, noise_var: float = 0.1):
        self.prior_var, self.noise_var = prior_var, noise_var
        self.param_names = [f"theta_{i + 1}" for i in range(dim)]
        self.obs_names = [f"y_{i + 1}" for i in range(dim)]
        self.prior = MultivariateNormal(torch.zeros(dim), covariance_matrix=prior_var * torch.eye(dim))

    def _sample_prior(self, n, gen):
        return math.sqrt(self.prior_var) * torch.randn(n, self.dim_x, generator=gen)

    def _simulate(self, x, gen):
        return x + math.sqrt(self.noise_var) * torch.randn(x.shape, generator=gen)

    def _log_likelihood(self, y, x):
        return _gaussian_log_likelihood(y, x, self.noise_var)

    def posterior(self, y) -> MultivariateNormal:
        """The exact posterior ``N(c y, c * noise_var I)`` with ``c = prior_var / (prior_var + noise_var)``."""
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        c = self.prior_var / (self.prior_var + self.noise_var)
        return MultivariateNormal(c * y, covariance_matrix=c * self.noise_var * torch.eye(self.dim_x,
                                                                                         dtype=torch.float64))


class GaussianLinearUniform(Task):
    """``x ~ U([-1, 1]^10)``, ``y ~ N(x, 0.1 I)``."""

    name = "gaussian_linear_uniform"

    def __init__(self, dim: int = 10, bound: float = 1.0, noise_var: float = 0.1):
        self.bound, self.noise_var = bound, noise_var
        self.param_names = [f"theta_{i + 1}" for i in range(dim)]
        self.obs_names = [f"y_{i + 1}" for i in range(dim)]
        self.prior = Independent(Uniform(-bound * torch.ones(dim), bound * torch.ones(dim)), 1)

    def _sample_prior(self, n, gen):
        return self.bound * (2 * torch.rand(n, self.dim_x, generator=gen) - 1)

    def _simulate(self, x, gen):
        return x + math.sqrt(self.noise_var) * torch.randn(x.shape, generator=gen)

    def _log_likelihood(self, y, x):
        return _gaussian_log_likelihood(y, x, self.noise_var)

    def posterior_moments(self, y) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation ``(dim,)`` of the exact posterior: ``N(y_i, noise_var)`` truncated to the
        prior's interval, independently per dimension."""
        from scipy.stats import truncnorm

        y = np.asarray(torch.as_tensor(y, dtype=torch.float64).reshape(-1))
        s = math.sqrt(self.noise_var)
        dist = truncnorm((-self.bound - y) / s, (self.bound - y) / s, loc=y, scale=s)
        return torch.as_tensor(dist.mean()), torch.as_tensor(dist.std())

    def sample_posterior(self, y, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact posterior samples ``(n, dim)`` by inverse-CDF sampling of the truncated normals."""
        from scipy.stats import norm

        gen = _generator(generator)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        s = math.sqrt(self.noise_var)
        lo, hi = norm.cdf(((-self.bound - y) / s).numpy()), norm.cdf(((self.bound - y) / s).numpy())
        u = torch.rand(n, self.dim_x, generator=gen, dtype=torch.float64).numpy()
        x = y.numpy() + s * norm.ppf(lo + u * (hi - lo))
        return torch.as_tensor(np.clip(x, -self.bound, self.bound), dtype=torch.float32)


# -- Bernoulli GLM -----------------------------------------------------------------------------------------------------
class BernoulliGLM(Task):
    """Bernoulli GLM with a 9-tap filter on a frozen white-noise stimulus; 10 sufficient statistics observed."""

    name = "bernoulli_glm"

    def __init__(self, duration: int = 100, stimulus_seed: int = 42):
        m = 9  # filter taps; parameters: offset + filter
        self.param_names = ["b"] + [f"h_{j + 1}" for j in range(m)]
        self.obs_names = ["num_spikes"] + [f"sta_{j}" for j in range(m)]
        self.stimulus = torch.from_numpy(np.random.RandomState(stimulus_seed).randn(duration).astype(np.float32))
        design = torch.zeros(duration, m + 1)
        design[:, 0] = 1.0
        for j in range(m):
            design[j:, j + 1] = self.stimulus[:duration - j]
        self.design = design  # (T, 10): psi = design @ x
        d = torch.eye(m) - torch.diag(torch.ones(m - 1), -1)
        f = d @ d + torch.diag(torch.sqrt(torch.arange(m, dtype=torch.float32) / m))
        precision = torch.zeros(m + 1, m + 1)
        precision[0, 0] = 0.5
        precision[1:, 1:] = f.T @ f
        self.precision = precision
        self.prior = MultivariateNormal(torch.zeros(m + 1), precision_matrix=precision)
        self._scale_tril = torch.linalg.cholesky(torch.linalg.inv(precision.double())).float()

    def _sample_prior(self, n, gen):
        return torch.randn(n, self.dim_x, generator=gen) @ self._scale_tril.T

    def spikes(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Spike trains ``(n, T)`` (0/1 floats) for parameters ``x`` ``(n, 10)``."""
        rate = torch.sigmoid(x @ self.design.T)
        return (torch.rand(rate.shape, generator=gen) < rate).float()

    def summarize(self, spikes: Tensor) -> Tensor:
        """The 10 statistics ``X^T s``: spike count, then ``sum_t s_t I_{t - j}`` for lags ``j = 0..8``."""
        return torch.as_tensor(spikes, dtype=torch.float32) @ self.design

    def _simulate(self, x, gen):
        return self.summarize(self.spikes(x, gen))

    def _log_likelihood(self, y, x):
        # p(s | x) = exp(x . X^T s - sum_t softplus((X x)_t)) depends on s only through y = X^T s, so this is the
        # likelihood of the statistics up to the number of spike trains with these statistics (independent of x).
        return (x * y).sum(-1) - torch.nn.functional.softplus(x @ self.design.double().T).sum(-1)


# -- ODE tasks ---------------------------------------------------------------------------------------------------------
# Dormand-Prince 5(4) tableau (Dormand & Prince 1980), as in scipy's RK45.
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)  # 5th minus 4th order


def solve_ode(f: Callable[[np.ndarray, np.ndarray], np.ndarray], y0: np.ndarray, params: np.ndarray,
              t_save: np.ndarray, rtol: float = 1e-7, atol: float = 1e-9, h0: float = 1e-3,
              max_steps: int = 200_000) -> np.ndarray:
    """Solve the autonomous ODEs ``dy/dt = f(y, p)`` for a batch of trajectories at once.

    Each trajectory has its own adaptive step (Dormand-Prince 5(4), error per step ``<= atol + rtol |y|`` in the
    RMS norm over its components, as in ``solve_ivp``) and steps exactly onto every time of ``t_save``.

    Args:
        f: ``f(y (m, d), p (m, k)) -> (m, d)``, vectorised over trajectories.
        y0: initial states ``(n, d)`` at ``t = 0``.
        params: parameters ``(n, k)``.
        t_save: increasing times ``(T,)``, ``>= 0``.

    Returns:
        states ``(n, T, d)``; NaN for trajectories that did not finish within ``max_steps`` steps or became
        non-finite.
    """
    y0, params = np.asarray(y0, dtype=np.float64), np.asarray(params, dtype=np.float64)
    t_save = np.asarray(t_save, dtype=np.float64)
    n, d = y0.shape
    out = np.full((n, len(t_save), d), np.nan)
    t, y, h = np.zeros(n), y0.copy(), np.full(n, h0)
    k_next = np.zeros(n, dtype=np.int64)
    at_start = t_save[0] <= 0.0
    if at_start:
        out[:, 0] = y0
        k_next[:] = 1
    active = np.arange(n) if len(t_save) > int(at_start) else np.arange(0)
    steps = 0
    while active.size and steps < max_steps:
        steps += 1
        ta, ya, pa = t[active], y[active], params[active]
        gap = t_save[k_next[active]] - ta
        hits = h[active] >= gap
        ha = np.where(hits, gap, h[active])[:, None]
        with np.errstate(all="ignore"):  # a trajectory that blows up is caught below and given up
            ks = [f(ya, pa)]
            for a in _DP_A[1:]:
                ks.append(f(ya + ha * sum(c * k for c, k in zip(a, ks)), pa))
            y_new = ya + ha * sum(c * k for c, k in zip(_DP_B, ks))
            ks.append(f(y_new, pa))
            err = ha * sum(c * k for c, k in zip(_DP_E, ks) if c != 0.0)
            scale = atol + rtol * np.maximum(np.abs(ya), np.abs(y_new))
            err_norm = np.sqrt(np.mean((err / scale) ** 2, axis=1))
        finite = np.isfinite(y_new).all(1) & np.isfinite(err_norm)
        ok = finite & (err_norm <= 1.0)
        with np.errstate(divide="ignore"):
            factor = np.clip(0.9 * np.where(err_norm > 0, err_norm, 1e-10) ** -0.2, 0.2, 10.0)
        factor = np.where(ok, factor, np.minimum(np.where(finite, factor, 0.2), 1.0))
        h[active] = ha[:, 0] * factor
        acc = active[ok]
        y[acc] = y_new[ok]
        t[acc] = np.where(hits[ok], t_save[k_next[acc]], ta[ok] + ha[ok, 0])
        rec = acc[hits[ok]]
        out[rec, k_next[rec]] = y[rec]
        k_next[rec] += 1
        dead = active[~finite & (h[active] < 1e-12)]  # blew up: give up on it (stays NaN)
        k_next[dead] = len(t_save)
        active = active[k_next[active] < len(t_save)]
    if active.size:
        out[active] = np.nan
    return out


class SIR(Task):
    """SIR epidemic: infection rate ``beta``, recovery rate ``gamma``; 10 binomial counts of the infected."""

    name = "sir"
    param_names = ["beta", "gamma"]

    def __init__(self, population: float = 1e6, initial_infected: float = 1.0, days: int = 160, every: int = 17,
                 total_count: int = 1000, rtol: float = 1e-8, atol: float = 1e-12):
        self.population, self.initial_infected, self.total_count = population, initial_infected, total_count
        self.t_obs = np.arange(0, days + 1, dtype=np.float64)[::every]  # days 0, 17, ..., 153
        self.obs_names = [f"I_day_{int(t)}" for t in self.t_obs]
        self.rtol, self.atol = rtol, atol
        self.prior = Independent(LogNormal(torch.tensor([math.log(0.4), math.log(0.125)]), torch.tensor([0.5, 0.2])),
                                 1)

    def _sample_prior(self, n, gen):
        return torch.exp(self.prior.base_dist.loc + self.prior.base_dist.scale * torch.randn(n, 2, generator=gen))

    @staticmethod
    def _rhs(u, p):
        infect = p[:, 0] * u[:, 0] * u[:, 1]
        recover = p[:, 1] * u[:, 1]
        return np.stack([-infect, infect - recover, recover], 1)

    def trajectories(self, x) -> np.ndarray:
        """Population fractions ``(n, T, 3)`` (S, I, R over N) at the observation days."""
        x = np.asarray(torch.as_tensor(x, dtype=torch.float64))
        i0 = self.initial_infected / self.population
        y0 = np.tile([1.0 - i0, i0, 0.0], (len(x), 1))
        return solve_ode(self._rhs, y0, x, self.t_obs, rtol=self.rtol, atol=self.atol)

    def infection_probability(self, x) -> Tensor:
        return torch.as_tensor(self.trajectories(x)[:, :, 1]).clamp(0.0, 1.0)

    def _simulate(self, x, gen):
        p = self.infection_probability(x)
        bad = torch.isnan(p).any(1)
        counts = torch.binomial(torch.full(p.shape, float(self.total_count), dtype=torch.float64),
                                torch.nan_to_num(p), generator=gen).float()
        counts[bad] = float("nan")
        return counts

    def _log_likelihood(self, y, x):
        p = self.infection_probability(x)
        k = y
        with np.errstate(divide="ignore"):
            ll = torch.xlogy(k, p) + torch.xlogy(self.total_count - k, 1 - p)
        return torch.nan_to_num(ll.sum(-1), nan=-math.inf)


class LotkaVolterra(Task):
    """Lotka-Volterra predator-prey model; 10 noisy prey and 10 noisy predator counts."""

    name = "lotka_volterra"
    param_names = ["alpha", "beta", "gamma", "delta"]

    def __init__(self, initial: tuple[float, float] = (30.0, 1.0), dt: float = 0.1, every: int = 21,
                 days: float = 20.0, noise: float = 0.1, rtol: float = 1e-8, atol: float = 1e-8):
        self.initial, self.noise = initial, noise
        self.t_obs = (np.arange(int(round(days / dt)) + 1) * dt)[::every]  # 0, 2.1, ..., 18.9
        self.obs_names = [f"prey_t{t:.1f}" for t in self.t_obs] + [f"predator_t{t:.1f}" for t in self.t_obs]
        self.rtol, self.atol = rtol, atol
        self.prior = Independent(LogNormal(torch.tensor([-0.125, -3.0, -0.125, -3.0]), torch.full((4,), 0.5)), 1)

    def _sample_prior(self, n, gen):
        return torch.exp(self.prior.base_dist.loc + self.prior.base_dist.scale * torch.randn(n, 4, generator=gen))

    @staticmethod
    def _rhs(lu, p):  # in log populations: d log u = alpha - beta v, d log v = -gamma + delta u
        return np.stack([p[:, 0] - p[:, 1] * np.exp(lu[:, 1]), -p[:, 2] + p[:, 3] * np.exp(lu[:, 0])], 1)

    def log_trajectories(self, x) -> np.ndarray:
        """Log populations ``(n, T, 2)`` (prey, predators) at the observation times."""
        x = np.asarray(torch.as_tensor(x, dtype=torch.float64))
        y0 = np.tile(np.log(self.initial), (len(x), 1))
        return solve_ode(self._rhs, y0, x, self.t_obs, rtol=self.rtol, atol=self.atol)

    def log_mean(self, x) -> Tensor:
        """``log(clip(u, 1e-10, 1e4))`` ``(n, 20)``: prey at the 10 times, then predators."""
        lu = torch.as_tensor(self.log_trajectories(x)).clamp(math.log(1e-10), math.log(1e4))
        return torch.cat([lu[:, :, 0], lu[:, :, 1]], 1)

    def _simulate(self, x, gen):
        m = self.log_mean(x)
        return torch.exp(m + self.noise * torch.randn(m.shape, generator=gen, dtype=torch.float64)).float()

    def _log_likelihood(self, y, x):
        m = self.log_mean(x)
        ly = torch.log(y)
        ll = (-ly - math.log(self.noise * math.sqrt(2 * math.pi)) - 0.5 * ((ly - m) / self.noise) ** 2).sum(-1)
        return torch.nan_to_num(ll, nan=-math.inf)


_CLASSES = {c.name: c for c in (GaussianLinear, GaussianLinearUniform, BernoulliGLM, SIR, LotkaVolterra)}


def get_task(name: str, **kwargs) -> Task:
    """The task called ``name`` (one of :data:`TASKS`)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return _CLASSES[name](**kwargs)
