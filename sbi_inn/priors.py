"""Priors: helpers to build, validate and describe ``torch.distributions`` priors with event shape ``(D,)``.

Users pass any ``torch.distributions.Distribution``; a list of independent 1-D distributions is accepted too and
becomes an :class:`IndependentPrior`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Uniform, constraints

from sbi_inn.checks import real_tensor


class BoxUniform(Independent):
    """Uniform prior on the box ``[low, high]`` (event shape ``(D,)``), as in ``sbi.utils.BoxUniform``.

    Example:
        >>> prior = BoxUniform([0.0, -1.0], [1.0, 1.0])
        >>> prior.event_shape, round(prior.log_prob(torch.tensor([0.5, 0.0])).item(), 4)  # log(1 / (1 * 2))
        (torch.Size([2]), -0.6931)
    """

    def __init__(self, low, high):
        low = real_tensor("BoxUniform: low", low).to(torch.get_default_dtype())
        high = real_tensor("BoxUniform: high", high).to(torch.get_default_dtype())
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"BoxUniform: low and high must be 1-D of equal length, got {tuple(low.shape)} "
                             f"and {tuple(high.shape)}")
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError(f"BoxUniform: low and high must be finite numbers, got {low.tolist()} and "
                             f"{high.tolist()} (for an unbounded side use IndependentPrior)")
        if not (high > low).all():
            raise ValueError(f"BoxUniform: every high must exceed its low, got low {low.tolist()}, high "
                             f"{high.tolist()}")
        super().__init__(Uniform(low, high), 1)


class IndependentPrior(Distribution):
    """Product of independent 1-D distributions, one per parameter; event shape ``(D,)``.

    Example:
        >>> from torch.distributions import Gamma, Normal
        >>> prior = IndependentPrior([Normal(0.0, 1.0), Gamma(2.0, 1.0)])
        >>> prior.event_shape, prior.mean.tolist()
        (torch.Size([2]), [0.0, 2.0])
        >>> round(prior.log_prob(torch.tensor([0.0, 1.0])).item(), 4)  # -log(2 pi) / 2 - 1
        -1.9189
    """

    arg_constraints: dict = {}

    def __init__(self, marginals: Sequence[Distribution]):
        marginals = list(marginals)
        if not marginals:
            raise ValueError("IndependentPrior: need at least one marginal distribution")
        for i, m in enumerate(marginals):
            if not isinstance(m, Distribution):
                raise TypeError(f"IndependentPrior: entry {i} is {type(m).__name__}, not a torch Distribution")
            if m.batch_shape != torch.Size() or m.event_shape != torch.Size():
                raise ValueError(f"IndependentPrior: entry {i} must be a scalar (1-D) distribution, got "
                                 f"batch shape {tuple(m.batch_shape)}, event shape {tuple(m.event_shape)}")
        self.marginals = marginals
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([len(marginals)]), validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.cat([m.support for m in self.marginals], dim=-1,
                                                       lengths=[1] * len(self.marginals)), 1)

    def sample(self, sample_shape=()) -> Tensor:
        return torch.stack([m.sample(sample_shape).to(torch.get_default_dtype()) for m in self.marginals], -1)

    def log_prob(self, value: Tensor) -> Tensor:
        return sum(m.log_prob(value[..., i]) for i, m in enumerate(self.marginals))

    @property
    def mean(self) -> Tensor:
        return torch.stack([torch.as_tensor(m.mean, dtype=torch.get_default_dtype()) for m in self.marginals])

    @property
    def variance(self) -> Tensor:
        return torch.stack([torch.as_tensor(m.variance, dtype=torch.get_default_dtype()) for m in self.marginals])


def as_prior(prior) -> Distribution:
    """Return ``prior`` as a Distribution with event shape ``(D,)``; lists of 1-D distributions are combined."""
    if isinstance(prior, (list, tuple)):
        return IndependentPrior(prior)
    if not isinstance(prior, Distribution):
        raise TypeError(f"prior must be a torch.distributions.Distribution or a list of 1-D ones, "
                        f"got {type(prior).__name__}")
    if len(prior.event_shape) != 1 or prior.batch_shape != torch.Size():
        raise ValueError(
            f"prior must have event shape (D,) and no batch shape, got event shape {tuple(prior.event_shape)} and "
            f"batch shape {tuple(prior.batch_shape)}; wrap independent 1-D priors with "
            "torch.distributions.Independent(..., 1), sbi_inn.BoxUniform or a list"
        )
    return prior


def prior_for(simulate, prior) -> Distribution:
    """``prior`` as :func:`as_prior` returns it, or, when ``prior`` is ``None``, the ``.prior`` of ``simulate`` (a
    ``simulators.Simulator``); ``TypeError`` when neither is given."""
    if prior is None:
        prior = getattr(simulate, "prior", None)
        if prior is None:
            raise TypeError("prior is missing: pass a torch.distributions.Distribution (or a list of 1-D ones); the "
                            "simulator has no .prior to use instead")
    return as_prior(prior)


def support_bounds(prior: Distribution) -> tuple[Tensor, Tensor]:
    """Per-dimension lower and upper bounds of the prior's support, each ``(D,)`` (``+-inf`` where unbounded).

    Reads real, positive, interval and half-interval supports, and concatenations of them (``constraints.cat``, as
    used by :class:`IndependentPrior` and product priors such as the Normal-Inverse-Gamma); a support it cannot read
    is treated as unbounded.

    Example:
        >>> from torch.distributions import Gamma, Normal
        >>> lo, hi = support_bounds(IndependentPrior([Normal(0.0, 1.0), Gamma(2.0, 1.0)]))
        >>> lo.tolist(), hi.tolist()
        ([-inf, 0.0], [inf, inf])
        >>> support_bounds(BoxUniform([0.0, -1.0], [1.0, 1.0]))
        (tensor([ 0., -1.]), tensor([1., 1.]))
    """
    prior = as_prior(prior)
    d = prior.event_shape[0]
    try:
        support = prior.support
    except NotImplementedError:
        raise TypeError(f"the prior ({type(prior).__name__}) has no .support; give it one (e.g. "
                        "torch.distributions.constraints.real, or constraints.interval(low, high) for a box) so "
                        "samples can be kept inside it") from None
    lo, hi = _constraint_bounds(support, d)
    return torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)


def _constraint_bounds(c, d: int) -> tuple[list[float], list[float]]:
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    if isinstance(c, constraints.cat):
        lo: list[float] = []
        hi: list[float] = []
        for part, length in zip(c.cseq, c.lengths):
            l, h = _constraint_bounds(part, length)
            lo, hi = lo + l, hi + h
        if len(lo) == d:
            return lo, hi
        return [-math.inf] * d, [math.inf] * d
    l, h = _scalar_bounds(c)
    return ([float(v) for v in torch.as_tensor(l, dtype=torch.float64).expand(d)],
            [float(v) for v in torch.as_tensor(h, dtype=torch.float64).expand(d)])


def _scalar_bounds(c) -> tuple[Any, Any]:
    if isinstance(c, (constraints._Interval, constraints._HalfOpenInterval)):
        return c.lower_bound, c.upper_bound
    if isinstance(c, (constraints._GreaterThan, constraints._GreaterThanEq)):
        return c.lower_bound, math.inf
    if isinstance(c, constraints._LessThan):
        return -math.inf, c.upper_bound
    return -math.inf, math.inf


def describe_prior(prior: Distribution) -> dict[str, Any]:
    """A JSON-serialisable description of a prior (class, parameters where readable, support bounds)."""
    prior = as_prior(prior)
    lo, hi = support_bounds(prior)
    desc: dict[str, Any] = {"class": type(prior).__name__, "repr": repr(prior), "event_dim": int(prior.event_shape[0]),
                            "support_low": [float(v) for v in lo], "support_high": [float(v) for v in hi]}
    if isinstance(prior, IndependentPrior):
        desc["marginals"] = [repr(m) for m in prior.marginals]
    base = prior.base_dist if isinstance(prior, Independent) else prior
    params = {}
    for name in getattr(base, "arg_constraints", {}) or {}:
        value = getattr(base, name, None)
        if isinstance(value, Tensor) and value.numel() <= 4096:
            params[name] = value.tolist()
    if params:
        desc["params"] = params
    return desc
