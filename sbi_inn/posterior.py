"""The amortised posterior ``q(x | y)`` users sample, evaluate, save and load.

:class:`Posterior` wraps a trained conditional density model and gives it the public contract of
the package's API (sample dimension first, as in the ``sbi`` package): shape checks, chunked batched sampling
under a memory bound, MAP estimates, pandas export and pickle-free saving.

A model plugged in here implements this small protocol (both ``sbi_inn.cinn`` and ``sbi_inn.inn`` do)::

    model.param_dim                         # D
    model.condition(y, sizes) -> c          # (B, C): summary of each observation, computed once
    model.sample_given(c, n, generator)     # (n, B, D) samples in parameter space, inside the prior support
    model.log_prob_given(x, c)              # (N,) for x (N, D), c (N, C) or (1, C); NotImplementedError if undefined
    model.config() -> dict                  # JSON; MODEL_TYPES[config["type"]].from_config(config) rebuilds it

References:
    thesis sec. 4.2.3 ("all MAP estimates are found using the mean-shift algorithm").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbi_inn._version import __version__
from sbi_inn.checks import real_tensor
from sbi_inn.cinn import ConditionalINN
from sbi_inn.inn import BidirectionalINN
from sbi_inn.meanshift import mean_shift
from sbi_inn.mixture import MixtureModel
from sbi_inn.model_files import HeaderBounds, nonfinite_weights, read_model_file, write_model_file
from sbi_inn.simulation import check_seed

FORMAT_NAME = "sbi_inn.posterior"
FORMAT_VERSION = 1
# Samples generated per inverse pass: small enough that a (rows, 64) subnet activation (1 MiB) stays in a 2 MiB L2
# cache, large enough to amortise the per-pass overhead (timings: benchmarks/results/design_notes.md).
SAMPLE_CHUNK_ROWS = 2**12
MODEL_TYPES = {"cinn": ConditionalINN, "inn": BidirectionalINN}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``, and a CUDA device
    that this machine does not have is refused here, before any work, with a ``ValueError``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1', ...): "
                         f"{err}") from None
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"device {device!r} was asked for, but this machine has "
                         f"{torch.cuda.device_count()} CUDA devices; use device='auto' or 'cpu'")
    return dev


class OutsideTrainingWarning(UserWarning):
    """An observation (or a set size) lies outside what the posterior was trained on: its answer is an
    extrapolation, possibly badly calibrated."""


RANGE_MARGIN = 0.05  # observations within 5 % of a dimension's training range beyond its ends pass without warning


def training_range(y: Tensor, sizes: Tensor | None = None) -> dict:
    """What the training observations covered, for :class:`Posterior`'s warnings: per-dimension ``obs_low`` and
    ``obs_high`` of ``y`` ``(N, M)`` (sets ``(N, K, M)``: over the ``sizes`` members of each) and, for sets,
    ``set_size_min`` / ``set_size_max``. JSON-ready (kept in ``Posterior.metadata["training_range"]``)."""
    y = y.detach().float().cpu()
    if sizes is not None:
        sizes = sizes.detach().cpu().long()
        valid = torch.arange(y.shape[1])[None, :] < sizes[:, None]
        members = y[valid]
        out = {"set_size_min": int(sizes.min()), "set_size_max": int(sizes.max())}
    else:
        members, out = y.reshape(y.shape[0], -1), {}
    out.update(obs_low=members.min(0).values.tolist(), obs_high=members.max(0).values.tolist(),
               num_rows=int(y.shape[0]))
    return out


class Posterior(nn.Module):
    """An amortised posterior over ``D`` parameters given observations of shape ``obs_shape``.

    Args:
        model: a conditional density model implementing the protocol in the module docstring.
        param_names: names of the ``D`` parameters (used for DataFrames and plots).
        obs_shape: shape of one observation, ``(M,)``; for set-valued data ``(M,)`` is the shape of one element.
        is_set_valued: whether observations are sets ``(K, M)`` of varying size.
        metadata: JSON-serialisable information kept with the saved model (training history summary, data path...).
    """

    def __init__(self, model: nn.Module, *, param_names: Sequence[str], obs_shape: Sequence[int],
                 is_set_valued: bool = False, metadata: dict | None = None):
        super().__init__()
        self.model = model
        self.param_names = list(param_names)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.is_set_valued = bool(is_set_valued)
        self.metadata = dict(metadata or {})
        if len(self.param_names) != model.param_dim:
            raise ValueError(f"Posterior: {len(self.param_names)} parameter names for a model of "
                             f"{model.param_dim} parameters")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def param_dim(self) -> int:
        return self.model.param_dim

    @property
    def history(self) -> list[dict]:
        """Per-epoch training records (kept in ``metadata["history"]``, so they survive save/load)."""
        return self.metadata.get("history", [])

    @history.setter
    def history(self, records: list[dict]) -> None:
        self.metadata["history"] = list(records)

    # -- input checks ---------------------------------------------------------------------------------------------
    def _as_batch(self, y, sizes=None, *, single: bool) -> tuple[Tensor, Tensor | None]:
        """Check observations; return ``(Y (B, ...), sizes (B,) or None)`` on the model's device."""
        if self.is_set_valued and isinstance(y, (list, tuple)) and not single:
            y, sizes = self._pad_sets(y, sizes)
        y = real_tensor("observations", y)
        y = y.to(device=self.device, dtype=torch.float32)
        event_ndim = len(self.obs_shape) + (1 if self.is_set_valued else 0)
        what = "(K, " + ", ".join(map(str, self.obs_shape)) + ")" if self.is_set_valued else str(self.obs_shape)
        if single:
            if y.ndim == event_ndim + 1 and y.shape[0] == 1:
                y = y[0]
            if y.ndim != event_ndim or tuple(y.shape[-len(self.obs_shape):]) != self.obs_shape:
                raise ValueError(f"observation must have shape {what} for a single observation, got "
                                 f"{tuple(y.shape)}; use sample_batched for several observations")
            y = y[None]
            if sizes is not None:
                sizes = torch.as_tensor(sizes).reshape(1)
        elif y.ndim != event_ndim + 1 or tuple(y.shape[-len(self.obs_shape):]) != self.obs_shape:
            raise ValueError(f"observations must have shape (B, *{what}), got {tuple(y.shape)}")
        if y.shape[0] == 0:
            raise ValueError("observations are empty (B = 0)")
        if self.is_set_valued:
            k = y.shape[1]
            if sizes is None:
                sizes = torch.full((y.shape[0],), k, dtype=torch.long)
            sizes = torch.as_tensor(sizes)
            if sizes.is_floating_point() and not torch.equal(sizes, sizes.round()) or sizes.dtype == torch.bool:
                raise ValueError(f"sizes must be whole numbers, got {sizes.tolist()[:10]}")
            sizes = sizes.to(dtype=torch.long, device=self.device)
            if sizes.shape != (y.shape[0],) or (sizes < 1).any() or (sizes > k).any():
                raise ValueError(f"sizes must be a (B,) tensor with 1 <= size <= {k}, got {sizes.tolist()[:10]}")
            valid = torch.arange(k, device=self.device)[None, :] < sizes[:, None]
            if not torch.isfinite(y[valid]).all():
                raise ValueError("observations contain NaN or inf")
            y = y * valid.reshape(*valid.shape, *([1] * len(self.obs_shape)))
        elif sizes is not None:
            raise ValueError("sizes are only meaningful for set-valued posteriors")
        elif not torch.isfinite(y).all():
            bad = (~torch.isfinite(y.reshape(y.shape[0], -1))).any(-1).nonzero()[:5].flatten().tolist()
            raise ValueError(f"observations contain NaN or inf (rows {bad}; values beyond float32's range, "
                             "about 3.4e38, count as inf)")
        self._warn_outside_training(y, sizes)
        return y, sizes

    def _warn_outside_training(self, y: Tensor, sizes: Tensor | None) -> None:
        """Warn (:class:`OutsideTrainingWarning`) when set sizes or observation values lie outside what training
        covered (``metadata["training_range"]``; posteriors saved without it are not checked)."""
        trained = self.metadata.get("training_range")
        if not trained:
            return
        notes = []
        if sizes is not None and "set_size_max" in trained:
            lo, hi = trained["set_size_min"], trained["set_size_max"]
            out = (sizes < lo) | (sizes > hi)
            if out.any():
                seen = sorted(set(sizes[out].tolist()))
                notes.append(f"set sizes {seen[:5]}{' ...' if len(seen) > 5 else ''} of {int(out.sum())} "
                             f"observation(s) lie outside the sizes trained on ({lo} to {hi})")
        low = torch.tensor(trained["obs_low"], device=y.device)
        high = torch.tensor(trained["obs_high"], device=y.device)
        pad = RANGE_MARGIN * (high - low)
        flat = y.reshape(y.shape[0], -1, low.numel())  # (B, members, M)
        outside = (flat < low - pad) | (flat > high + pad)
        if sizes is not None:
            outside &= (torch.arange(flat.shape[1], device=y.device)[None, :] < sizes[:, None])[..., None]
        rows = outside.any(-1).any(-1)
        if rows.any():
            dims = outside.any(0).any(0).nonzero().flatten().tolist()
            names = self.metadata.get("obs_names") or [f"y{d}" for d in range(low.numel())]
            which = ", ".join(str(names[d]) if d < len(names) else f"y{d}" for d in dims[:5])
            notes.append(f"{int(rows.sum())} of {y.shape[0]} observation(s) (e.g. row {int(rows.nonzero()[0])}) lie "
                         f"outside the range of the {trained.get('num_rows', 'training')} training observations in "
                         f"{which}{' ...' if len(dims) > 5 else ''}")
        if notes:
            warnings.warn("; ".join(notes) + ": the posterior there is an extrapolation and may be badly calibrated",
                          OutsideTrainingWarning, stacklevel=4)

    def _pad_sets(self, sets, sizes) -> tuple[Tensor, Tensor]:
        """A list of ``B`` sets ``(K_i, *obs_shape)`` as ``(B, max K_i, *obs_shape)`` zero-padded and ``sizes``."""
        if sizes is not None:
            raise ValueError("sizes come from the list of sets (each set's length); pass sizes= only with a padded "
                             "(B, K, ...) tensor")
        if len(sets) == 0:
            raise ValueError("observations are an empty list of sets (B = 0)")
        tensors = []
        for i, member in enumerate(sets):
            t = real_tensor(f"observations[{i}]", member).to(torch.float32)
            if t.ndim != 1 + len(self.obs_shape) or tuple(t.shape[1:]) != self.obs_shape or t.shape[0] == 0:
                raise ValueError(f"observations[{i}] must be a set of shape (K, {', '.join(map(str, self.obs_shape))}) "
                                 f"with K >= 1 members, got {tuple(t.shape)}")
            tensors.append(t)
        padded = torch.zeros(len(tensors), max(len(t) for t in tensors), *self.obs_shape)
        for i, t in enumerate(tensors):
            padded[i, : len(t)] = t
        return padded, torch.tensor([len(t) for t in tensors])

    @staticmethod
    def _num_samples(sample_shape) -> int:
        shape = tuple(sample_shape) if isinstance(sample_shape, (tuple, list, torch.Size)) else (sample_shape,)
        if len(shape) != 1 or isinstance(shape[0], bool) or not isinstance(shape[0], (int, np.integer)) \
                or shape[0] < 1:
            raise ValueError(f"sample_shape must be (n,) with a whole number n >= 1, got {sample_shape!r}")
        return int(shape[0])

    def _generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(check_seed(seed))
        return gen

    # -- the public contract --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, sample_shape, y, *, sizes=None, seed: int | None = None) -> Tensor:
        """Draw ``n`` samples of ``x`` for one observation ``y``.

        Args:
            sample_shape: ``(n,)``.
            y: one observation, shape ``(M,)`` (sets: ``(K, M)``).
            seed: seed for reproducible samples (fresh randomness when ``None``).

        Returns:
            Tensor ``(n, D)`` on the posterior's device, inside the prior's support.
        """
        n = self._num_samples(sample_shape)
        y, sizes = self._as_batch(y, sizes, single=True)
        return self._sample(n, y, sizes, self._generator(seed), max_rows=SAMPLE_CHUNK_ROWS, show_progress=False)[:, 0]

    @torch.no_grad()
    def sample_batched(self, sample_shape, Y, *, sizes=None, seed: int | None = None,
                       max_rows: int = SAMPLE_CHUNK_ROWS, out: Tensor | None = None,
                       show_progress: bool = False) -> Tensor:
        """Draw ``n`` samples for each of ``B`` observations, streaming in chunks.

        Args:
            sample_shape: ``(n,)``.
            Y: observations ``(B, M)`` (sets: ``(B, K, M)`` with ``sizes`` ``(B,)``, or a list of ``(K_i, M)``).
            max_rows: at most this many samples (``n`` x observations) are generated per chunk, bounding memory.
            out: optional preallocated ``(n, B, D)`` tensor (e.g. CPU or pinned memory) to fill.
            show_progress: a progress bar over chunks.

        Returns:
            Tensor ``(n, B, D)`` (``out`` if given).
        """
        n = self._num_samples(sample_shape)
        Y, sizes = self._as_batch(Y, sizes, single=False)
        gen = self._generator(seed)
        if out is not None and tuple(out.shape) != (n, Y.shape[0], self.param_dim):
            raise ValueError(f"out must have shape {(n, Y.shape[0], self.param_dim)}, got {tuple(out.shape)}")
        if out is not None and not torch.is_floating_point(out):
            raise TypeError(f"out must be a floating-point tensor (the samples are real numbers), got {out.dtype}")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        return self._sample(n, Y, sizes, gen, max_rows=max_rows, show_progress=show_progress, out=out)

    def _sample(self, n, Y, sizes, gen, *, max_rows, show_progress, out=None) -> Tensor:
        """Fill ``out`` ``(n, B, D)`` chunk by chunk. The loop runs under ``torch.inference_mode`` into a tensor
        allocated outside it, so callers get an ordinary tensor (one they may modify in place or differentiate
        through later); finiteness is accumulated on the device and checked once, after the loop (a check per
        chunk would wait for the device every chunk)."""
        B = Y.shape[0]
        if out is None:
            out = torch.empty(n, B, self.param_dim, device=self.device)
        obs_per_chunk = max(1, max_rows // n)
        sample_chunk = min(n, max_rows)
        starts = range(0, B, obs_per_chunk)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                finite = torch.ones((), dtype=torch.bool, device=self.device)
                for start in tqdm(starts, disable=not show_progress, desc="sampling", unit="chunk"):
                    stop = min(B, start + obs_per_chunk)
                    c = self.model.condition(Y[start:stop], None if sizes is None else sizes[start:stop])
                    for s0 in range(0, n, sample_chunk):
                        s1 = min(n, s0 + sample_chunk)
                        draw = self.model.sample_given(c, s1 - s0, gen)
                        finite &= torch.isfinite(draw).all()
                        out[s0:s1, start:stop].copy_(draw)
                if not finite:
                    self._refuse_nonfinite(out)
        finally:
            self.model.train(was_training)
        return out

    def _refuse_nonfinite(self, samples: Tensor) -> None:
        """A sample that is not a finite number is never returned: say which observations of ``samples``
        ``(n, B, D)``, and whether the weights are to blame."""
        rows = (~torch.isfinite(samples)).any(-1).any(0).nonzero().flatten()[:5]
        bad = nonfinite_weights(self.model.state_dict())
        cause = (f"the model's weights hold NaN or inf ({', '.join(bad[:3])}): a diverged training run or a damaged "
                 "file; retrain (e.g. with a lower learning rate)" if bad else
                 "the observations may lie far outside what the model was trained on")
        raise FloatingPointError(f"sampling produced NaN or inf for observation rows {rows.tolist()}: {cause}")

    def log_prob(self, x, y, *, sizes=None) -> Tensor:
        """``log q(x | y)`` for ``x`` ``(n, D)`` and one observation ``y`` (or ``y`` ``(n, ...)``, one per row).

        Returns:
            Tensor ``(n,)``. Densities are with respect to the parameter space (the support transform's Jacobian
            is included). Raises NotImplementedError for models without a tractable density.
        """
        x = real_tensor("x", x).to(dtype=torch.float32, device=self.device)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.param_dim:
            raise ValueError(f"x must have shape (n, {self.param_dim}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or inf")
        y_t = real_tensor("observations", y)
        event_ndim = len(self.obs_shape) + (1 if self.is_set_valued else 0)
        if y_t.ndim == event_ndim:
            Y, sz = self._as_batch(y_t, sizes, single=True)
            c = self.model.condition(Y, sz)  # (1, C), broadcast over the rows of x
        else:
            Y, sz = self._as_batch(y_t, sizes, single=False)
            if Y.shape[0] != x.shape[0]:
                raise ValueError(f"x has {x.shape[0]} rows but the observations y have {Y.shape[0]}; pass one "
                                 "observation or one per row of x")
            c = self.model.condition(Y, sz)
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model.log_prob_given(x, c)
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def map(self, y, *, sizes=None, num_samples: int = 4096, method: str = "meanshift", seed: int = 0) -> Tensor:
        """Maximum-a-posteriori estimate ``(D,)`` for one observation.

        ``method="meanshift"`` (thesis 4.2.3) runs Gaussian mean shift on the samples (standardised, Scott
        bandwidth) and returns the reached mode of highest kernel density; ``"gradient"`` starts from the 32
        samples of highest ``log_prob`` and follows its gradient (models with a density only).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"map needs num_samples >= 2 (a mode from one sample is that sample), got "
                             f"{num_samples!r}")
        samples = self.sample((num_samples,), y, sizes=sizes, seed=seed)
        if method == "meanshift":
            return mean_shift(samples[:, None])[0]
        if method != "gradient":
            raise ValueError(f"method must be 'meanshift' or 'gradient', got {method!r}")
        logp = self.log_prob(samples, y, sizes=sizes)
        start = samples[logp.topk(min(32, num_samples)).indices].clone()
        with torch.enable_grad():
            x = start.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=1e-2 * samples.std(0).mean().item())
            for _ in range(200):
                opt.zero_grad()
                loss = -self.log_prob(x, y, sizes=sizes).sum()
                loss.backward()
                opt.step()
        with torch.no_grad():
            final = self.log_prob(x.detach(), y, sizes=sizes)
            final = torch.where(torch.isfinite(final), final, torch.full_like(final, -math.inf))
        return x.detach()[final.argmax()]

    def to_dataframe(self, samples: Tensor):
        """Samples ``(n, D)`` (or ``(n, B, D)``, flattened with an ``observation`` column) as a pandas DataFrame."""
        import pandas as pd

        samples = torch.as_tensor(samples).detach().cpu()
        if samples.ndim == 2:
            return pd.DataFrame(samples.numpy(), columns=self.param_names)
        if samples.ndim == 3:
            n, B, D = samples.shape
            df = pd.DataFrame(samples.reshape(n * B, D).numpy(), columns=self.param_names)
            df.insert(0, "observation", torch.arange(B).repeat(n).numpy())
            return df
        raise ValueError(f"samples must be (n, D) or (n, B, D), got {tuple(samples.shape)}")

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write weights plus JSON configuration (loadable with ``torch.load(weights_only=True)``, no pickle),
        atomically through ``<path>.tmp``; an existing ``path`` is refused (``FileExistsError``) unless
        ``overwrite`` (:func:`sbi_inn.model_files.write_model_file`)."""
        header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "package_version": __version__,
                  "model": self.model.config(), "param_names": self.param_names, "obs_shape": list(self.obs_shape),
                  "is_set_valued": self.is_set_valued, "metadata": self.metadata}
        return write_model_file(path, header, self.model.state_dict(), overwrite=overwrite)

    def __repr__(self) -> str:
        kind = self.model.config().get("type", "?")
        return (f"Posterior(method={kind!r}, params={self.param_names}, obs_shape={self.obs_shape}, "
                f"set_valued={self.is_set_valued}, device={self.device})")


def _check_header(header, state, path) -> None:
    """Refuse a posterior header that is incomplete or asks for more than the file's weights could fill (the bounds
    and why they are needed: :class:`sbi_inn.model_files.HeaderBounds`)."""
    for key, kind in (("model", dict), ("param_names", list), ("obs_shape", list), ("is_set_valued", bool)):
        if key not in header:
            raise ValueError(f"{path}: the posterior header lacks {key!r}")
        if not isinstance(header[key], kind):
            raise ValueError(f"{path}: header field {key!r} must be a JSON {kind.__name__}, got {header[key]!r}")
    model = header["model"]
    if model.get("type") != "mixture":
        _check_model(model, state, path)
        return
    members = model.get("members")  # an ensemble (sbi_inn.ensemble): each member against its own weights
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise ValueError(f"{path}: header field model.members must be a non-empty list of model configurations")
    for k, member in enumerate(members):
        prefix = f"members.{k}."
        _check_model(member, {n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)}, path)


def _check_model(model: dict, state, path) -> None:
    """The bounds of one cINN or INN configuration against its weights ``state``."""
    bounds = HeaderBounds(path, state)
    if "flow" not in model or not isinstance(model["flow"], dict):
        raise ValueError(f"{path}: the posterior header lacks 'model.flow'")
    bounds.flow("flow", model["flow"])
    bounds.size("param_dim", model.get("param_dim"))
    for key in ("obs_dim", "latent_dim", "nominal_dim"):
        if key in model:
            bounds.size(key, model[key])
    if "obs_shape" in model:
        shape = model["obs_shape"]
        if not isinstance(shape, list) or not shape:
            raise ValueError(f"{path}: header field model.obs_shape must be a non-empty list, got {shape!r}")
        bounds.size("obs_shape", math.prod(bounds.size("obs_shape", d) for d in shape))
    summary = model.get("summary")
    if isinstance(summary, dict) and summary.get("kind") in ("mlp", "deepset"):
        s_hidden = bounds.size("summary.hidden", summary["hidden"])
        s_layers = bounds.size("summary.layers", summary["layers"], 0)
        bounds.size("summary.dim", summary.get("dim"))
        bounds.network("summary", 1, s_layers, s_hidden)


def model_from_config(config: dict, summary: nn.Module | None = None) -> nn.Module:
    """Rebuild an untrained model from its JSON configuration (``config["type"]`` picks the class); ``summary`` is
    the user's summary module for a cINN trained with a custom one."""
    kind = config.get("type")
    if kind == "mixture":
        return MixtureModel.from_config(config, summary=summary)
    if kind not in MODEL_TYPES:
        raise ValueError(f"unknown model type {kind!r}; known: {sorted([*MODEL_TYPES, 'mixture'])}")
    cls = MODEL_TYPES[kind]
    if summary is None:
        return cls.from_config(config)
    if kind != "cinn":
        raise ValueError(f"summary= applies to cinn posteriors only, this file holds a {kind!r} model")
    return cls.from_config(config, summary=summary)


def load_posterior(path: str | Path, device: str | torch.device = "auto", *,
                   summary: nn.Module | None = None) -> Posterior:
    """Load a posterior written by :meth:`Posterior.save` onto ``device`` (a GPU-trained model loads on CPU).

    ``summary``: for a cINN trained with a custom summary network, a freshly built instance of the same
    architecture (its weights are read from the file).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupted, not an sbi_inn posterior, or from an incompatible format version.
    """
    header, state = read_model_file(path, format_name=FORMAT_NAME, format_version=FORMAT_VERSION, what="posterior")
    _check_header(header, state, path)
    model = model_from_config(header["model"], summary=summary)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the stored configuration: {err}") from err
    posterior = Posterior(model, param_names=header["param_names"], obs_shape=header["obs_shape"],
                          is_set_valued=header["is_set_valued"], metadata=header.get("metadata"))
    return posterior.to(resolve_device(device))
