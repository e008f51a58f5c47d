"""Affine coupling flows built on FrEIA (the only module of sbi_inn that imports FrEIA).

One builder serves both model families: the bidirectional INN of thesis ch. 4 (no condition) and the conditional
INN of thesis ch. 3 (condition concatenated to every subnet input, eq. 3.10).

Each block is a GLOW-style affine coupling block (thesis 2.2.1, 3.2) with the soft clamp of eq. 3.13,
``s~ = alpha * tanh(s / alpha)``, followed by a fixed random orthogonal rotation (thesis 3.5, "Channel mixing") or a
fixed random permutation. Subnets are MLPs whose last layer starts at zero, so a fresh flow is the identity.

References:
    thesis ``002_e718d3c52e134117.txt`` sections 2.2.1, 3.2 (eq. 3.10), 3.5 (eq. 3.13, orthogonal mixing);
    ``NOTES.md`` "Coupling blocks and FrEIA" (FrEIA's default clamp is an atan form; we pass tanh(u / alpha)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of a coupling flow.

    Attributes:
        num_blocks: number of affine coupling blocks.
        hidden: width of the subnet hidden layers.
        num_layers: number of hidden layers in each subnet (the thesis uses 3-4 fully connected layers).
        activation: subnet nonlinearity, one of ``ACTIVATIONS``.
        clamp: the soft-clamp ``alpha`` of eq. 3.13 (thesis 3.5).
        mixing: ``"orthogonal"`` (fixed random rotation, thesis 3.5) or ``"permute"``.
        dropout: dropout probability inside subnets (0 disables).
        seed: seed of the fixed random mixing matrices.
    """

    num_blocks: int = 6
    hidden: int = 128
    num_layers: int = 3
    activation: str = "relu"
    clamp: float = 2.0
    mixing: str = "orthogonal"
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.num_blocks < 1 or self.hidden < 1 or self.num_layers < 1:
            raise ValueError(f"FlowConfig: num_blocks, hidden and num_layers must be >= 1, got {self}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"FlowConfig: activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not self.clamp > 0:
            raise ValueError(f"FlowConfig: clamp must be positive, got {self.clamp}")
        if self.mixing not in ("orthogonal", "permute"):
            raise ValueError(f"FlowConfig: mixing must be 'orthogonal' or 'permute', got {self.mixing!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"FlowConfig: dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class _SoftClamp:
    """``u -> tanh(u / alpha)``; FrEIA multiplies by ``clamp = alpha``, giving eq. 3.13 exactly."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, u: Tensor) -> Tensor:
        return torch.tanh(u / self.alpha)


def _subnet_constructor(cfg: FlowConfig):
    def make(dims_in: int, dims_out: int) -> nn.Module:
        layers: list[nn.Module] = []
        width = dims_in
        for _ in range(cfg.num_layers):
            layers += [nn.Linear(width, cfg.hidden), ACTIVATIONS[cfg.activation]()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = cfg.hidden
        last = nn.Linear(width, dims_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(*layers, last)

    return make


def random_orthogonal(dim: int, generator: torch.Generator) -> Tensor:
    """A Haar-random orthogonal matrix ``(dim, dim)`` (QR of a Gaussian matrix with sign correction)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return q.to(torch.get_default_dtype())


class CouplingFlow(nn.Module):
    """An invertible map ``R^dim -> R^dim``, optionally conditioned on a vector ``c`` of size ``cond_dim``.

    ``forward(x, c) -> (z, log|det dz/dx|)`` and ``inverse(z, c) -> (x, log|det dx/dz|)``, shapes ``(n, dim)``
    and ``(n,)``.
    """

    def __init__(self, dim: int, cond_dim: int = 0, config: FlowConfig = FlowConfig()):
        super().__init__()
        if dim < 2:
            raise ValueError(f"CouplingFlow: dim must be >= 2 (pad 1-D problems), got {dim}")
        self.dim, self.cond_dim, self.config = dim, cond_dim, config
        gen = torch.Generator().manual_seed(config.seed)
        self.inn = Ff.SequenceINN(dim)
        cond_kwargs = {"cond": 0, "cond_shape": (cond_dim,)} if cond_dim > 0 else {}
        for _ in range(config.num_blocks):
            self.inn.append(Fm.GLOWCouplingBlock, subnet_constructor=_subnet_constructor(config),
                            clamp=config.clamp, clamp_activation=_SoftClamp(config.clamp), **cond_kwargs)
            if config.mixing == "orthogonal":
                self.inn.append(Fm.FixedLinearTransform, M=random_orthogonal(dim, gen))
            else:
                perm = torch.randperm(dim, generator=gen)
                self.inn.append(Fm.FixedLinearTransform, M=torch.eye(dim)[perm])

    def _cond(self, x: Tensor, c: Tensor | None):
        if self.cond_dim == 0:
            if c is not None:
                raise ValueError("CouplingFlow: this flow takes no condition")
            return None
        if c is None or c.shape != (x.shape[0], self.cond_dim):
            got = None if c is None else tuple(c.shape)
            raise ValueError(f"CouplingFlow: condition must have shape ({x.shape[0]}, {self.cond_dim}), got {got}")
        return [c]

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_det = self.inn(x, c=self._cond(x, c), rev=False)
        return z, log_det

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, log_det = self.inn(z, c=self._cond(z, c), rev=True)
        return x, log_det
