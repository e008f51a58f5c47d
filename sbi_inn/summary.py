"""Conditioning (summary) networks ``c = phi(y)`` for the conditional INN (thesis sec. 3.4, sec. 3.8.6).

The conditional coupling blocks see the observation only through a learned feature vector ``c = phi(y)`` that is
trained jointly with the flow by back-propagating the conditional maximum-likelihood loss (thesis sec. 3.4). Two
networks are provided:

- :class:`MLPSummary` for fixed-size observations ``(B, *obs_shape)`` (flattened);
- :class:`DeepSetSummary` for unordered sets of varying size ``(B, K, M)`` with a mask ``(B, K)``: the deep-set
  form ``phi({y_k}) = rho(pool_k psi(y_k))`` of thesis eq. 3.14 (Bayes-Flow, Radev et al. 2020), by default with
  the spread of the members' features pooled beside their mean.

Any ``torch.nn.Module`` can replace them: it must have an integer attribute ``out_dim`` and be callable as
``net(y)`` for vectors, ``net(y, mask)`` for sets, returning ``(B, out_dim)``.

References:
    thesis sec. 3.4 (conditioning network), sec. 3.8.6 (deep-set summary network, eq. 3.14); Radev et al. (2020),
    "BayesFlow"; mean and standard-deviation aggregation together as in Corso et al. (2020), "Principal
    Neighbourhood Aggregation".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sbi_inn.flows import ACTIVATIONS

POOLS = ("mean_std", "mean")


def mlp(in_dim: int, out_dim: int, hidden: int, num_layers: int, activation: str = "relu") -> nn.Sequential:
    """A fully connected network with ``num_layers`` hidden layers of width ``hidden`` (0 gives a linear map)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class MLPSummary(nn.Module):
    """Summary of a fixed-size observation: a fully connected network on the flattened observation.

    Args:
        in_dim: number of observation entries ``M`` (observations of shape ``obs_shape`` are flattened).
        out_dim: number of learned summary features ``C``.
        hidden: hidden-layer width.
        num_layers: number of hidden layers.
        activation: one of ``sbi_inn.flows.ACTIVATIONS``.

    Example:
        >>> net = MLPSummary(3, 8, hidden=16, num_layers=2)
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 8])
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, num_layers: int = 2, activation: str = "relu"):
        super().__init__()
        if min(in_dim, out_dim, hidden) < 1 or num_layers < 0:
            raise ValueError(f"MLPSummary: in_dim, out_dim, hidden must be >= 1 and num_layers >= 0, got "
                             f"{in_dim}, {out_dim}, {hidden}, {num_layers}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = mlp(in_dim, out_dim, hidden, num_layers, activation)

    def forward(self, y: Tensor) -> Tensor:
        """``y`` ``(B, *obs_shape)`` with ``prod(obs_shape) = in_dim`` -> ``(B, out_dim)``."""
        return self.net(y.reshape(y.shape[0], -1))


class DeepSetSummary(nn.Module):
    """Permutation-invariant summary of a set of varying size (thesis sec. 3.8.6, eq. 3.14).

    ``phi({y_k}) = rho([mean_k psi(y_k), std_k h(y_k), log K / log K_ref])``: an element network ``psi`` applied to
    every set member, a masked *mean* pool over the valid members, the (scaled) log set size appended, and a network
    ``rho``. Mean pooling keeps the pooled features on the same scale for K = 1 and K = 1000, and together with
    ``log K`` it carries the same information as the sum pool of eq. 3.14 (``sum = K * mean``). Padded rows (``mask``
    False) contribute nothing, so extra padding never changes the output.

    ``pool="mean_std"`` (the default) also pools the standard deviation over the members of ``h``, ``psi``'s last
    hidden layer (the input itself when ``psi`` has none): how spread out a set is then needs no second moment built
    from piecewise-linear features. It is the default because it made the posteriors of the conjugate set benchmark
    closer to the exact ones, most where a set's variance lies in the prior's tail (the C2ST numbers are in
    ``benchmarks/results/design_notes.md``). ``pool="mean"`` is eq. 3.14 alone.

    Args:
        elem_dim: size ``M`` of one set member.
        out_dim: number of summary features ``C``.
        hidden: width of ``psi``'s and ``rho``'s hidden layers and of the pooled representation.
        num_layers: hidden layers of ``psi`` and of ``rho``.
        activation: one of ``sbi_inn.flows.ACTIVATIONS``.
        pool: ``"mean_std"`` or ``"mean"`` (see above).

    Example:
        >>> net = DeepSetSummary(2, 4, hidden=8, num_layers=1)
        >>> y, mask = torch.randn(3, 5, 2), torch.ones(3, 5, dtype=torch.bool)
        >>> net(y, mask).shape
        torch.Size([3, 4])
    """

    LOG_K_REF = math.log(100.0)
    SPREAD_EPS = 1e-6  # under the square root: a one-member set has zero spread and a finite gradient

    def __init__(self, elem_dim: int, out_dim: int, hidden: int = 128, num_layers: int = 2,
                 activation: str = "relu", pool: str = "mean_std"):
        super().__init__()
        if min(elem_dim, out_dim, hidden) < 1 or num_layers < 0:
            raise ValueError(f"DeepSetSummary: elem_dim, out_dim, hidden must be >= 1 and num_layers >= 0, got "
                             f"{elem_dim}, {out_dim}, {hidden}, {num_layers}")
        if pool not in POOLS:
            raise ValueError(f"DeepSetSummary: pool must be one of {POOLS}, got {pool!r}")
        self.elem_dim, self.out_dim, self.pool = elem_dim, out_dim, pool
        self.psi = mlp(elem_dim, hidden, hidden, num_layers, activation)
        spread = (hidden if num_layers > 0 else elem_dim) if pool == "mean_std" else 0
        self.rho = mlp(hidden + spread + 1, out_dim, hidden, num_layers, activation)

    def forward(self, y: Tensor, mask: Tensor) -> Tensor:
        """``y`` ``(B, K, M)`` zero-padded, ``mask`` ``(B, K)`` (True for valid rows) -> ``(B, out_dim)``."""
        if y.ndim != 3 or y.shape[-1] != self.elem_dim or mask.shape != y.shape[:2]:
            raise ValueError(f"DeepSetSummary: need y (B, K, {self.elem_dim}) and mask (B, K), got "
                             f"{tuple(y.shape)} and {tuple(mask.shape)}")
        valid = mask.to(y.dtype).sum(1, keepdim=True)  # (B, 1)
        count = valid.clamp_min(1.0)
        # psi's last layer is affine and the pool is a mean, so the layer is applied after pooling: the same
        # function, but its (hidden x hidden) product runs on B pooled rows instead of B * K members.
        h, last = y, self.psi[-1]
        for i in range(len(self.psi) - 1):  # indexing, not slicing: a slice would build a new Sequential every call
            h = self.psi[i](h)
        zero = torch.zeros((), dtype=y.dtype, device=y.device)
        h = torch.where(mask.unsqueeze(-1), h, zero)
        mean = h.sum(1) / count
        features = [nn.functional.linear(mean, last.weight) + (valid / count) * last.bias]  # empty set: 0
        if self.pool == "mean_std":
            dev = torch.where(mask.unsqueeze(-1), h - mean.unsqueeze(1), zero)
            features.append(torch.sqrt(dev.square().sum(1) / count + self.SPREAD_EPS))
        features.append(torch.log(count) / self.LOG_K_REF)
        return self.rho(torch.cat(features, dim=-1))
