"""The simulator contract shared by every simulator in this package.

A simulator bundles a prior ``p(x)`` over parameters ``x`` (shape ``(D,)``) with a batched forward model
``y = s(x)``. Randomness is always drawn from an explicit ``torch.Generator`` (argument ``generator``), never from
the global RNG state, so a seed reproduces a simulation exactly.

Set-valued simulators (``is_set_valued = True``) return a tuple ``(y, sizes)``: ``y`` of shape ``(n, K_max, M)``
zero-padded past each set's size, and ``sizes`` of shape ``(n,)`` (int64) holding the number of valid rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Simulator:
    """Base class: subclasses set the attributes below and implement ``_simulate``.

    Attributes:
        name: registry name, e.g. ``"inverse_kinematics"``.
        prior: a ``torch.distributions.Distribution`` with event shape ``(D,)``.
        param_names, obs_names: names of the ``D`` parameters and ``M`` observation dimensions.
        param_units, obs_units: units (``""`` for dimensionless).
        is_set_valued: whether ``simulate`` returns ``(y, sizes)``.

    Example:
        >>> class Shift(Simulator):  # y = x + N(0, 1)
        ...     name, param_names, obs_names = "shift", ["mu"], ["y"]
        ...     prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1), 1.0), 1)
        ...     def _simulate(self, x, generator):
        ...         return x + torch.randn(x.shape, generator=generator)
        >>> sim, g = Shift(), torch.Generator().manual_seed(0)
        >>> x = sim.sample_prior(3, generator=g)
        >>> sim.simulate(x, generator=g).shape
        torch.Size([3, 1])
    """

    name: str = "simulator"
    param_names: list[str] = []
    obs_names: list[str] = []
    param_units: list[str] = []
    obs_units: list[str] = []
    is_set_valued: bool = False
    prior: torch.distributions.Distribution

    # -- the contract -------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-serialisable configuration; ``get_simulator(self.name, **self.config())`` rebuilds this simulator."""
        return {}

    @property
    def param_dim(self) -> int:
        return len(self.param_names)

    @property
    def obs_dim(self) -> int:
        return len(self.obs_names)

    def simulate(self, x: Tensor, *, generator: torch.Generator | None = None):
        """Simulate observations for a batch of parameters.

        Args:
            x: parameters, shape ``(n, D)``.
            generator: source of randomness; a fresh, randomly seeded one when ``None``.

        Returns:
            ``y`` of shape ``(n, M)``; for set-valued simulators ``(y (n, K_max, M), sizes (n,))``.
        """
        x = self.check_parameters(x)
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        return self._simulate(x, generator)

    __call__ = simulate

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """``log p(y | x)`` for observations ``y`` and parameters ``x`` (broadcast over the batch), shape ``(n,)``."""
        raise NotImplementedError(f"simulator {self.name!r} has no tractable likelihood with this configuration")

    def sample_posterior(self, y: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples from ``p(x | y)`` for one observation ``y``, shape ``(n, D)``."""
        raise NotImplementedError(f"simulator {self.name!r} has no analytic posterior")

    # -- helpers for subclasses ---------------------------------------------------------------------------------
    def _simulate(self, x: Tensor, generator: torch.Generator):
        raise NotImplementedError

    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` prior draws, shape ``(n, D)``, reproducible under ``generator`` (the global RNG is left as it was)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item()) if generator is not None else None
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return self.prior.sample((n,))

    def check_parameters(self, x: Tensor) -> Tensor:
        """Validate ``x``: a floating tensor of shape ``(n, D)`` with finite entries."""
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        if not torch.is_floating_point(x):
            raise TypeError(f"{self.name}: parameters must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.param_dim:
            raise ValueError(
                f"{self.name}: parameters must have shape (n, {self.param_dim}) "
                f"({', '.join(self.param_names)}), got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{self.name}: parameters contain NaN or inf")
        return x

    def check_observation(self, y: Tensor) -> Tensor:
        """Validate a single (non-set) observation or a batch: shape ``(M,)`` or ``(n, M)``; returns ``(n, M)``."""
        y = torch.as_tensor(y, dtype=torch.get_default_dtype())
        if y.ndim == 1:
            y = y[None]
        if y.ndim != 2 or y.shape[-1] != self.obs_dim:
            raise ValueError(f"{self.name}: observations must have shape (M,) or (n, M) with M={self.obs_dim}, "
                             f"got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError(f"{self.name}: observations contain NaN or inf")
        return y

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg})"
