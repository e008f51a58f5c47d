"""Point-estimate baselines: an MLP regressor ``y -> x`` and its MC-dropout / aleatoric-variance variant.

``fit_regressor(x, y)`` trains a fully connected network on simulations (observations ``y (N, M)`` in, parameters
``x (N, D)`` out), both standardised with the training set's mean and standard deviation:

- ``RegressorConfig()`` (the default) is the classical point-estimate network: squared loss, no dropout, the
  "NN" baseline of thesis sec. 4.2.3 (the state of the art of Wirkert et al. 2017 it refers to);
- ``RegressorConfig(dropout=0.2, heteroscedastic=True)`` is the network of Kendall & Gal (2017) used in the thesis'
  "NN (+Dropout)" row: dropout on the input of every hidden layer after the first, kept on at test time (MC
  dropout, the epistemic part), and a second head predicting a log-variance ``s`` per parameter trained with the
  Gaussian negative log-likelihood ``0.5 (exp(-s) (x - mu)^2 + s)`` (the aleatoric part, Kendall & Gal eq. 8).
  ``sample_batched`` then draws ``x = mu_t + exp(s_t / 2) eps`` with a fresh dropout mask ``t`` per sample: a
  mean-field (per-parameter independent, given the mask) approximation of the posterior.

Dropout masks are drawn from explicit generators (training and sampling are seeded, the global RNG is untouched).

References:
    thesis sec. 4.2.3 ("Competitors": Kendall & Gal with dropout sampling and aleatoric error terms; without them
    the point-estimate baseline) and app. B.5.3 (architecture: fully connected ReLU layers, dropout p = 0.2, Adam
    with a decaying learning rate). A. Kendall and Y. Gal, "What uncertainties do we need in Bayesian deep learning
    for computer vision?", NeurIPS 2017, eq. 8.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sbi_inn.checks import check_types, real_tensor
from sbi_inn.posterior import resolve_device
from sbi_inn.simulation import SeedTree, check_seed

__all__ = ["RegressorConfig", "Regressor", "fit_regressor"]

SAMPLE_CHUNK_ROWS = 2**18  # rows (samples x observations) through the network at once in sample_batched


@dataclass(frozen=True)
class RegressorConfig:
    """Settings of :func:`fit_regressor`; a wrong keyword raises ``TypeError``.

    Attributes:
        hidden, num_layers: width and number of hidden ReLU layers.
        dropout: dropout probability before every hidden layer after the first (0: none); kept on when sampling.
        heteroscedastic: also predict a log-variance per parameter, trained with the Gaussian NLL (Kendall & Gal).
        epochs, batch_size, lr, lr_final: Adam, learning rate decaying exponentially from ``lr`` to ``lr_final``.
        weight_decay: Adam weight decay.
        grad_clip: maximum gradient norm.
        val_fraction: share of the simulations held out for early stopping (the best weights are kept).
        patience: epochs without validation improvement before stopping (``None``: never).
    """

    hidden: int = 128
    num_layers: int = 4
    dropout: float = 0.0
    heteroscedastic: bool = False
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    lr_final: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 8.0
    val_fraction: float = 0.1
    patience: int | None = 20

    def __post_init__(self):
        check_types(self)
        if self.hidden < 1 or self.num_layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"RegressorConfig: hidden, num_layers, epochs and batch_size must be >= 1, got {self}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"RegressorConfig: dropout must be in [0, 1), got {self.dropout}")
        if not (self.lr > 0 and self.lr_final > 0 and self.grad_clip > 0 and self.weight_decay >= 0):
            raise ValueError("RegressorConfig: lr, lr_final and grad_clip must be > 0 and weight_decay >= 0")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"RegressorConfig: val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"RegressorConfig: patience must be >= 1 or None, got {self.patience}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Regressor(nn.Module):
    """An MLP ``y (B, M) -> x (B, D)`` with standardisation buffers; built by :func:`fit_regressor`.

    Args:
        obs_dim, param_dim: ``M`` and ``D``.
        config: the :class:`RegressorConfig` it is built from.
    """

    def __init__(self, obs_dim: int, param_dim: int, config: RegressorConfig):
        super().__init__()
        self.obs_dim, self.param_dim, self.config = obs_dim, param_dim, config
        widths = [obs_dim] + [config.hidden] * config.num_layers
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(config.hidden, param_dim * (2 if config.heteroscedastic else 1))
        for name in ("y_mean", "y_std"):
            self.register_buffer(name, torch.zeros(obs_dim) if name == "y_mean" else torch.ones(obs_dim))
        for name in ("x_mean", "x_std"):
            self.register_buffer(name, torch.zeros(param_dim) if name == "x_mean" else torch.ones(param_dim))

    def raw(self, y_std: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """Standardised mean ``(B, D)`` and log-variance ``(B, D)`` (``None`` unless heteroscedastic) for
        standardised observations ``(B, M)``; a generator switches dropout on (one mask per row)."""
        h = y_std
        p = self.config.dropout
        for i, layer in enumerate(self.hidden_layers):
            if i > 0 and p > 0 and generator is not None:
                keep = torch.rand(h.shape, generator=generator, device=h.device) >= p
                h = h * keep / (1 - p)
            h = torch.relu(layer(h))
        out = self.head(h)
        if self.config.heteroscedastic:
            mu, log_var = out.chunk(2, dim=-1)
            return mu, log_var.clamp(-20.0, 20.0)
        return out, None

    def _obs(self, y, name: str = "y") -> Tensor:
        t = real_tensor(name, y)
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2 or t.shape[1] != self.obs_dim:
            raise ValueError(f"{name} must have shape (B, M) with M = {self.obs_dim}, got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
        return ((t.to(self.y_mean) - self.y_mean) / self.y_std)

    @torch.no_grad()
    def predict(self, y) -> Tensor:
        """Point estimates ``(B, D)`` (dropout off) for observations ``(B, M)`` or one ``(M,)`` (then ``(1, D)``)."""
        mu, _ = self.raw(self._obs(y))
        return mu * self.x_std + self.x_mean

    @torch.no_grad()
    def predict_std(self, y) -> Tensor:
        """Predicted aleatoric standard deviations ``(B, D)`` (dropout off); heteroscedastic models only."""
        if not self.config.heteroscedastic:
            raise ValueError("predict_std needs a heteroscedastic regressor (RegressorConfig(heteroscedastic=True))")
        _, log_var = self.raw(self._obs(y))
        return torch.exp(0.5 * log_var) * self.x_std

    @torch.no_grad()
    def sample_batched(self, sample_shape, Y, *, seed: int = 0, max_rows: int = SAMPLE_CHUNK_ROWS) -> Tensor:
        """``n`` draws per observation, ``(n, B, D)``: a fresh dropout mask per draw (MC dropout) plus, for a
        heteroscedastic model, Gaussian noise of the predicted aleatoric variance.

        Raises:
            ValueError: for a model with neither dropout nor a variance head (a point estimate has no spread).
        """
        if self.config.dropout == 0 and not self.config.heteroscedastic:
            raise ValueError("sample_batched needs dropout > 0 or heteroscedastic=True; this regressor is a point "
                             "estimate (use predict)")
        n = _num_samples(sample_shape)
        y = self._obs(Y, "Y")
        b = y.shape[0]
        gen = torch.Generator(device=y.device).manual_seed(check_seed(seed))
        out = torch.empty(n, b, self.param_dim, dtype=y.dtype, device=y.device)
        per_chunk = max(1, max_rows // max(b, 1))
        for start in range(0, n, per_chunk):
            k = min(per_chunk, n - start)
            rows = y.repeat(k, 1)                                               # (k B, M)
            mu, log_var = self.raw(rows, gen if self.config.dropout > 0 else None)
            if log_var is not None:
                mu = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=gen, device=mu.device)
            out[start:start + k] = (mu * self.x_std + self.x_mean).reshape(k, b, self.param_dim)
        return out

    def loss(self, x_std: Tensor, y_std: Tensor, generator: torch.Generator | None) -> Tensor:
        """Mean training loss on standardised rows: squared error, or Kendall & Gal's Gaussian NLL."""
        mu, log_var = self.raw(y_std, generator)
        if log_var is None:
            return (mu - x_std).square().sum(-1).mean()
        return 0.5 * (torch.exp(-log_var) * (mu - x_std).square() + log_var).sum(-1).mean()


def _num_samples(sample_shape) -> int:
    shape = tuple(sample_shape) if isinstance(sample_shape, (tuple, list, torch.Size)) else (sample_shape,)
    if len(shape) != 1 or isinstance(shape[0], bool) or not isinstance(shape[0], int) or shape[0] < 1:
        raise ValueError(f"sample_shape must be (n,) with a positive integer n, got {sample_shape!r}")
    return shape[0]


def fit_regressor(x, y, *, config: RegressorConfig | dict | None = None, seed: int = 0,
                  device: str | torch.device = "auto", show_progress: bool = True) -> Regressor:
    """Train an MLP regressor ``y -> x`` on simulations.

    Args:
        x: parameters ``(N, D)``.
        y: observations ``(N, M)``.
        config: a :class:`RegressorConfig` or a dict of its fields.
        seed: seeds the split, initialisation, shuffling and dropout masks.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ...
        show_progress: a progress bar over epochs.

    Returns:
        the trained :class:`Regressor` (best validation weights) on ``device``, in eval mode; ``.history`` holds the
        per-epoch losses.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2000, 1, generator=g)
        >>> cfg = {"epochs": 40, "hidden": 32, "num_layers": 1, "lr": 1e-2, "lr_final": 1e-4}
        >>> reg = fit_regressor(x, 2 * x, config=cfg, show_progress=False)
        >>> abs(float(reg.predict(torch.tensor([[1.0]]))) - 0.5) < 0.05
        True
    """
    cfg = RegressorConfig(**config) if isinstance(config, dict) else (config or RegressorConfig())
    if not isinstance(cfg, RegressorConfig):
        raise TypeError(f"config must be a RegressorConfig, a dict or None, got {type(config).__name__}")
    seed = check_seed(seed)
    xt, yt = real_tensor("x", x), real_tensor("y", y)
    if xt.ndim != 2 or yt.ndim != 2:
        raise ValueError(f"x and y must have shapes (N, D) and (N, M), got {tuple(xt.shape)} and {tuple(yt.shape)}")
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x and y must have the same number of rows N, got {xt.shape[0]} and {yt.shape[0]}")
    if xt.shape[0] < 10:
        raise ValueError(f"fit_regressor needs at least 10 simulations, got {xt.shape[0]}")
    if not (torch.isfinite(xt).all() and torch.isfinite(yt).all()):
        raise ValueError("x and y must be finite (drop the invalid simulations first)")
    dev = resolve_device(device)
    tree = SeedTree(seed)
    xt, yt = xt.to(dev, torch.float32), yt.to(dev, torch.float32)
    n = xt.shape[0]
    perm = torch.randperm(n, generator=tree.generator("split")).to(dev)
    num_val = max(1, int(round(cfg.val_fraction * n)))
    val, tr = perm[:num_val], perm[num_val:]

    torch_state = torch.random.get_rng_state()
    torch.manual_seed(tree.seed("init"))                    # nn.Linear draws its initial weights from the global RNG
    model = Regressor(yt.shape[1], xt.shape[1], cfg).to(dev)
    torch.random.set_rng_state(torch_state)
    model.x_mean.copy_(xt[tr].mean(0))
    model.x_std.copy_(xt[tr].std(0).clamp_min(1e-12))
    model.y_mean.copy_(yt[tr].mean(0))
    model.y_std.copy_(yt[tr].std(0).clamp_min(1e-12))
    xs, ys = (xt - model.x_mean) / model.x_std, (yt - model.y_mean) / model.y_std

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gamma = (cfg.lr_final / cfg.lr) ** (1 / max(cfg.epochs - 1, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    gen = tree.generator("train", device=dev)
    best, best_state, stale, history = math.inf, None, 0, []
    epochs = range(cfg.epochs)
    if show_progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="regressor", unit="epoch")
    for epoch in epochs:
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen, device="cpu").to(dev)]
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = model.loss(xs[idx], ys[idx], gen if cfg.dropout > 0 else None)
            if not torch.isfinite(loss):
                continue                                    # skip a non-finite step instead of corrupting weights
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(model.loss(xs[val], ys[val], None))
        history.append({"epoch": epoch, "train_loss": total / len(tr), "val_loss": val_loss})
        if val_loss < best:
            best, stale = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.history = history
    return model
