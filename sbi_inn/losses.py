"""Maximum mean discrepancy (MMD) and its kernels, the distribution-matching losses of the bidirectional INN.

``MMD^2(p, q) = E k(a, a') + E k(b, b') - 2 E k(a, b)`` for ``a, a' ~ p`` and ``b, b' ~ q`` (Gretton et al. 2012).
It is zero iff ``p = q`` for a characteristic kernel, which is what makes the INN losses ``L_z`` and ``L_x`` of
thesis 4.1.2 consistent (appendix B.1). Kernels, for ``d = ||a - b||_2`` and width ``h``:

- ``"imq"``: inverse multiquadratic ``1 / (1 + d^2 / h^2)`` (thesis 4.1.3; heavy tails give useful gradients for
  outliers; the default, summed over several widths as in the authors' code);
- ``"rbf"`` (alias ``"gaussian"``): ``exp(-d^2 / (2 h^2))``;
- ``"exp"``: ``exp(-d / h)`` (thesis B.5.4, latent space of the star-cluster INN);
- ``"energy"``: the power kernel ``-d^beta`` with ``beta = 1/2`` by default (thesis B.5.4, parameter space: a
  sharper peak than the IMQ). It is conditionally positive definite, so its MMD is the energy distance, still zero
  iff the distributions agree; widths only rescale it (``-(d / h)^beta``).

Multi-scale kernels are sums over ``widths``. Two estimators: the biased V-statistic (all pairs, never negative; used
for training) and the unbiased U-statistic (pairs ``i = j`` left out; may be slightly negative).

References:
    thesis ``002_e718d3c52e134117.txt`` 4.1.3 (IMQ kernel), B.5.1 (``h = 0.2``), B.5.2 (``h = 1.2``), B.5.4
    (exponential and power kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

DEFAULT_WIDTHS = (0.05, 0.2, 0.9)


def _sq_dists(a: Tensor, b: Tensor, *, exact: bool = False) -> Tensor:
    """Squared Euclidean distances ``(n, m)``.

    The fast ``|a|^2 + |b|^2 - 2 a.b`` expansion leaves rounding errors of order ``1e-7 |a|^2`` where points
    coincide; harmless for the smooth kernels, but the cusp kernels (``exp``, ``energy``) turn them into ``1e-4``
    errors, so ``exact`` uses explicit differences (about three times slower).
    """
    if exact:
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return ((a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)


def _safe_dist(d2: Tensor) -> Tensor:
    """``sqrt(d2)`` with a finite (zero) gradient where ``d2 = 0``."""
    pos = d2 > 0
    return torch.where(pos, d2.clamp_min(1e-30).sqrt(), torch.zeros_like(d2))


def imq_kernel(d2: Tensor, h: float) -> Tensor:
    """Inverse multiquadratic ``1 / (1 + d^2 / h^2)`` from squared distances ``d2``."""
    return 1.0 / (1.0 + d2 / h**2)


def rbf_kernel(d2: Tensor, h: float) -> Tensor:
    """Gaussian ``exp(-d^2 / (2 h^2))`` from squared distances ``d2``."""
    return torch.exp(-0.5 * d2 / h**2)


def exp_kernel(d2: Tensor, h: float) -> Tensor:
    """Exponential (Laplacian-type) ``exp(-d / h)`` from squared distances ``d2`` (thesis B.5.4)."""
    return torch.exp(-_safe_dist(d2) / h)


def energy_kernel(d2: Tensor, h: float, beta: float = 0.5) -> Tensor:
    """Power kernel ``-(d / h)^beta`` from squared distances ``d2`` (thesis B.5.4); ``0 < beta < 2``."""
    if not 0 < beta < 2:
        raise ValueError(f"energy_kernel: beta must be in (0, 2), got {beta}")
    pos = d2 > 0
    return -torch.where(pos, (d2.clamp_min(1e-30) / h**2) ** (beta / 2), torch.zeros_like(d2))


KERNELS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "imq": imq_kernel,
    "rbf": rbf_kernel,
    "gaussian": rbf_kernel,
    "exp": exp_kernel,
    "energy": energy_kernel,
}


class _SmoothKernelSum(torch.autograd.Function):
    """``sum_h k_h(d2)`` for the IMQ or Gaussian kernel with a hand-written backward: about twice as fast as
    autograd through the elementwise chain, which matters because two MMDs are taken at every training step."""

    @staticmethod
    def forward(ctx, d2: Tensor, kernel: str, widths: tuple[float, ...]) -> Tensor:
        out, slope = torch.zeros_like(d2), torch.zeros_like(d2)
        for h in widths:
            if kernel == "imq":  # k = h^2 / (h^2 + d2), dk/dd2 = -k^2 / h^2
                k = (d2 + h * h).reciprocal_().mul_(h * h)
                slope.addcmul_(k, k, value=-1.0 / (h * h))
            else:  # k = exp(-d2 / (2 h^2)), dk/dd2 = -k / (2 h^2)
                k = torch.exp(d2 * (-0.5 / (h * h)))
                slope.add_(k, alpha=-0.5 / (h * h))
            out += k
        ctx.save_for_backward(slope)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


def kernel_matrix(a: Tensor, b: Tensor, *, kernel: str = "imq", widths: Sequence[float] = DEFAULT_WIDTHS) -> Tensor:
    """Multi-scale kernel matrix ``sum_h k_h(a_i, b_j)``, shape ``(n, m)`` for ``a (n, d)`` and ``b (m, d)``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {sorted(KERNELS)}")
    widths = tuple(float(h) for h in widths)
    if not widths or any(not h > 0 for h in widths):
        raise ValueError(f"widths must be a non-empty sequence of positive numbers, got {widths}")
    fn = KERNELS[kernel]
    if fn in (imq_kernel, rbf_kernel):
        return _SmoothKernelSum.apply(_sq_dists(a, b), "imq" if fn is imq_kernel else "rbf", widths)
    d2 = _sq_dists(a, b, exact=True)
    return sum(fn(d2, h) for h in widths)


def mmd(a: Tensor, b: Tensor, *, kernel: str = "imq", widths: Sequence[float] = DEFAULT_WIDTHS,
        unbiased: bool = False) -> Tensor:
    """Squared maximum mean discrepancy between the samples ``a (n, d)`` and ``b (m, d)``.

    Args:
        a, b: samples from the two distributions, same feature dimension ``d``.
        kernel: one of ``KERNELS`` (``"imq"``, ``"rbf"``/``"gaussian"``, ``"exp"``, ``"energy"``).
        widths: kernel widths ``h``; the kernel is the sum over them.
        unbiased: ``False`` for the V-statistic (means over all pairs, >= 0), ``True`` for the U-statistic
            (within-sample means leave out ``i = j``; for ``n = m`` the cross term too, so identical sample sets
            give exactly 0; needs ``n, m >= 2``).

    Returns:
        A scalar tensor, differentiable with respect to ``a`` and ``b``.

    Example:
        >>> a = torch.zeros(5, 2)
        >>> float(mmd(a, a))
        0.0

    References:
        thesis 4.1.3; Gretton et al. (2012), eqs. 3 and 5.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"mmd: samples must be (n, d) and (m, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    n, m = a.shape[0], b.shape[0]
    if unbiased and (n < 2 or m < 2):
        raise ValueError(f"mmd: the unbiased estimator needs at least 2 samples on each side, got {n} and {m}")
    k_aa = kernel_matrix(a, a, kernel=kernel, widths=widths)
    k_bb = kernel_matrix(b, b, kernel=kernel, widths=widths)
    k_ab = kernel_matrix(a, b, kernel=kernel, widths=widths)
    if not unbiased:
        return k_aa.mean() + k_bb.mean() - 2.0 * k_ab.mean()
    term_aa = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    term_bb = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    if n == m:  # Gretton et al. (2012), Lemma 6: pairs i = j left out of the cross term as well
        term_ab = (k_ab.sum() - k_ab.diagonal().sum()) / (n * (n - 1))
    else:  # eq. 3
        term_ab = k_ab.mean()
    return term_aa + term_bb - 2.0 * term_ab
