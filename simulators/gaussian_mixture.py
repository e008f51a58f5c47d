"""Eight-mode Gaussian mixture with grouped labels (thesis sec. 4.2.1, Fig. 4.2; app. B.2 and B.5.1).

Parameters ``x`` in 2-D (length units, dimensionless) follow a mixture of 8 equal isotropic Gaussians with means
evenly spaced on a circle of radius ``radius``. Component ``c`` carries a label; as in the thesis the first four
components (clockwise) share label 0, the next two label 1, and the last two labels 2 and 3. The observation
``y`` is the one-hot label (4-D).

The generative model is ``c ~ U{0..7}``, ``x ~ N(mu_c, sigma^2 I)``, ``y = onehot(label(c))``. Given only ``x``,
``simulate`` draws ``c`` from ``p(c | x)`` (practically deterministic for well separated modes), so the likelihood
``p(y | x) = sum_{c: label(c) = y} p(c | x)`` and the posterior ``p(x | y)`` (the equal-weight mixture of the
components carrying label ``y``) are exact.

Example:
    >>> sim = GaussianMixture()
    >>> sim.simulate(sim.means[:1], generator=torch.Generator().manual_seed(0)).tolist()  # the top mode: label 0
    [[1.0, 0.0, 0.0, 0.0]]
    >>> sim.sample_posterior(torch.tensor([0.0, 0.0, 1.0, 0.0]), 5).shape  # label 2: the seventh mode alone
    torch.Size([5, 2])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from simulators.base import Simulator

DEFAULT_LABELS = (0, 0, 0, 0, 1, 1, 2, 3)


class GaussianMixture(Simulator):
    name = "gaussian_mixture"
    param_names = ["x1", "x2"]
    param_units = ["", ""]

    def __init__(self, radius: float = 3.0, sigma: float = 0.2, labels: tuple[int, ...] = DEFAULT_LABELS):
        if not (radius > 0 and math.isfinite(radius)):
            raise ValueError(f"gaussian_mixture: radius must be positive and finite, got {radius!r}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"gaussian_mixture: sigma must be positive and finite, got {sigma!r}")
        labels = tuple(int(l) for l in labels)
        if len(labels) < 2 or sorted(set(labels)) != list(range(max(labels) + 1)):
            raise ValueError(f"gaussian_mixture: labels must use every value 0..L-1, got {labels!r}")
        self.radius, self.sigma, self.labels = float(radius), float(sigma), labels
        k = len(labels)
        # clockwise from the top: angle pi/2 - 2 pi c / k
        angles = math.pi / 2 - 2 * math.pi * torch.arange(k, dtype=torch.float32) / k
        self.means = self.radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)  # (k, 2)
        self.num_labels = max(labels) + 1
        self.obs_names = [f"label_{i}" for i in range(self.num_labels)]
        self.obs_units = [""] * self.num_labels
        self._label_of = torch.tensor(labels)
        self.prior = MixtureSameFamily(
            Categorical(probs=torch.full((k,), 1.0 / k)),
            Independent(Normal(self.means, torch.full((k, 2), self.sigma)), 1),
        )

    def config(self) -> dict:
        return {"radius": self.radius, "sigma": self.sigma, "labels": list(self.labels)}

    def component_log_posterior(self, x: Tensor) -> Tensor:
        """``log p(c | x)`` for every component, shape ``(n, k)``."""
        d2 = ((x[:, None, :] - self.means.to(x)[None]) ** 2).sum(-1)
        return torch.log_softmax(-0.5 * d2 / self.sigma**2, dim=-1)

    def _simulate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        probs = self.component_log_posterior(x).exp()
        c = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        label = self._label_of.to(x.device)[c]
        return torch.nn.functional.one_hot(label, self.num_labels).to(x.dtype)

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """``log p(y | x)`` for one-hot ``y`` (shape ``(n, L)`` or ``(L,)``), shape ``(n,)``."""
        x = self.check_parameters(x)
        y = self._labels_from_onehot(y).to(x.device)
        logp_c = self.component_log_posterior(x)  # (n, k)
        match = self._label_of.to(x.device)[None, :] == y.reshape(-1, 1)
        return torch.logsumexp(logp_c.masked_fill(~match, -math.inf), dim=-1)

    def sample_posterior(self, y: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws from the mixture of the components carrying label ``y`` (one-hot, shape ``(L,)``)."""
        label = int(self._labels_from_onehot(y).reshape(-1)[0])
        comps = torch.nonzero(self._label_of == label).squeeze(-1)
        pick = comps[torch.randint(len(comps), (n,), generator=generator)]
        eps = torch.randn((n, 2), generator=generator)
        return self.means[pick] + self.sigma * eps

    def _labels_from_onehot(self, y: Tensor) -> Tensor:
        y = torch.as_tensor(y, dtype=torch.float32)
        if y.shape[-1] != self.num_labels:
            raise ValueError(f"gaussian_mixture: y must be one-hot with {self.num_labels} entries, "
                             f"got shape {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("gaussian_mixture: y contains NaN or inf")
        return y.argmax(-1)
