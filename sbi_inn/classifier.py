"""IB-INN generative classifiers (thesis ch. 5; IB-INN paper sec. 3-4): the fitted classifier, its fit and its files.

The model and its loss (the flow, the Gaussian-mixture latent, ``L_X``, ``L_Y`` and the rebalanced IB loss) are
:mod:`sbi_inn.ib_inn`.

Prediction (Bayes' rule; the Jacobian cancels): ``p(y | x) = softmax_y(-||g(s(x)) - mu_y||^2 / 2 + w_y)``.

Out-of-distribution score: the typicality test (Nalisnick et al. 2019, thesis 5.3.2 and 5.4.3) applied to single
inputs, ``|L_X(x) - mean L_X(in-distribution)|`` with the in-distribution reference taken from the held-out
validation rows (the training rows when there are none; the training NLL of a flow fitted to a small data set is
optimistically low); ``method="quantile"`` gives the thesis' two-tailed quantile test (5.4.3: thresholds at equal
quantiles of the reference scores).

Information plane at no extra cost (thesis Prop. 4, NOTES): the preserved information ``I(X; Z) <= CI(X; Z) ~
L_X - dim log sqrt(2 pi e sigma^2)`` and the relevant information ``I(Y; Z) >= CI(Y; Z) = E[L_Y]`` (unsmoothed
labels), both from the per-epoch training averages (:meth:`Classifier.information_plane`).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(200) % 2
    >>> x = torch.randn(200, 2, generator=g) + 4.0 * labels[:, None]
    >>> clf = fit_classifier(x, labels, config={"flow": {"num_blocks": 2, "hidden": 16},
    ...                                          "train": {"epochs": 3}}, show_progress=False)
    >>> clf.predict_proba(x[:3]).shape, clf.ood_score(x[:3]).shape
    (torch.Size([3, 2]), torch.Size([3]))

References:
    thesis sec. 5.2 (eqs. 5.8, 5.10, 5.15-5.17), 5.3 (label smoothing, loss rebalancing, sigma), 5.4.3 (OoD as a
    hypothesis test), app. C.2 (loss implementation); IB-INN paper sec. 3 (eqs. 2, 4, 5, 7, 8, 9) and sec. 4.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sbi_inn._version import __version__
from sbi_inn.checks import class_labels, real_tensor
from sbi_inn.config import as_config
from sbi_inn.fingerprint import checkpoint_path, jsonable  # the same fingerprinted checkpoints as fit_posterior
from sbi_inn.ib_inn import DEFAULT_GAMMA, IBINN, ClassifierConfig, ib_loss, initial_means
from sbi_inn.locking import exclusive_lock
from sbi_inn.model_files import HeaderBounds, read_model_file, write_model_file
from sbi_inn.posterior import resolve_device
from sbi_inn.simulation import SeedTree, check_seed
from sbi_inn.train import Step, train

__all__ = ["IBINN", "Classifier", "ClassifierConfig", "fit_classifier", "load_classifier", "ib_loss",
           "DEFAULT_GAMMA"]

FORMAT_NAME = "sbi_inn.classifier"
FORMAT_VERSION = 1
CHUNK_ROWS = 2**12  # rows per forward pass when predicting, scoring or sampling (bounds memory like sample_batched)
REFERENCE_MAX_ROWS = 10_000  # in-distribution L_X values kept for the OoD tests
OOD_METHODS = ("typicality", "quantile")










# -- the user-facing classifier ------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """A trained IB-INN generative classifier (what :func:`fit_classifier` returns and :func:`load_classifier` reads).

    All methods take inputs ``x`` ``(N, d)`` (tensors or arrays of real numbers), stream them in chunks of
    ``CHUNK_ROWS`` rows and return tensors on the classifier's device.
    """

    def __init__(self, model: IBINN, metadata: dict | None = None):
        super().__init__()
        self.model = model
        self.metadata = dict(metadata or {})

    @property
    def device(self) -> torch.device:
        return self.model.mu_raw.device

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def beta(self) -> float:
        return self.model.beta

    @property
    def class_priors(self) -> Tensor:
        """``p(y)`` ``(C,)`` used in Bayes' rule (the training label frequencies)."""
        return self.model.log_priors.exp()

    @property
    def history(self) -> list[dict]:
        """Per-epoch training records (kept in ``metadata["history"]``; survive save/load)."""
        return self.metadata.get("history", [])

    # -- checks ---------------------------------------------------------------------------------------------------
    def _inputs(self, x, name: str = "x") -> Tensor:
        return check_inputs(x, name, dim=self.dim).to(self.device)

    def _chunks(self, x: Tensor, fn, labels: Tensor | None = None) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                outs = [fn(x[i:i + CHUNK_ROWS], None if labels is None else labels[i:i + CHUNK_ROWS])
                        for i in range(0, x.shape[0], CHUNK_ROWS)]
        finally:
            self.model.train(was_training)
        return torch.cat(outs)

    # -- the public contract --------------------------------------------------------------------------------------
    def predict_proba(self, x) -> Tensor:
        """Class probabilities ``p(y | x)`` ``(N, C)`` by Bayes' rule with the class priors (the Jacobian cancels)."""
        x = self._inputs(x)
        return self._chunks(x, lambda xc, _: torch.softmax(self.model.logits(self.model.latent(xc)[0]), dim=1))

    def predict(self, x) -> Tensor:
        """The most probable class ``(N,)`` (int64)."""
        return self.predict_proba(x).argmax(1)

    def log_likelihood(self, x, y=None) -> Tensor:
        """``log q(x | y)`` ``(N,)`` in the units of ``x`` (the standardisation's Jacobian included); ``y``: one
        class for all rows or labels ``(N,)``; ``None`` gives the marginal ``log q(x) = log sum_y p(y) q(x|y)``."""
        x = self._inputs(x)
        labels = None if y is None else self._labels_for(y, x.shape[0])
        offset = self.model.standardize.log_abs_det()

        def one(xc, yc):
            parts = self.model.losses(xc, yc)
            return (-parts["L_X"] if yc is None else -parts["class_nll"]) + offset

        return self._chunks(x, one, labels)

    def latent(self, x) -> Tensor:
        """Latent codes ``z = g(s(x))`` ``(N, d)`` (no noise)."""
        x = self._inputs(x)
        return self._chunks(x, lambda xc, _: self.model.latent(xc)[0])

    def ood_score(self, x, method: str = "typicality") -> Tensor:
        """Out-of-distribution score ``(N,)``, higher = more out-of-distribution.

        ``"typicality"``: the typicality test on single inputs (thesis 5.3.2, 5.4.3), ``|L_X(x) - m|`` with ``m``
        the mean ``L_X`` of the in-distribution reference rows (nats). ``"quantile"``: the two-tailed quantile test of
        thesis 5.4.3, ``1 - p`` with ``p = 2 min(F(L_X), 1 - F(L_X))`` from the empirical distribution ``F`` of the
        reference values (equal quantiles on both sides); inputs beyond every reference value tie at the top.
        """
        if method not in OOD_METHODS:
            raise ValueError(f"method must be one of {OOD_METHODS}, got {method!r}")
        ref = self.model.reference
        if ref.numel() == 0:
            raise RuntimeError("this classifier holds no in-distribution reference for OoD scores")
        x = self._inputs(x)
        l_x = self._chunks(x, lambda xc, _: self.model.losses(xc)["L_X"])
        if method == "typicality":
            return (l_x - ref.mean()).abs()
        n = ref.numel()
        below = torch.searchsorted(ref, l_x, right=True).to(torch.float64)  # reference values <= L_X
        above = n - torch.searchsorted(ref, l_x, right=False).to(torch.float64)  # reference values >= L_X
        p = torch.clamp(2 * torch.minimum(below, above) / n, max=1.0)
        return (1 - p).to(l_x.dtype)

    def sample(self, y, n: int, *, seed: int | None = None) -> Tensor:
        """``n`` samples ``(n, d)`` of ``x`` from class ``y`` (``z ~ N(mu_y, I)``, ``x = s^-1(g^-1(z))``)."""
        y = self._labels_for(y, 1)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(check_seed(seed))
        mu = self.model.mu[y[0]].detach()
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad():
                for start in range(0, int(n), CHUNK_ROWS):
                    m = min(CHUNK_ROWS, int(n) - start)
                    z = mu + torch.randn(m, self.dim, generator=gen, device=self.device)
                    u, _ = self.model.flow.inverse(z)
                    out.append(self.model.standardize.inverse(u))
        finally:
            self.model.train(was_training)
        return torch.cat(out)

    def information_plane(self) -> dict:
        """Per-epoch information-plane estimates from the training history (nats; thesis Prop. 4, NOTES):
        ``I_XZ = L_X - d log sqrt(2 pi e sigma^2)`` (an upper bound of ``I(X; Z_eps)``) and ``I_YZ = E[L_Y]`` with
        unsmoothed labels (a lower bound of ``I(Y; Z_eps)``, at most ``H(Y)``)."""
        d, sigma = self.dim, self.model.cfg.sigma
        const = d * 0.5 * math.log(2 * math.pi * math.e * sigma**2)
        rows = [h for h in self.history if "L_X" in h and "L_Y" in h]
        h_y = float(-(self.class_priors * self.model.log_priors).sum())
        return {"epoch": [int(h["epoch"]) for h in rows], "I_XZ": [h["L_X"] - const for h in rows],
                "I_YZ": [h["L_Y"] for h in rows], "H_Y": h_y, "beta": self.beta, "gamma": self.beta / d}

    def _labels_for(self, y, n: int) -> Tensor:
        if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
            y = [int(y)]
        elif isinstance(y, Tensor) and y.ndim == 0:
            y = y.reshape(1)
        labels = class_labels(y, "y", num_classes=self.num_classes)
        if labels.numel() == 1 and n != 1:
            labels = labels.expand(n)
        elif labels.numel() != n:
            raise ValueError(f"y must be one class or {n} labels (one per row of x), got {labels.numel()}")
        return labels.to(self.device)

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write weights plus a JSON header (``torch.load(weights_only=True)``, no pickle) atomically through
        ``<path>.tmp``; an existing ``path`` is refused (``FileExistsError``) unless ``overwrite``."""
        header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "package_version": __version__,
                  "model": self.model.config(), "metadata": self.metadata}
        return write_model_file(path, header, self.model.state_dict(), overwrite=overwrite)

    def __repr__(self) -> str:
        return (f"Classifier(method='ib_inn', dim={self.dim}, classes={self.num_classes}, beta={self.beta:g}, "
                f"device={self.device})")


# -- input checks ---------------------------------------------------------------------------------------------------
def check_inputs(x, name: str = "x", *, dim: int | None = None) -> Tensor:
    """``x`` as a float32 ``(N, d)`` tensor of finite real numbers; ``TypeError`` / ``ValueError`` naming ``name``."""
    t = real_tensor(name, x)
    want = f"(N, {dim})" if dim is not None else "(N, d)"
    if t.ndim != 2 or (dim is not None and t.shape[1] != dim):
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).any(1).nonzero()[:5].flatten().tolist()
        raise ValueError(f"{name} contains NaN or inf (rows {bad}; values beyond float32's range count as inf)")
    return t


# -- training --------------------------------------------------------------------------------------------------------
def fit_classifier(x, labels, *, beta: float | None = None, seed: int = 0, config=None,
                   device: str | torch.device = "auto", show_progress: bool = True,
                   checkpoint_dir: str | Path | None = None, validation_fraction: float = 0.1,
                   num_classes: int | None = None) -> Classifier:
    """Train an IB-INN generative classifier on inputs ``x`` ``(N, d)`` and integer labels ``(N,)``.

    Args:
        x: inputs ``(N, d)``, ``d >= 2`` (tensor or array of real numbers).
        labels: class indices ``(N,)`` in ``[0, C)``, every class present.
        beta: the IB trade-off (overrides ``config.beta``; ``None`` keeps it, whose default is
            ``DEFAULT_GAMMA * d``).
        seed: root of the seed tree (``sbi_inn.simulation.SeedTree``): the validation split (``split`` stream),
            initial weights and class means (``init``), shuffling and input noise (``train``).
        config: a :class:`ClassifierConfig` or a dict of its fields.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        show_progress: a tqdm bar over the epochs.
        checkpoint_dir: directory for a resumable checkpoint (a call with the same directory resumes; a directory
            of a fit with other data, configuration or seed is refused naming what differs).
        validation_fraction: share of each class held out for early stopping and for the OoD reference.
        num_classes: ``C`` (default ``max(labels) + 1``); every class must have examples.

    Returns:
        The trained :class:`Classifier`; ``metadata`` holds the configuration, ``beta``, the data sizes and the
        per-epoch history.
    """
    x = check_inputs(x, "x")
    if x.shape[1] < 2:
        raise ValueError(f"x must have at least 2 columns (the coupling flow splits them), got shape "
                         f"{tuple(x.shape)}; pad 1-D inputs with a constant column")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 2):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    y = class_labels(labels, "labels", num_classes=num_classes)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have one entry per row of x ({x.shape[0]}), got {y.shape[0]}")
    C = int(num_classes) if num_classes is not None else int(y.max()) + 1
    counts = torch.bincount(y, minlength=C)
    if C < 2:
        raise ValueError("labels hold a single class; a classifier needs at least 2")
    if (counts == 0).any():
        raise ValueError(f"labels: class(es) {(counts == 0).nonzero().flatten().tolist()[:10]} of 0..{C - 1} have "
                         "no examples")
    seed = check_seed(seed)
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) or \
            not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}")
    cfg = as_config(config, ClassifierConfig, "config")
    if beta is not None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
            raise TypeError(f"beta must be a number, got {beta!r}")
        cfg = dataclasses.replace(cfg, beta=float(beta))
    d = x.shape[1]
    cfg = dataclasses.replace(cfg, beta=cfg.resolved_beta(d))  # stored resolved: a saved model keeps its beta
    dev = resolve_device(device)
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file, not a directory")

    tree = SeedTree(seed)
    train_idx, val_idx = stratified_split(y, validation_fraction, tree.numpy("split"))
    w_seed, mu_seed = tree.seeds("init", n=2)
    ref_rows = val_idx if len(val_idx) else train_idx
    ref_rows = ref_rows[np.linspace(0, len(ref_rows) - 1, min(len(ref_rows), REFERENCE_MAX_ROWS)).astype(int)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(w_seed)
        model = IBINN(d, C, cfg, log_priors=torch.log(counts.double() / counts.sum()).float(),
                      mu_init=initial_means(C, d, cfg.mu_distance, torch.Generator().manual_seed(mu_seed)),
                      reference_size=len(ref_rows))
    xt, yt = x[torch.from_numpy(train_idx)], y[torch.from_numpy(train_idx)]
    model.standardize.fit(xt)
    model.to(dev)
    train_data = (xt.to(dev), yt.to(dev))
    val_data = (x[torch.from_numpy(val_idx)].to(dev), y[torch.from_numpy(val_idx)].to(dev)) if len(val_idx) else None
    train_cfg = dataclasses.replace(cfg.train, seed=seed)

    def loss_fn(m: IBINN, batch, step: Step):
        xb, yb = batch
        rows, parts = m.loss_rows(xb, yb, m.noise(xb.shape, step.generator, xb.device))
        with torch.no_grad():
            acc = (parts["logits"].argmax(1) == yb).float().mean()
            logged = {k: float(parts[k].mean()) for k in ("L_X", "L_Y", "class_nll")}
        return rows.mean(), {**logged, "train_acc": float(acc)}

    def val_fn(m: IBINN, batch, step: Step):
        xb, yb = batch
        return m.loss_rows(xb, yb, m.noise(xb.shape, step.generator, xb.device))[0], {}

    fingerprint = jsonable({"method": "ib_inn", "config": {**cfg.to_dict(), "train": train_cfg.to_dict()},
                            "beta": model.beta, "seed": seed, "validation_fraction": validation_fraction,
                            "data": _data_fingerprint(x, y), "model": model.config()})
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive_lock(Path(checkpoint_dir) / "checkpoint.pt", what="checkpoint"))
        history = train(model, loss_fn, train_data, val_data, train_cfg, device=dev,
                        checkpoint_path=checkpoint_path(checkpoint_dir, fingerprint), show_progress=show_progress,
                        val_loss_fn=val_fn)
    clf = Classifier(model)
    model.eval()
    with torch.no_grad():
        ref = clf._chunks(x[torch.from_numpy(ref_rows)].to(dev), lambda xc, _: model.losses(xc)["L_X"])
    model.reference.copy_(ref.sort().values)
    clf.metadata = jsonable({
        "method": "ib_inn", "seed": seed, "sbi_inn_version": __version__, "device": str(dev), "beta": model.beta,
        "gamma": model.beta / d, "config": cfg.to_dict(), "train_config": train_cfg.to_dict(),
        "data": {"num_rows": int(x.shape[0]), "num_train": len(train_idx), "num_val": len(val_idx),
                 "class_counts": counts.tolist(), "ood_reference": "validation" if len(val_idx) else "training"},
        "train_seconds": time.perf_counter() - t0, "epochs_run": len(history), "history": history})
    return clf


def stratified_split(labels: Tensor, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, validation)`` row indices holding out ``round(fraction * n_c)`` rows of each class ``c``
    (never a class's last row, so every class trains).

    Example:
        >>> train_idx, val_idx = stratified_split(torch.tensor([0] * 10 + [1] * 5), 0.2, np.random.default_rng(0))
        >>> len(train_idx), len(val_idx)
        (12, 3)
    """
    y = labels.numpy()
    val = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = min(int(round(fraction * len(rows))), len(rows) - 1) if fraction > 0 else 0
        val.append(rng.permutation(rows)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=int)
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def _data_fingerprint(x: Tensor, y: Tensor) -> dict:
    import hashlib

    h = hashlib.sha256()
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    return {"rows": int(x.shape[0]), "dim": int(x.shape[1]), "sha256": h.hexdigest()}


# -- loading ---------------------------------------------------------------------------------------------------------
def _check_header(header, state, path) -> None:
    """Refuse a classifier header that is incomplete or asks for more than the file's weights could fill (the model is
    built from the header before the weights are loaded; see ``sbi_inn.posterior._check_header``)."""
    model = header.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{path}: the classifier header lacks 'model'")
    if model.get("type") != "ib_inn":
        raise ValueError(f"{path}: unknown classifier model type {model.get('type')!r}; known: ['ib_inn']")
    bounds = HeaderBounds(path, state)
    dim = bounds.size("dim", model.get("dim"), 2)
    classes = bounds.size("num_classes", model.get("num_classes"), 2)
    bounds.size("reference_size", model.get("reference_size"), 0)
    if dim * classes > bounds.weights:
        raise ValueError(f"{path}: header fields model.dim x model.num_classes = {dim * classes} class-mean entries "
                         f"exceed the {bounds.weights} weights the file holds; the header is damaged or crafted")
    cfg = model.get("classifier")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("flow"), dict):
        raise ValueError(f"{path}: the classifier header lacks 'model.classifier.flow'")
    bounds.flow("classifier.flow", cfg["flow"])
    try:
        ClassifierConfig.from_dict(cfg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: header field model.classifier is invalid: {err}") from None


def load_classifier(path: str | Path, device: str | torch.device = "auto") -> Classifier:
    """Load a classifier written by :meth:`Classifier.save` onto ``device`` (weights-only unpickling: no code runs).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupted, not an sbi_inn classifier, from another format version, or its header
            is damaged or crafted (sizes beyond what the stored weights could fill are refused before building).
    """
    header, state = read_model_file(path, format_name=FORMAT_NAME, format_version=FORMAT_VERSION, what="classifier")
    _check_header(header, state, path)
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: header field 'metadata' must be a JSON object, got {type(metadata).__name__}")
    model = IBINN.from_config(header["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the stored configuration: {err}") from err
    return Classifier(model, metadata).to(resolve_device(device))
