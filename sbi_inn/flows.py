"""Affine coupling flows built on FrEIA (the only module of sbi_inn that imports FrEIA).

One builder serves both model families: the bidirectional INN of thesis ch. 4 (no condition; FrEIA's
``GLOWCouplingBlock``) and the conditional INN of thesis ch. 3 (condition fed to every subnet, eq. 3.10;
:class:`ConditionalAffineCoupling`, a FrEIA ``InvertibleModule`` of ours).

Each block is a GLOW-style affine coupling block (thesis sec. 2.2.1, eq. 2.25; sec. 3.2) with the soft clamp of
eq. 3.13, ``s~ = alpha * tanh(s / alpha)``, followed by a fixed random orthogonal rotation (thesis sec. 3.5,
"Channel mixing") or a fixed random permutation. Subnets are MLPs whose last layer starts at zero, so a fresh flow
is the identity.

Why our own conditional block: FrEIA's conditional blocks concatenate the condition to every input row, so
drawing ``n`` samples for one observation pushes ``n`` copies of the condition through every subnet's first
layer. Writing that layer as ``W_x x + (W_c c + b)`` (the same function) lets the condition term be computed once
per observation and broadcast, which with one-hidden-layer subnets removes most of the per-sample cost.

FrEIA's ``GLOWCouplingBlock`` clamps its log-scales with an ``atan`` form by default, not eq. 3.13; it is given
``clamp_activation = tanh(u / alpha)`` and ``clamp = alpha``, which is eq. 3.13 exactly.

Example:
    >>> flow = CouplingFlow(3, cond_dim=2, config=FlowConfig(num_blocks=2, hidden=8))
    >>> g = torch.Generator().manual_seed(0)
    >>> x, c = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    >>> z, log_det = flow(x, c)
    >>> z.shape, log_det.shape
    (torch.Size([5, 3]), torch.Size([5]))
    >>> bool(torch.allclose(flow.inverse(z, c)[0], x, atol=1e-5))
    True

References:
    thesis sec. 2.2.1 (affine coupling, eqs. 2.25-2.26), sec. 3.2 (conditional coupling block,
    eq. 3.10), sec. 3.5 (soft clamp, eq. 3.13; fixed random orthogonal channel mixing).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbi_inn.checks import check_types

COUPLINGS = ("affine", "spline")
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}
# the same nonlinearities as functions, for the conditional subnets; the in-place forms (used when no gradient is
# recorded) save one allocation per activation when sampling (measured: benchmarks/results/design_notes.md)
_FUNCTIONAL = {"relu": torch.relu, "leaky_relu": lambda h: F.leaky_relu(h, 0.01), "silu": F.silu,
               "tanh": torch.tanh, "gelu": F.gelu}
_FUNCTIONAL_INPLACE = {"relu": torch.relu_, "leaky_relu": lambda h: F.leaky_relu_(h, 0.01),
                       "silu": lambda h: F.silu(h, inplace=True), "tanh": torch.tanh_, "gelu": F.gelu}
assert _FUNCTIONAL.keys() == _FUNCTIONAL_INPLACE.keys() == ACTIVATIONS.keys()


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of a coupling flow.

    Attributes:
        num_blocks: number of affine coupling blocks.
        hidden: width of the subnet hidden layers.
        num_layers: number of hidden layers in each subnet (thesis app. B.5 uses 3-4 fully connected layers).
        activation: subnet nonlinearity, one of ``ACTIVATIONS``.
        clamp: the soft-clamp ``alpha`` of thesis eq. 3.13 (sec. 3.5).
        mixing: ``"orthogonal"`` (fixed random rotation, thesis sec. 3.5) or ``"permute"``.
        dropout: dropout probability inside subnets (0 disables).
        seed: seed of the fixed random mixing matrices.
        coupling: ``"affine"`` (GLOW-style affine coupling, thesis sec. 3.2) or ``"spline"`` (monotone
            rational-quadratic spline coupling, Durkan et al. 2019; conditional flows only).
        bins, tail_bound: the spline's number of bins and its interval ``[-tail_bound, tail_bound]`` in the
            standardised space, the identity outside (``coupling="spline"`` only).
    """

    num_blocks: int = 6
    hidden: int = 128
    num_layers: int = 3
    activation: str = "relu"
    clamp: float = 2.0
    mixing: str = "orthogonal"
    dropout: float = 0.0
    seed: int = 0
    coupling: str = "affine"
    bins: int = 8
    tail_bound: float = 4.0

    def __post_init__(self):
        check_types(self)  # a JSON value of the wrong type is named here
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
        if self.coupling not in COUPLINGS:
            raise ValueError(f"FlowConfig: coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        if self.bins < 2 or not self.tail_bound > 0:
            raise ValueError(f"FlowConfig: bins must be >= 2 and tail_bound > 0, got {self.bins}, {self.tail_bound}")

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


def _activation(name: str, h: Tensor) -> Tensor:
    """Apply activation ``name``; in place when no gradient is recorded (sampling), to save memory traffic."""
    if torch.is_grad_enabled():
        return _FUNCTIONAL[name](h)
    return _FUNCTIONAL_INPLACE[name](h)


class ConditionalSubnet(nn.Module):
    """Subnet MLP ``[u, c] -> (s, t)`` of a conditional coupling (thesis sec. 3.2, eq. 3.10), first layer split in two.

    ``W [u; c] + b = W_u u + (W_c c + b)``: the condition term is computed once per *observation* and broadcast
    over that observation's samples, so sampling ``n`` points for one ``y`` costs ``n`` passes through the
    ``u``-part only. Mathematically this is the concatenation of eq. 3.10.
    """

    def __init__(self, dim_in: int, cond_dim: int, dim_out: int, config: FlowConfig):
        super().__init__()
        h = config.hidden
        self.activation, self.dropout = config.activation, config.dropout
        self.inp = nn.Linear(dim_in, h)
        self.cond = nn.Linear(cond_dim, h, bias=False)
        self.hidden = nn.ModuleList(nn.Linear(h, h) for _ in range(config.num_layers - 1))
        self.out = nn.Linear(h, dim_out)
        nn.init.zeros_(self.out.weight)  # a fresh flow is the identity
        nn.init.zeros_(self.out.bias)

    def project(self, c: Tensor) -> Tensor:
        """First-layer condition term ``W_c c + b`` ``(B, hidden)`` for conditions ``c`` ``(B, C)``."""
        return self.cond(c) + self.inp.bias

    def forward(self, u: Tensor, hc: Tensor, work: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``(s, t)`` stacked ``(N, dim_out)`` for ``u`` ``(N, dim_in)``; row ``r`` uses ``hc[r % B]``.

        ``work``: two preallocated ``(N, hidden)`` buffers that receive the hidden activations (sampling only: no
        gradient recorded, eval mode), so no layer allocates a fresh activation. The result is bit-identical; a new
        multi-MiB tensor per layer costs page faults and a bias copy into untouched memory: an inverse pass of 4096
        rows took 1.4x the CPU time (``benchmarks/bench_sampling_roofline.py`` times sampling end to end).
        """
        N, B = u.shape[0], hc.shape[0]
        if work is not None and (self.training or torch.is_grad_enabled()):
            raise RuntimeError("ConditionalSubnet: work buffers are for eval-mode sampling without autograd")
        bufs = (None, None) if work is None else (work[0][:N], work[1][:N])
        if B == N or B == 1:
            h = torch.addmm(hc, u, self.inp.weight.t(), out=bufs[0])
        else:
            h = torch.mm(u, self.inp.weight.t(), out=bufs[0]).view(N // B, B, -1).add_(hc).view(N, -1)
        h = self._act(h)
        for i, layer in enumerate(self.hidden, start=1):
            # layer(h) as addmm, into the buffer that h does not occupy (a GELU's result is a fresh tensor)
            h = self._act(torch.addmm(layer.bias, h, layer.weight.t(), out=bufs[i % 2]))
        return self.out(h)

    def _act(self, h: Tensor) -> Tensor:
        h = _activation(self.activation, h)
        return F.dropout(h, self.dropout, self.training) if self.dropout > 0 else h


class ConditionalAffineCoupling(Fm.InvertibleModule):
    """GLOW-style conditional affine coupling block (thesis sec. 3.2, eq. 3.10; soft clamp eq. 3.13), a FrEIA module.

    ``x = [x1, x2]``: ``v2 = x2 * exp(s1(x1, c)) + t1(x1, c)``, then ``v1 = x1 * exp(s2(v2, c)) + t2(v2, c)``,
    ``s~ = alpha * tanh(s / alpha)``; ``log|det| = sum(s1~) + sum(s2~)``.

    Unlike FrEIA's ``GLOWCouplingBlock``, which concatenates a per-row condition to every subnet input, the
    condition may be given once per observation: ``c`` ``(B, C)`` with ``N = n * B`` input rows laid out as
    ``(n, B)`` (row ``r`` belongs to observation ``r % B``); ``B = N`` is the ordinary per-row case.
    """

    def __init__(self, dims_in, dims_c=None, config: FlowConfig = FlowConfig()):
        super().__init__(dims_in, dims_c)
        if not dims_c:
            raise ValueError("ConditionalAffineCoupling: needs a condition (dims_c)")
        dim, cond_dim = dims_in[0][0], dims_c[0][0]
        self.d1 = dim // 2
        self.d2 = dim - self.d1
        self.alpha = config.clamp
        self.net1 = ConditionalSubnet(self.d1, cond_dim, 2 * self.d2, config)  # x1 -> (s, t) of x2
        self.net2 = ConditionalSubnet(self.d2, cond_dim, 2 * self.d1, config)  # v2 -> (s, t) of x1

    def _st(self, net: ConditionalSubnet, u: Tensor, hc: Tensor, work=None) -> tuple[Tensor, Tensor]:
        s, t = net(u, hc, work).chunk(2, dim=1)
        return self.alpha * torch.tanh(s / self.alpha), t

    def project(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """The two subnets' condition terms ``(hc1, hc2)``, each ``(B, hidden)``, for ``cond`` ``(B, C)``."""
        return self.net1.project(cond), self.net2.project(cond)

    def forward(self, x_or_z, c=None, rev: bool = False, jac: bool = True):
        x, cond = x_or_z[0], c[0]
        N, B = x.shape[0], cond.shape[0]
        if N % B != 0:
            raise ValueError(f"ConditionalAffineCoupling: {N} input rows cannot be split among {B} conditions")
        hc1, hc2 = self.project(cond)
        if rev and not jac:
            return (self.inverse_projected(x, hc1, hc2),), torch.zeros((), dtype=x.dtype, device=x.device)
        u1, u2 = x[:, : self.d1], x[:, self.d1 :]
        if not rev:
            s1, t1 = self._st(self.net1, u1, hc1)
            v2 = u2 * torch.exp(s1) + t1
            s2, t2 = self._st(self.net2, v2, hc2)
            v1 = u1 * torch.exp(s2) + t2
            sign = 1.0
        else:
            s2, t2 = self._st(self.net2, u2, hc2)
            v1 = (u1 - t2) * torch.exp(-s2)
            s1, t1 = self._st(self.net1, v1, hc1)
            v2 = (u2 - t1) * torch.exp(-s1)
            sign = -1.0
        log_det = sign * (s1.sum(1) + s2.sum(1)) if jac else torch.zeros((), dtype=x.dtype, device=x.device)
        return (torch.cat([v1, v2], 1),), log_det

    def inverse_projected(self, x: Tensor, hc1: Tensor, hc2: Tensor, work=None) -> Tensor:
        """The inverse map ``(N, dim)`` without log-determinant, from precomputed condition terms
        (:meth:`project`); ``work`` as in :meth:`ConditionalSubnet.forward`."""
        u1, u2 = x[:, : self.d1], x[:, self.d1 :]
        s2, t2 = self._st(self.net2, u2, hc2, work)
        v1 = (u1 - t2) * torch.exp(-s2)
        s1, t1 = self._st(self.net1, v1, hc1, work)
        v2 = (u2 - t1) * torch.exp(-s1)
        return torch.cat([v1, v2], 1)

    def output_dims(self, input_dims):
        return input_dims


# -- rational-quadratic spline coupling ----------------------------------------------------------------------------
def rq_spline(x: Tensor, w_raw: Tensor, h_raw: Tensor, d_raw: Tensor, bound: float, *, inverse: bool = False,
              min_bin: float = 1e-3, min_deriv: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Monotone rational-quadratic spline on ``[-bound, bound]``, identity outside (Durkan et al. 2019).

    Args:
        x: inputs ``(n,)``.
        w_raw, h_raw: unnormalised bin widths and heights ``(n, K)``.
        d_raw: unconstrained derivatives at the ``K - 1`` inner knots ``(n, K - 1)``; zeros give derivative 1.
        inverse: evaluate the inverse map.

    Returns:
        ``(out (n,), log|d out / d x| (n,))``.
    """
    K = w_raw.shape[-1]
    widths = (min_bin + (1 - min_bin * K) * torch.softmax(w_raw, -1)) * 2 * bound
    heights = (min_bin + (1 - min_bin * K) * torch.softmax(h_raw, -1)) * 2 * bound
    shift = math.log(math.expm1(1 - min_deriv))  # softplus(0 + shift) + min_deriv == 1
    inner = min_deriv + F.softplus(d_raw + shift)
    ones = torch.ones_like(inner[..., :1])
    derivs = torch.cat([ones, inner, ones], -1)  # (n, K + 1), 1 at the ends to match the identity tails
    xk = F.pad(torch.cumsum(widths, -1), (1, 0)) - bound
    yk = F.pad(torch.cumsum(heights, -1), (1, 0)) - bound
    xk[..., -1], yk[..., -1] = bound, bound

    inside = (x > -bound) & (x < bound)
    xin = x.clamp(-bound, bound)
    knots = yk if inverse else xk
    idx = (torch.searchsorted(knots[..., 1:-1].contiguous(), xin[..., None]).squeeze(-1)).clamp(0, K - 1)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, idx[..., None]).squeeze(-1)

    x0, y0, w, h = pick(xk), pick(yk), pick(widths), pick(heights)
    d0, d1 = pick(derivs[..., :-1]), pick(derivs[..., 1:])
    s = h / w
    if not inverse:
        xi = ((xin - x0) / w).clamp(0, 1)
        t = xi * (1 - xi)
        denom = s + (d1 + d0 - 2 * s) * t
        out = y0 + h * (s * xi**2 + d0 * t) / denom
        dxi = s**2 * (d1 * xi**2 + 2 * s * t + d0 * (1 - xi) ** 2) / denom**2
        logdet = torch.log(dxi)
    else:
        dy = xin - y0
        a = h * (s - d0) + dy * (d1 + d0 - 2 * s)
        b = h * d0 - dy * (d1 + d0 - 2 * s)
        c = -s * dy
        disc = (b**2 - 4 * a * c).clamp_min(0)
        xi = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0, 1)
        out = x0 + xi * w
        t = xi * (1 - xi)
        denom = s + (d1 + d0 - 2 * s) * t
        dxi = s**2 * (d1 * xi**2 + 2 * s * t + d0 * (1 - xi) ** 2) / denom**2
        logdet = -torch.log(dxi)
    out = torch.where(inside, out, x)
    logdet = torch.where(inside, logdet, torch.zeros_like(logdet))
    return out, logdet


class ConditionalSplineCoupling(Fm.InvertibleModule):
    """Conditional rational-quadratic spline coupling block (neural spline flow, Durkan et al. 2019, sec. 3), a FrEIA
    module with the layout and condition handling of :class:`ConditionalAffineCoupling`.

    ``x = [x1, x2]``: ``v2 = RQS(x2; theta1(x1, c))``, then ``v1 = RQS(x1; theta2(v2, c))``: each coordinate goes
    through its own monotone spline of ``config.bins`` bins on ``[-tail_bound, tail_bound]`` (widths, heights and
    ``bins - 1`` inner derivatives, ``3 bins - 1`` numbers per coordinate from the subnet), the identity outside,
    so the map and its derivative are continuous everywhere (linear tails of slope 1). A spline can bend, fold mass
    into several modes and stretch by a different factor in each bin, where an affine coupling only shifts and
    scales. The subnets' last layers start at zero, which gives uniform bins and unit derivatives: the identity.
    """

    def __init__(self, dims_in, dims_c=None, config: FlowConfig = FlowConfig()):
        super().__init__(dims_in, dims_c)
        if not dims_c:
            raise ValueError("ConditionalSplineCoupling: needs a condition (dims_c)")
        dim, cond_dim = dims_in[0][0], dims_c[0][0]
        self.d1, self.d2 = dim // 2, dim - dim // 2
        self.bins, self.bound = config.bins, config.tail_bound
        per = 3 * config.bins - 1
        self.net1 = ConditionalSubnet(self.d1, cond_dim, per * self.d2, config)  # x1 -> spline of x2
        self.net2 = ConditionalSubnet(self.d2, cond_dim, per * self.d1, config)  # v2 -> spline of x1

    def _spline(self, net: ConditionalSubnet, u: Tensor, hc: Tensor, v: Tensor, inverse: bool, work=None):
        K = self.bins
        p = net(u, hc, work).view(u.shape[0], v.shape[1], 3 * K - 1)
        out, logdet = rq_spline(v, p[..., :K], p[..., K:2 * K], p[..., 2 * K:], self.bound, inverse=inverse)
        return out, logdet.sum(1)

    def project(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """The two subnets' condition terms ``(hc1, hc2)``, each ``(B, hidden)``, for ``cond`` ``(B, C)``."""
        return self.net1.project(cond), self.net2.project(cond)

    def inverse_projected(self, x: Tensor, hc1: Tensor, hc2: Tensor, work=None) -> Tensor:
        """The inverse map ``(N, dim)`` without log-determinant, from precomputed condition terms
        (:meth:`project`); ``work`` as in :meth:`ConditionalSubnet.forward`."""
        u1, u2 = x[:, : self.d1], x[:, self.d1 :]
        v1, _ = self._spline(self.net2, u2, hc2, u1, True, work)
        v2, _ = self._spline(self.net1, v1, hc1, u2, True, work)
        return torch.cat([v1, v2], 1)

    def forward(self, x_or_z, c=None, rev: bool = False, jac: bool = True):
        x, cond = x_or_z[0], c[0]
        N, B = x.shape[0], cond.shape[0]
        if N % B != 0:
            raise ValueError(f"ConditionalSplineCoupling: {N} input rows cannot be split among {B} conditions")
        hc1, hc2 = self.net1.project(cond), self.net2.project(cond)
        u1, u2 = x[:, : self.d1], x[:, self.d1 :]
        if not rev:
            v2, ld1 = self._spline(self.net1, u1, hc1, u2, False)
            v1, ld2 = self._spline(self.net2, v2, hc2, u1, False)
        else:
            v1, ld2 = self._spline(self.net2, u2, hc2, u1, True)
            v2, ld1 = self._spline(self.net1, v1, hc1, u2, True)
        log_det = ld1 + ld2 if jac else torch.zeros((), dtype=x.dtype, device=x.device)
        return (torch.cat([v1, v2], 1),), log_det

    def output_dims(self, input_dims):
        return input_dims


def random_orthogonal(dim: int, generator: torch.Generator) -> Tensor:
    """A Haar-random orthogonal matrix ``(dim, dim)`` (QR of a Gaussian matrix with sign correction)."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return q.to(torch.get_default_dtype())


class CouplingFlow(nn.Module):
    """An invertible map ``R^dim -> R^dim``, optionally conditioned on a vector ``c`` of size ``cond_dim``.

    ``forward(x, c) -> (z, log|det dz/dx|)`` and ``inverse(z, c) -> (x, log|det dx/dz|)``, shapes ``(N, dim)``
    and ``(N,)``. The condition is ``(N, cond_dim)`` (one per row) or ``(B, cond_dim)`` with ``N = n * B`` rows laid
    out as ``(n, B)`` (row ``r`` uses ``c[r % B]``), which conditions ``n`` samples per observation at the cost of
    one condition projection per observation.

    Unconditional flows (the bidirectional INN, thesis ch. 4) use FrEIA's ``GLOWCouplingBlock``; conditional ones
    use :class:`ConditionalAffineCoupling`, the same block with the condition term of the first subnet layer
    computed per observation.
    """

    def __init__(self, dim: int, cond_dim: int = 0, config: FlowConfig = FlowConfig()):
        super().__init__()
        if dim < 2:
            raise ValueError(f"CouplingFlow: dim must be >= 2 (pad 1-D problems), got {dim}")
        self.dim, self.cond_dim, self.config = dim, cond_dim, config
        gen = torch.Generator().manual_seed(config.seed)
        self.inn = Ff.SequenceINN(dim)
        for _ in range(config.num_blocks):
            if cond_dim > 0:
                block = ConditionalSplineCoupling if config.coupling == "spline" else ConditionalAffineCoupling
                self.inn.append(block, cond=0, cond_shape=(cond_dim,), config=config)
            elif config.coupling != "affine":
                raise ValueError("CouplingFlow: coupling='spline' is for conditional flows (the cINN); the "
                                 "bidirectional INN uses affine couplings")
            else:
                self.inn.append(Fm.GLOWCouplingBlock, subnet_constructor=_subnet_constructor(config),
                                clamp=config.clamp, clamp_activation=_SoftClamp(config.clamp))
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
        if c is None or c.ndim != 2 or c.shape[1] != self.cond_dim or c.shape[0] < 1 or x.shape[0] % c.shape[0]:
            got = None if c is None else tuple(c.shape)
            raise ValueError(f"CouplingFlow: condition must have shape ({x.shape[0]}, {self.cond_dim}) or (B, "
                             f"{self.cond_dim}) with B dividing {x.shape[0]}, got {got}")
        return [c]

    def forward(self, x: Tensor, c: Tensor | None = None, *, jac: bool = True) -> tuple[Tensor, Tensor]:
        z, log_det = self.inn(x, c=self._cond(x, c), rev=False, jac=jac)
        return z, log_det

    def inverse(self, z: Tensor, c: Tensor | None = None, *, jac: bool = True) -> tuple[Tensor, Tensor]:
        x, log_det = self.inn(z, c=self._cond(z, c), rev=True, jac=jac)
        return x, log_det

    def sample_inverse(self, z: Tensor, c: Tensor) -> Tensor:
        """``inverse(z, c, jac=False)[0]``, bit for bit, by the fast path used for sampling.

        The condition terms of every block are computed once, FrEIA's per-module bookkeeping (a zero log-determinant
        accumulated per module, a subtraction of a zero offset per rotation) is skipped, and the subnets write their
        hidden activations into two ``(N, hidden)`` buffers allocated once. The rows are not split into smaller
        blocks: elementwise kernels treat the last few elements of a tensor with scalar code and BLAS switches
        kernels for a handful of rows, so a split would change the last bits of some samples. Without a condition,
        in training mode or with autograd recording, this is ``inverse`` itself.

        Args:
            z: latent rows ``(N, dim)``.
            c: conditions ``(N, cond_dim)`` or ``(B, cond_dim)`` with ``B | N`` (rows laid out ``(n, B)``).

        Returns:
            ``(N, dim)``.
        """
        if self.cond_dim == 0 or self.training or torch.is_grad_enabled():
            return self.inverse(z, c, jac=False)[0]
        cond = self._cond(z, c)[0]
        work = (z.new_empty(z.shape[0], self.config.hidden), z.new_empty(z.shape[0], self.config.hidden))
        x = z
        for module in reversed(self.inn.module_list):
            if hasattr(module, "inverse_projected"):
                x = module.inverse_projected(x, *module.project(cond), work)
            elif isinstance(module, Fm.FixedLinearTransform):  # FrEIA's (x - b) @ M^-1; b is 0. for ours
                x = (x - module.b if isinstance(module.b, Tensor) else x).mm(module.M_inv)
            else:
                x = module((x,), c=[cond], rev=True, jac=False)[0][0]
        return x
