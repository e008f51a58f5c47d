"""Inverse kinematics of a 4-DoF arm on a vertical rail (thesis sec. 4.2.2, eqs. 4.3-4.4; app. B.3, eqs. B.8-B.9).

Parameters ``x = (x1, x2, x3, x4)``: rail position (length units) and three joint angles (rad), with independent
Gaussian priors ``N(0, sigma_i^2)``, ``sigma = (0.25, 0.5, 0.5, 0.5)`` (app. B.3). Observation ``y = (y1, y2)``: the
end point of the arm (length units), arm segment lengths ``l = (0.5, 0.5, 1.0)``::

    y1 = x1 + l1 sin(x2) + l2 sin(x3 - x2) + l3 sin(x4 - x2 - x3)      (4.3 / B.8)
    y2 =      l1 cos(x2) + l2 cos(x3 - x2) + l3 cos(x4 - x2 - x3)      (4.4 / B.9)

Deterministic by default (as in the thesis). With ``noise = sigma_y > 0`` Gaussian observation noise is added,
which gives a proper likelihood ``log_likelihood`` for MCMC references.

Example:
    >>> sim = InverseKinematics()
    >>> sim.forward_kinematics(torch.zeros(1, 4)).tolist()  # all angles 0: the arm points straight up
    [[0.0, 2.0]]
    >>> sim.joint_positions(torch.zeros(1, 4)).shape  # rail mount, two joints, end point
    torch.Size([1, 4, 2])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from simulators.base import Simulator


class InverseKinematics(Simulator):
    name = "inverse_kinematics"
    param_names = ["rail", "angle1", "angle2", "angle3"]
    param_units = ["length", "rad", "rad", "rad"]
    obs_names = ["end_x", "end_y"]
    obs_units = ["length", "length"]

    def __init__(self, noise: float = 0.0, lengths: tuple[float, float, float] = (0.5, 0.5, 1.0),
                 prior_scales: tuple[float, float, float, float] = (0.25, 0.5, 0.5, 0.5)):
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ValueError(f"inverse_kinematics: noise must be a finite number >= 0, got {noise!r}")
        if len(lengths) != 3 or any(not (l > 0) for l in lengths):
            raise ValueError(f"inverse_kinematics: lengths must be three positive numbers, got {lengths!r}")
        if len(prior_scales) != 4 or any(not (s > 0) for s in prior_scales):
            raise ValueError(f"inverse_kinematics: prior_scales must be four positive numbers, got {prior_scales!r}")
        self.noise = float(noise)
        self.lengths = tuple(float(l) for l in lengths)
        self.prior_scales = tuple(float(s) for s in prior_scales)
        self.prior = Independent(Normal(torch.zeros(4), torch.tensor(self.prior_scales)), 1)

    def config(self) -> dict:
        return {"noise": self.noise, "lengths": list(self.lengths), "prior_scales": list(self.prior_scales)}

    def forward_kinematics(self, x: Tensor) -> Tensor:
        """Noise-free end point, shape ``(n, 2)``, for parameters ``x`` of shape ``(n, 4)``."""
        l1, l2, l3 = self.lengths
        x1, x2, x3, x4 = x.unbind(-1)
        a2, a3 = x3 - x2, x4 - x2 - x3
        y1 = x1 + l1 * torch.sin(x2) + l2 * torch.sin(a2) + l3 * torch.sin(a3)
        y2 = l1 * torch.cos(x2) + l2 * torch.cos(a2) + l3 * torch.cos(a3)
        return torch.stack([y1, y2], dim=-1)

    def joint_positions(self, x: Tensor) -> Tensor:
        """Positions of the rail mount, the three joints and the end point, shape ``(n, 4, 2)`` (for arm plots)."""
        l1, l2, l3 = self.lengths
        x1, x2, x3, x4 = x.unbind(-1)
        p0 = torch.stack([x1, torch.zeros_like(x1)], -1)
        p1 = p0 + l1 * torch.stack([torch.sin(x2), torch.cos(x2)], -1)
        p2 = p1 + l2 * torch.stack([torch.sin(x3 - x2), torch.cos(x3 - x2)], -1)
        p3 = p2 + l3 * torch.stack([torch.sin(x4 - x2 - x3), torch.cos(x4 - x2 - x3)], -1)
        return torch.stack([p0, p1, p2, p3], dim=-2)

    def _simulate(self, x: Tensor, generator: torch.Generator) -> Tensor:
        y = self.forward_kinematics(x)
        if self.noise > 0:
            y = y + self.noise * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y

    def log_likelihood(self, y: Tensor, x: Tensor) -> Tensor:
        """Gaussian ``log N(y; s(x), noise^2 I)``, shape ``(n,)``; only defined for ``noise > 0``."""
        if self.noise <= 0:
            raise NotImplementedError(
                "inverse_kinematics with noise=0 is deterministic and has no likelihood; "
                "use get_simulator('inverse_kinematics', noise=0.01) for MCMC"
            )
        x = self.check_parameters(x)
        y = torch.as_tensor(y, dtype=x.dtype, device=x.device)
        r = (y - self.forward_kinematics(x)) / self.noise
        return -0.5 * (r**2).sum(-1) - 2 * math.log(self.noise) - math.log(2 * math.pi)
