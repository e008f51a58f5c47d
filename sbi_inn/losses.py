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

The second half of this module holds the loss terms of the bidirectional INN that use them (thesis sec. 4.1.2):
:func:`inn_losses` computes ``L_y, L_z, L_x, L_pad, L_rec`` (and the optional ``L_support``, ``L_kl``) for a batch,
:func:`inn_loss` weights them into the training loss, and the label functions (:func:`encode_labels`,
:func:`label_loss`) give ``L_y`` for label observations (``y_loss="ce"``; the derivation is in ``sbi_inn.inn``).

References:
    thesis sec. 4.1.3 (IMQ kernel), B.5.1 (``h = 0.2``), B.5.2 (``h = 1.2``), B.5.4 (exponential and power
    kernels).
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
    errors, so ``exact`` uses explicit differences (slower, so used only for those kernels:
    ``benchmarks/results/design_notes.md``).
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
    """``sum_h k_h(d2)`` for the IMQ or Gaussian kernel with a hand-written backward, faster than autograd through
    the elementwise chain (``benchmarks/results/design_notes.md``), which matters because two MMDs are taken at every
    training step."""

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


# -- the bidirectional INN's loss terms (thesis sec. 4.1.2) ---------------------------------------------------------
Y_LOSSES = ("mse", "ce")
# tolerances of the label check (y_loss="ce"): entries may leave [0, 1] by LABEL_ATOL, row sums miss 1 by LABEL_SUM_ATOL
LABEL_ATOL = 1e-6
LABEL_SUM_ATOL = 1e-3


def check_labels(y: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``y`` is ``(n, num_classes)`` label vectors: finite, in [0, 1], rows sum to 1."""
    what = f"y_loss='ce' needs label observations (one-hot or class probabilities) of shape (n, {num_classes})"
    if y.ndim != 2 or y.shape[1] != num_classes:
        raise ValueError(f"{what}, got shape {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        rows = (~torch.isfinite(y)).any(-1).nonzero()[:5].flatten().tolist()
        raise ValueError(f"{what}; rows {rows} contain NaN or inf")
    outside = ((y < -LABEL_ATOL) | (y > 1 + LABEL_ATOL)).any(-1)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise ValueError(f"{what}: entries must lie in [0, 1], but {int(outside.sum())} rows do not (row {i}: "
                         f"{y[i].tolist()})")
    sums = y.sum(-1)
    off = (sums - 1).abs() > LABEL_SUM_ATOL
    if off.any():
        i = int(off.nonzero()[0])
        raise ValueError(f"{what}: every row must sum to 1, but {int(off.sum())} rows do not (row {i} sums to "
                         f"{float(sums[i]):.6g})")


def smoothed_labels(y: Tensor, smoothing: float) -> Tensor:
    """Label-smoothed targets ``q = (1 - eps) y + eps / M`` ``(n, M)`` of label vectors ``y`` ``(n, M)``.

    ``y`` is clipped to [0, 1] and renormalised first (it was checked to within ``LABEL_*_ATOL``), so ``q`` is a
    probability vector with every entry ``>= eps / M > 0``.
    """
    y = y.clamp(0.0, 1.0)
    y = y / y.sum(-1, keepdim=True)
    return (1.0 - smoothing) * y + smoothing / y.shape[-1]


def encode_labels(y: Tensor, smoothing: float) -> Tensor:
    """The y-space value of label vectors ``y`` ``(n, M)``: centred log-probabilities ``log q - mean_k log q``.

    For one-hot ``y`` the true class gets ``(M - 1)/M * r`` and the others ``-r/M``, ``r = log(1 + (1 - eps) M / eps)``
    (``r = log 77`` for ``M = 4``, ``eps = 0.05``). This is the forward optimum of :func:`label_loss` (module
    docstring), so forward and inverse passes see the same value for a label.
    """
    logq = torch.log(smoothed_labels(y, smoothing))
    return logq - logq.mean(-1, keepdim=True)


def label_loss(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    """``L_y`` for ``y_loss="ce"``: ``CE(q, softmax(logits)) + mean_k(logits)^2``, averaged over rows (a scalar).

    Args:
        logits: ``f_y(x)`` with the standardisation undone, ``(n, M)``.
        y: label vectors ``(n, M)``; ``q`` = :func:`smoothed_labels`.

    The penalty on the logits' mean pins the shift that the CE cannot see (module docstring): the minimiser is then
    ``logits = encode_labels(y)``, where the gradient vanishes. Its weight (1, in nats like the CE) does not move the
    optimum; it only sets how fast the shift is pulled to 0.
    """
    ce = -(smoothed_labels(y, smoothing) * torch.log_softmax(logits, -1)).sum(-1)
    return (ce + logits.mean(-1) ** 2).mean()


def inn_losses(model, x: Tensor, y: Tensor, config, prior_log_prob: Callable[[Tensor], Tensor] | None = None, *,
               generator: torch.Generator) -> dict[str, Tensor]:
    """The unweighted loss terms of the bidirectional INN (thesis sec. 4.1.2; ``sbi_inn.inn`` describes each) for a
    batch ``x (B, D)``, ``y (B, M)``; ``model`` is a ``sbi_inn.inn.BidirectionalINN``, ``config`` its ``INNConfig``,
    and all noise comes from ``generator``.

    ``L_kl`` (``config.w_kl > 0``, ``prior_log_prob`` maps parameters ``(n, D)`` to the prior's log-density
    ``(n,)``): the backward samples ``v^ = g(y, z, pad)`` of the ``L_x`` pass have the density
    ``q(v^) = p_in(y, z, pad) |det J_g|^-1`` (change of variables, no x-padding), and ``p_in`` does not depend on the
    weights because its inputs are drawn, not generated, so

        KL(q || p) = E[-log|det J_g(y, z, pad)| - log p(v^)] + const,

    with ``p`` the prior in the internal coordinates (``BidirectionalINN.prior_log_prob_internal``); ``L_kl`` is
    that expectation over the batch.

    With ``model.y_loss == "ce"`` the observations enter every pass as ``BidirectionalINN.encode_y`` (the
    centred log of the smoothed labels, standardised) and ``L_y`` is :func:`label_loss` on the logits
    ``model.logits(f_y(x))``; the forward optimum is then the same value the backward passes are fed.

    Returns:
        dict with scalar tensors ``y``, ``z``, ``x``, ``pad``, ``rec``, ``support`` and ``kl`` (zero where a term
        does not apply; ``support`` and ``kl`` are only computed when their weight is positive).
    """
    if (config.y_loss, config.label_smoothing) != (model.y_loss, model.label_smoothing) and (
            config.y_loss == "ce" or model.y_loss == "ce"):
        raise ValueError(f"inn_losses: config has y_loss={config.y_loss!r}, label_smoothing={config.label_smoothing} "
                         f"but the model was built with y_loss={model.y_loss!r}, "
                         f"label_smoothing={model.label_smoothing}")
    D, M, K, N = model.D, model.M, model.K, model.N
    kernel_x = config.kernel_x or config.kernel
    widths_x = config.widths_x or config.widths
    u = model.encode_x(x)
    ys = model.encode_y(y)
    g = generator
    ys = ys + config.y_noise * torch.randn(ys.shape, generator=g, device=ys.device, dtype=ys.dtype)
    zero = u.new_zeros(())

    # forward pass: L_y, L_z (gradient blocked through f_y), padding of the output kept at zero
    out = model(model.pad_x(u, config.pad_noise, g))[0]
    fy, fz, fpad = model.split_yz(out)
    if model.y_loss == "ce":
        l_y = label_loss(model.logits(fy), y, model.label_smoothing)
    else:
        l_y = ((fy - ys) ** 2).sum(-1).mean()
    z = torch.randn(u.shape[0], K, generator=g, device=u.device, dtype=u.dtype)
    l_z = mmd(torch.cat([fy.detach(), fz], 1), torch.cat([ys, z], 1), kernel=config.kernel, widths=config.widths)
    l_pad = (fpad**2).sum(-1).mean() if N > M + K else zero

    # backward pass: L_x on backward samples for the batch's y; their x-padding kept at zero
    zb = torch.randn(u.shape[0], K, generator=g, device=u.device, dtype=u.dtype)
    xb, logdet_b = model.inverse(model.join_yz(ys, zb, config.pad_noise, g))
    l_x = mmd(xb[:, :D], u, kernel=kernel_x, widths=widths_x)
    l_kl = zero
    if config.w_kl > 0:
        check_kl(model, prior_log_prob)
        l_kl = -(logdet_b + model.prior_log_prob_internal(xb, prior_log_prob)).mean()
    if N > D:
        l_pad = l_pad + (xb[:, D:] ** 2).sum(-1).mean()

    # reconstruction with fresh noise in the y-padding: the padding must carry no information
    if N > M + K:
        xr = model.inverse(model.join_yz(fy.detach(), fz.detach(), config.pad_noise, g))[0]
        l_rec = ((xr[:, :D] - u) ** 2).sum(-1).mean()
    else:
        l_rec = zero  # exactly zero for an invertible map without padding

    # L_support (ours): backward samples from over-dispersed latents stay within support_radius standardised units
    l_support = zero
    if config.w_support > 0:  # on a quarter of the batch, so the extra inverse pass stays a small part of a step
        nt = max(1, u.shape[0] // 4)
        zt = config.support_latent_scale * torch.randn(nt, K, generator=g, device=u.device, dtype=u.dtype)
        xt = model.inverse(model.join_yz(ys[:nt], zt, config.pad_noise, g))[0][:, :D]
        l_support = torch.relu(xt.abs() - config.support_radius).square().sum(-1).mean()
    return {"y": l_y, "z": l_z, "x": l_x, "pad": l_pad, "rec": l_rec, "support": l_support, "kl": l_kl}


def check_kl(model, prior_log_prob) -> None:
    """Raise unless ``L_kl`` can be computed: a prior log-density and an INN without x-padding."""
    if prior_log_prob is None or not callable(prior_log_prob):
        raise ValueError("INNConfig.w_kl > 0 needs the prior's log-density: pass the prior to fit_posterior (a "
                         "simulation file alone records only its support)")
    if model.N != model.D:
        raise ValueError(f"INNConfig.w_kl > 0 needs an INN without x-padding (nominal_dim = D = {model.D}), got "
                         f"nominal_dim {model.N}: the backward samples then have no density on the parameters alone")


def inn_loss(config, *, ramp: bool = True, prior_log_prob: Callable[[Tensor], Tensor] | None = None):
    """``loss_fn(model, (x, y), step) -> (loss, parts)`` for ``sbi_inn.train.train``: the weighted sum of the terms
    of :func:`inn_losses` with the weights of ``config`` (an ``INNConfig``), noise from ``step.generator``.

    With ``ramp`` the ``L_x`` weight grows linearly over the first ``config.x_ramp_epochs`` epochs of training
    (``step.progress``); without it (validation) the full ``w_x`` is used.
    """

    def loss_fn(model, batch: tuple[Tensor, ...], step) -> tuple[Tensor, dict[str, float]]:
        terms = inn_losses(model, batch[0], batch[1], config, prior_log_prob, generator=step.generator)
        w_x = config.w_x
        if ramp and config.x_ramp_epochs > 0:
            w_x *= min(1.0, step.progress / config.x_ramp_epochs)
        loss = (config.w_y * terms["y"] + config.w_z * terms["z"] + w_x * terms["x"]
                + config.w_pad * terms["pad"] + config.w_rec * terms["rec"] + config.w_support * terms["support"]
                + config.w_kl * terms["kl"])
        return loss, {f"L_{k}": float(v.detach()) for k, v in terms.items()}

    return loss_fn
