"""Two-sample tests between sample sets: classifier two-sample test (C2ST) and maximum mean discrepancy (MMD).

Inputs are sample sets ``(n, D)`` (or ``(n,)`` for 1-D), torch tensors or numpy arrays; results are floats.
Batched helpers compare posteriors of ``B`` observations at once, ``(n, B, D)`` against ``(m, B, D)``.

References:
    Lopez-Paz & Oquab (2017), "Revisiting classifier two-sample tests"; Lueckmann et al. (2021),
    "Benchmarking simulation-based inference" (the C2ST recipe and its defaults); Gretton et al. (2012),
    "A kernel two-sample test" (unbiased MMD^2); thesis sec. 4.1.3 (inverse multiquadric kernel
    ``1 / (1 + ||(x - x') / h||^2)``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sbi_inn.diagnostics.metrics import as_tensor, check_samples

__all__ = ["c2st", "c2st_batched", "mmd", "mmd_batched"]


def _sample_set(value, name: str) -> Tensor:
    t = as_tensor(value, name, (1, 2), "(n, D)")
    if t.ndim == 1:
        t = t[:, None]
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got shape {tuple(t.shape)}")
    return t


def _pair(a, b) -> tuple[Tensor, Tensor]:
    x, y = _sample_set(a, "a"), _sample_set(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"a and b must have the same dimension D, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y.to(device=x.device, dtype=x.dtype)


def c2st(a, b, seed: int = 0, folds: int = 5, *, hidden_units: int | None = None, max_iter: int = 1000,
         early_stopping: bool = False, z_score: bool = True, balance: bool = False) -> float:
    """Classifier two-sample test: cross-validated accuracy of an MLP telling ``a`` from ``b``.

    As in the SBI benchmark (Lueckmann et al. 2021): both sets are z-scored with the mean and standard deviation
    of ``a``; a scikit-learn ``MLPClassifier`` (ReLU, adam, two hidden layers of ``10 * D`` units) is scored by
    ``folds``-fold stratified, shuffled cross-validation and the mean accuracy is returned.

    Args:
        a, b: sample sets ``(n, D)`` and ``(m, D)`` (e.g. approximate and reference posterior samples).
        seed: seed of the classifier initialisation and of the fold split.
        folds: number of cross-validation folds.
        hidden_units: units per hidden layer (default ``10 * D``).
        max_iter: maximum training epochs (benchmark: 1000).
        early_stopping: hold out 10 % for early stopping (off in the benchmark; needs a few hundred samples).
        z_score: standardise with the statistics of ``a``.
        balance: subsample the larger set to the size of the smaller one (accuracy 0.5 then means chance).

    Returns:
        accuracy in [0, 1]: 0.5 when the sets are indistinguishable, 1 when they are disjoint.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> c2st(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 10, max_iter=100) > 0.95
        True
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    x, y = _pair(a, b)
    if balance:
        m = min(len(x), len(y))
        x, y = x[:m], y[:m]
    if folds < 2 or folds > min(len(x), len(y)):
        raise ValueError(f"folds must be between 2 and the smaller sample size {min(len(x), len(y))}, got {folds}")
    xa, ya = x.cpu().double().numpy(), y.cpu().double().numpy()
    if z_score:
        mean, std = xa.mean(0), xa.std(0)
        std = np.where(std > 0, std, 1.0)
        xa, ya = (xa - mean) / std, (ya - mean) / std
    data = np.concatenate([xa, ya])
    target = np.concatenate([np.zeros(len(xa)), np.ones(len(ya))])
    units = hidden_units if hidden_units is not None else 10 * data.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(units, units), max_iter=max_iter, solver="adam",
                        random_state=seed, early_stopping=early_stopping)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(clf, data, target, cv=cv, scoring="accuracy")
    return float(np.mean(scores))


def c2st_batched(a, b, seed: int = 0, folds: int = 5, **c2st_options) -> Tensor:
    """:func:`c2st` for each of ``B`` observations: ``a`` ``(n, B, D)`` against ``b`` ``(m, B, D)`` -> ``(B,)``.

    ``c2st_options`` are the keyword options of :func:`c2st` (``max_iter``, ``early_stopping``, ...).
    """
    x, y = _batched_pair(a, b)
    return torch.tensor([c2st(x[:, i], y[:, i], seed=seed, folds=folds, **c2st_options) for i in range(x.shape[1])],
                        dtype=torch.float64)


def _batched_pair(a, b) -> tuple[Tensor, Tensor]:
    x, y = check_samples(a, "a"), check_samples(b, "b")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"a (n, B, D) and b (m, B, D) must share B and D, got shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return x, y


# -- maximum mean discrepancy ----------------------------------------------------------------------------------------
_BANDWIDTH_FACTORS = (0.2, 0.5, 1.0, 2.0, 5.0)


def _median_distance(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    z = torch.cat([x[:max_points], y[:max_points]])
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    med = float(d[iu[0], iu[1]].median())
    return med if med > 0 else 1.0


def _kernel_sum(x: Tensor, y: Tensor, kernel: str, bandwidths: Tensor, exclude_diagonal: bool,
                block: int = 2048) -> Tensor:
    """Sum of the bandwidth-averaged kernel over all pairs (without ``i == j`` when ``exclude_diagonal``)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    h2 = bandwidths.square().reshape(-1, 1, 1)
    for i in range(0, len(x), block):
        for j in range(0, len(y), block):
            d2 = torch.cdist(x[i:i + block], y[j:j + block]).square()[None]
            k = 1.0 / (1.0 + d2 / h2) if kernel == "imq" else torch.exp(-0.5 * d2 / h2)
            total = total + k.mean(0).sum()
    if exclude_diagonal:
        total = total - len(x)          # k(x, x) = 1 for both kernels and every bandwidth
    return total


def mmd(a, b, kernel: str = "imq", bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy between the distributions of ``a`` and ``b``.

    ``MMD^2 = E k(a, a') + E k(b, b') - 2 E k(a, b)`` with U-statistics for the within-set terms (Gretton et al.
    2012, eq. 3), so the estimate is centred at 0 for equal distributions and can be slightly negative. The kernel
    is the average over bandwidths ``h`` of the inverse multiquadric ``1 / (1 + ||x - x'||^2 / h^2)`` (thesis
    sec. 4.1.3) or the Gaussian ``exp(-||x - x'||^2 / (2 h^2))``.

    Args:
        a, b: sample sets ``(n, D)`` and ``(m, D)``.
        kernel: ``"imq"`` or ``"rbf"``.
        bandwidths: kernel bandwidths; default the median pairwise distance of the pooled samples (up to 1000
            from each set) times ``(0.2, 0.5, 1, 2, 5)``.

    Example:
        >>> round(mmd([[0.0], [1.0]], [[3.0], [4.0]], bandwidths=[1.0]), 4)
        0.7706
    """
    if kernel not in ("imq", "rbf"):
        raise ValueError(f"kernel must be 'imq' or 'rbf', got {kernel!r}")
    x, y = _pair(a, b)
    x, y = x.to(torch.float64), y.to(torch.float64)
    if bandwidths is None:
        med = _median_distance(x, y)
        h = torch.tensor([f * med for f in _BANDWIDTH_FACTORS], dtype=torch.float64, device=x.device)
    else:
        h = as_tensor(bandwidths, "bandwidths", (0, 1)).reshape(-1).to(device=x.device, dtype=torch.float64)
        if not (h > 0).all():
            raise ValueError(f"bandwidths must be positive, got {h.tolist()}")
    n, m = len(x), len(y)
    kxx = _kernel_sum(x, x, kernel, h, exclude_diagonal=True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, kernel, h, exclude_diagonal=True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, kernel, h, exclude_diagonal=False) / (n * m)
    return float(kxx + kyy - 2 * kxy)


def mmd_batched(a, b, kernel: str = "imq", bandwidths: Sequence[float] | None = None) -> Tensor:
    """:func:`mmd` for each of ``B`` observations: ``a`` ``(n, B, D)`` against ``b`` ``(m, B, D)`` -> ``(B,)``."""
    x, y = _batched_pair(a, b)
    return torch.tensor([mmd(x[:, i], y[:, i], kernel, bandwidths) for i in range(x.shape[1])], dtype=torch.float64)
