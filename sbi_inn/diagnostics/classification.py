"""Diagnostics of probabilistic classifiers: accuracy, calibration errors, reliability diagrams, OoD AUROC, bits/dim.

Inputs are class probabilities ``probs`` ``(N, C)`` (rows summing to 1), integer labels ``(N,)`` and score vectors,
as torch tensors or numpy arrays; scalars come back as Python floats.

Calibration (thesis sec. 5.3.2 and app. C.3, eqs. C.48-C.55, with the correction of eq. C.50 in the reading notes):
*every* class probability ``p(y'|x_j)`` of every sample is binned into half-open bins ``[b_i, b_{i+1})`` with edges
``0, .01, .02, .03, .04, .05, .15, ..., .85, .95, .96, .97, .98, .99, 1`` (19 bins, denser near 0 and 1; a
probability of exactly 1 counts in the last bin). A binned probability counts as *correct* when its class ``y'`` is
the true label ``y_j`` (the printed ``argmax`` indicator of eq. C.50 is wrong: with it a calibrated model would not
give ``P = Q``). With the bin centre ``P_i``, the fraction correct ``Q_i = n_c / n`` and ``n_tot = N C``::

    ECE = sum_i n_i / n_tot |P_i - Q_i|        MCE = max_i |P_i - Q_i|        ICE = sum_i (b_{i+1} - b_i) |P_i - Q_i|

and their geometric mean ``(ECE MCE ICE)^(1/3)`` (eq. 5.27). Empty bins are left out of all three. The
overconfidence error (thesis 5.4.2, "OCE") is the error rate of the top-1 predictions with confidence at least
``99.7 %``, divided by the ``0.3 %`` such predictions may get wrong.

OoD detection (paper sec. 4.2): the area under the ROC curve of a score that is higher for out-of-distribution
inputs, as the Mann-Whitney rank statistic (ties count one half): 1 for perfect separation, 0.5 for chance.
Bits/dim (Theis et al. 2015): ``NLL / (d ln 2)`` per input; for data quantised in steps ``Delta`` the discrete
code length adds ``-log2 Delta`` per dimension.

Example:
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> labels = torch.tensor([0, 1, 1])
    >>> accuracy(probs, labels)
    0.6666666666666666
    >>> round(ood_auroc([0.1, 0.2, 0.3], [0.25, 0.4, 0.5]), 4)  # 8 of 9 pairs ordered
    0.8889

References:
    thesis sec. 5.3.2 (eqs. 5.19-5.28), 5.4.2 (overconfidence error), app. C.3; IB-INN paper sec. 4.2; Guo et al.
    (2017), "On calibration of modern neural networks"; Theis et al. (2015), "A note on the evaluation of generative
    models".
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sbi_inn.checks import class_labels
from sbi_inn.diagnostics.metrics import as_tensor

__all__ = [
    "accuracy",
    "bits_per_dim",
    "classification_calibration",
    "confidence_bin_edges",
    "expected_calibration_error",
    "integrated_calibration_error",
    "max_calibration_error",
    "ood_auroc",
    "overconfidence",
    "prediction_entropy",
    "reliability_diagram",
]

OVERCONFIDENCE_THRESHOLD = 0.997


def confidence_bin_edges() -> Tensor:
    """The 20 bin edges of thesis app. C.3 (19 bins): steps of 0.01 below 0.05 and above 0.95, of 0.1 between.

    Example:
        >>> e = confidence_bin_edges()
        >>> len(e), e[:7].tolist()
        (20, [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.15])
    """
    low = np.arange(0, 5) / 100
    mid = np.arange(5, 95, 10) / 100
    high = np.arange(95, 101) / 100
    return torch.tensor(np.concatenate([low, mid, high]), dtype=torch.float64)


def _probs(probs, name: str = "probs") -> Tensor:
    p = as_tensor(probs, name, (2,), "(N, C)").to(torch.float64)
    if p.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes (columns), got shape {tuple(p.shape)}")
    if (p < -1e-6).any() or (p > 1 + 1e-6).any():  # float32 softmax outputs may exceed 1 by a rounding error
        raise ValueError(f"{name} must lie in [0, 1], got min {p.min().item():.4g}, max {p.max().item():.4g}")
    p = p.clamp(0, 1)
    sums = p.sum(1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        worst = int((sums - 1).abs().argmax())
        raise ValueError(f"{name} rows must sum to 1 (class probabilities), row {worst} sums to {sums[worst].item()}")
    return p


def _scores(values, name: str) -> Tensor:
    t = as_tensor(values, name, (1,), "(N,)").to(torch.float64).cpu()
    return t


def accuracy(probs, labels) -> float:
    """Fraction of rows whose most probable class is the label."""
    p = _probs(probs)
    y = class_labels(labels, n=p.shape[0], num_classes=p.shape[1])
    return float((p.argmax(1).cpu() == y).double().mean())


def reliability_diagram(probs, labels, edges=None) -> dict:
    """The binned calibration data of thesis app. C.3 (eqs. C.49-C.52; correctness as in the module docstring).

    Args:
        probs: class probabilities ``(N, C)``.
        labels: true classes ``(N,)``.
        edges: bin edges ``(K + 1,)`` from 0 to 1 (default :func:`confidence_bin_edges`).

    Returns:
        dict of numpy arrays over the ``K`` bins: ``edges`` ``(K + 1,)``, ``centers`` (``P_i``), ``counts``
        (``n_i``), ``correct`` (``n_c``), ``accuracy`` (``Q_i``, NaN for empty bins), ``mean_confidence`` (the mean
        binned probability, NaN for empty bins).

    Example:
        >>> d = reliability_diagram([[0.97, 0.03], [0.97, 0.03]], [0, 1])
        >>> d["counts"][[3, 16]].tolist(), d["correct"][[3, 16]].tolist()  # bins [.03, .04) and [.97, .98)
        ([2, 2], [1, 1])
    """
    p = _probs(probs)
    y = class_labels(labels, n=p.shape[0], num_classes=p.shape[1])
    e = confidence_bin_edges() if edges is None else as_tensor(edges, "edges", (1,), "(K + 1,)").to(torch.float64)
    if e.numel() < 2 or e[0] != 0 or e[-1] != 1 or not (e[1:] > e[:-1]).all():
        raise ValueError(f"edges must increase strictly from 0 to 1, got {e.tolist()}")
    k = e.numel() - 1
    flat = p.cpu().reshape(-1)
    is_true = torch.nn.functional.one_hot(y, p.shape[1]).reshape(-1).to(torch.float64)
    idx = (torch.searchsorted(e, flat, right=True) - 1).clamp(0, k - 1)  # [b_i, b_i+1); p = 1 in the last bin
    counts = torch.bincount(idx, minlength=k).to(torch.float64)
    correct = torch.bincount(idx, weights=is_true, minlength=k)
    conf_sum = torch.bincount(idx, weights=flat, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(counts.numpy() > 0, correct.numpy() / counts.numpy(), np.nan)
        mean_conf = np.where(counts.numpy() > 0, conf_sum.numpy() / counts.numpy(), np.nan)
    return {"edges": e.numpy(), "centers": ((e[1:] + e[:-1]) / 2).numpy(), "counts": counts.numpy().astype(np.int64),
            "correct": correct.numpy().round().astype(np.int64), "accuracy": q, "mean_confidence": mean_conf}


def _gaps(diagram: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    filled = diagram["counts"] > 0
    gap = np.abs(diagram["centers"] - diagram["accuracy"])[filled]
    widths = np.diff(diagram["edges"])[filled]
    return gap, diagram["counts"][filled], widths


def expected_calibration_error(probs, labels, edges=None) -> float:
    """ECE ``sum_i n_i / n_tot |P_i - Q_i|`` (thesis eq. C.53)."""
    gap, counts, _ = _gaps(reliability_diagram(probs, labels, edges))
    return float((counts * gap).sum() / counts.sum())


def max_calibration_error(probs, labels, edges=None) -> float:
    """MCE ``max_i |P_i - Q_i|`` over the non-empty bins (thesis eq. C.54)."""
    gap, _, _ = _gaps(reliability_diagram(probs, labels, edges))
    return float(gap.max())


def integrated_calibration_error(probs, labels, edges=None) -> float:
    """ICE ``sum_i (b_{i+1} - b_i) |P_i - Q_i|`` over the non-empty bins (thesis eq. C.55)."""
    gap, _, widths = _gaps(reliability_diagram(probs, labels, edges))
    return float((widths * gap).sum())


def overconfidence(probs, labels, threshold: float = OVERCONFIDENCE_THRESHOLD) -> float:
    """Overconfidence error (thesis 5.4.2): the error rate of top-1 predictions with confidence ``>= threshold``
    divided by ``1 - threshold`` (1 = as often wrong as such confidence allows; NaN when no prediction is that
    confident).

    Example:
        >>> probs = [[0.999, 0.001]] * 999 + [[0.001, 0.999]]  # 1000 predictions at 99.9 %, one wrong
        >>> round(overconfidence(probs, [0] * 1000), 6)  # error rate 0.1 % / 0.3 %
        0.333333
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    p = _probs(probs)
    y = class_labels(labels, n=p.shape[0], num_classes=p.shape[1])
    conf, pred = p.cpu().max(1)
    sure = conf >= threshold
    if not sure.any():
        return math.nan
    return float((pred[sure] != y[sure]).double().mean() / (1 - threshold))


def classification_calibration(probs, labels, edges=None) -> dict:
    """All calibration measures at once: ``ece``, ``mce``, ``ice``, their geometric mean ``gme`` (thesis eq. 5.27),
    ``overconfidence`` and ``accuracy`` (floats; fractions, not percent).

    Example:
        >>> m = classification_calibration([[0.97, 0.03], [0.97, 0.03]], [0, 1])
        >>> round(m["ece"], 4), round(m["mce"], 4), round(m["ice"], 4)  # both bins hold 1 correct of 2: Q = 0.5
        (0.47, 0.475, 0.0094)
    """
    diagram = reliability_diagram(probs, labels, edges)
    gap, counts, widths = _gaps(diagram)
    ece, mce, ice = float((counts * gap).sum() / counts.sum()), float(gap.max()), float((widths * gap).sum())
    return {"accuracy": accuracy(probs, labels), "ece": ece, "mce": mce, "ice": ice,
            "gme": float(np.cbrt(ece * mce * ice)), "overconfidence": overconfidence(probs, labels)}


def prediction_entropy(probs) -> Tensor:
    """Entropy ``-sum_y p log p`` (nats) of each row ``(N,)``; the paper's OoD measure is the increase of its mean on
    out-of-distribution inputs over the in-distribution test set (thesis eq. 5.28)."""
    p = _probs(probs)
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(1)


def ood_auroc(scores_in, scores_out) -> float:
    """ROC-AUC of telling out-of-distribution inputs (``scores_out``) from in-distribution ones (``scores_in``) by a
    score that is higher for OoD inputs: ``P(s_out > s_in) + P(s_out = s_in) / 2`` (Mann-Whitney ``U / (n m)``).

    Example:
        >>> ood_auroc([0.0, 1.0], [1.0, 2.0])  # pairs: (0,1) (0,2) (1,2) ordered, (1,1) tied
        0.875
    """
    a, b = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([a.numpy(), b.numpy()]))  # average ranks: ties count one half
    n, m = a.numel(), b.numel()
    u = ranks[n:].sum() - m * (m + 1) / 2
    return float(u / (n * m))


def bits_per_dim(nll, dim: int, *, quantization_step: float | None = None) -> float:
    """Mean bits per dimension of per-input negative log-likelihoods ``nll`` (nats, shape ``(N,)``) of ``dim``-
    dimensional inputs: ``mean(nll) / (dim ln 2)``, plus ``-log2(quantization_step)`` for data quantised in that step
    (the code length of the discretised data; e.g. ``1/256`` for 8-bit images scaled to ``[0, 1]``).

    Example:
        >>> bits_per_dim([math.log(2) * 8], 4)  # 8 bits over 4 dimensions
        2.0
        >>> bits_per_dim([0.0], 1, quantization_step=1 / 256)
        8.0
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    v = _scores(nll, "nll")
    bpd = float(v.mean()) / (int(dim) * math.log(2))
    if quantization_step is not None:
        if not (quantization_step > 0 and math.isfinite(quantization_step)):
            raise ValueError(f"quantization_step must be positive, got {quantization_step}")
        bpd -= math.log2(quantization_step)
    return bpd
