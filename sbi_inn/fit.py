"""``fit_posterior``: from a simulator and a prior (or a simulation file) to a trained, amortised posterior.

The one entry point users call (``../shared/API.md``)::

    posterior = fit_posterior(simulate, prior, num_simulations=10_000, method="cinn", seed=0)
    posterior = fit_posterior(data="sims.h5", method="inn")

It checks the simulator/prior pair on a small pilot batch (shapes, dtypes, rate of NaN/inf outputs) with messages
that say what is wrong, simulates in memory or into a resumable HDF5 file (``sbi_inn.data``), builds the
conditional INN (``sbi_inn.cinn``) or dispatches to the bidirectional INN (``sbi_inn.inn``), and trains with the
shared loop (``sbi_inn.train``). The same ``seed`` gives the same simulations and the same weights; with a
``checkpoint_dir`` an interrupted call resumes and ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbi_inn._version import __version__
from sbi_inn.cinn import ConditionalINN
from sbi_inn.data import call_simulator
from sbi_inn.flows import FlowConfig
from sbi_inn.posterior import Posterior, resolve_device
from sbi_inn.priors import as_prior, describe_prior, prior_for, support_bounds
from sbi_inn.summary import POOLS
from sbi_inn.train import TrainConfig, train

METHODS = ("cinn", "inn")
SUMMARIES = ("auto", "mlp", "deepset", "none")


# optimisation of fit_posterior: batches sized to the data (sbi_inn.train.batch_size_for), lr decaying over 150 epochs,
# early stopping after 20 epochs without a validation loss 1e-3 nats per dimension below the last counted one; the
# validation loss leaves out the 1 % worst rows (sbi_inn.train.trimmed_mean says why)
DEFAULT_TRAIN = TrainConfig(epochs=150, batch_size=None, lr=1e-3, lr_final=1e-5, patience=20, min_delta=1e-3,
                            val_trim=0.01, max_time=None)
# Small simulation budgets (fewer than SMALL_DATA_ROWS training simulations) overfit: default_flow adds subnet dropout
# and training starts at twice the learning rate and stops after 10 epochs without improvement (see default_train).
SMALL_DATA_ROWS = 2000
SMALL_DATA_DROPOUT = 0.1
SMALL_DATA_TRAIN = dataclasses.replace(DEFAULT_TRAIN, lr=2e-3, patience=10)


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_posterior` for ``method="cinn"`` (a wrong keyword raises ``TypeError``).

    The defaults train a few-parameter problem from 10 000 simulations in about a minute on a laptop CPU. The flow
    (``default_flow``) was chosen on ``benchmarks/bench_vs_sbi.py`` for sampling speed at equal accuracy. Batches
    follow ``sbi_inn.train.batch_size_for`` (112 for 1000 simulations, 256 from about 2000 on).

    Attributes:
        flow: coupling-flow architecture for ``D`` parameters and ``n`` training simulations: ``None`` (the
            default) is ``default_flow(D, n)``, a dict overrides some of its fields (``{"dropout": 0.0}``), a
            ``sbi_inn.flows.FlowConfig`` is used as given.
        train: optimisation settings: ``None`` (the default) is ``default_train(n)`` for ``n`` training
            simulations, a dict overrides some of its fields (``{"patience": 40}`` keeps the automatic batch size and
            the rest), a ``sbi_inn.train.TrainConfig`` is used as given; its ``seed`` is replaced by the ``seed`` of
            :func:`fit_posterior`.
        summary_dim: number of learned summary features (default 32; ignored for ``summary="none"``).
        summary_hidden, summary_layers, summary_activation: width, hidden layers and nonlinearity of the summary
            network (for deep sets: of each of ``psi`` and ``rho``); ``summary_layers=None`` is 2 for the MLP and 1 for
            the deep set (``sbi_inn.cinn.ConditionalINN``).
        summary_pool: the deep set's pool over set members, ``"mean_std"`` (mean and spread of the member features,
            the default) or ``"mean"`` (thesis eq. 3.14 alone); see ``sbi_inn.summary.DeepSetSummary``.
        spline_bins: bins of the exact 1-D spline flow used for one-parameter problems.
        pilot_size: simulations run up front to check the simulator/prior pair.
        max_invalid_fraction: a pilot with a larger fraction of NaN/inf outputs is an error.
        chunk_size: simulations per call of the simulator (and per HDF5 chunk).
        max_memory_bytes: simulation files larger than this are streamed from disk instead of loaded.

    Example:
        >>> cfg = FitConfig.from_dict({"flow": {"num_blocks": 4}, "train": {"epochs": 50}, "summary_dim": 16})
        >>> cfg.flow_for(6, 10_000).num_blocks, cfg.flow_for(6, 10_000).hidden, cfg.summary_dim
        (4, 64, 16)
        >>> cfg.train_for(10_000).epochs, cfg.train_for(10_000).lr, cfg.train_for(900).lr
        (50, 0.001, 0.002)
    """

    flow: FlowConfig | dict | None = None
    train: TrainConfig | dict | None = None
    summary_dim: int | None = None
    summary_hidden: int = 128
    summary_layers: int | None = None
    summary_activation: str = "relu"
    summary_pool: str = "mean_std"
    spline_bins: int = 8
    pilot_size: int = 64
    max_invalid_fraction: float = 0.5
    chunk_size: int = 10_000
    max_memory_bytes: int = 2 * 1024**3

    def __post_init__(self):
        if isinstance(self.flow, dict):
            _override(default_flow(2), self.flow, "FitConfig.flow")  # checks keys and values; flow_for applies it
        if isinstance(self.train, dict):
            # checks keys and values; train_for applies it to default_train(n), not to TrainConfig's class defaults
            _override(DEFAULT_TRAIN, self.train, "FitConfig.train")
        if not isinstance(self.flow, FlowConfig | dict | None) or not isinstance(self.train, TrainConfig | dict | None):
            raise TypeError("FitConfig: flow must be a FlowConfig, a dict or None, and train a TrainConfig, a dict or "
                            "None")
        if self.summary_dim is not None and self.summary_dim < 1:
            raise ValueError(f"FitConfig: summary_dim must be >= 1 or None, got {self.summary_dim}")
        if self.summary_hidden < 1 or (self.summary_layers or 0) < 0 or self.spline_bins < 2:
            raise ValueError("FitConfig: summary_hidden >= 1, summary_layers >= 0 and spline_bins >= 2 required")
        if self.summary_pool not in POOLS:
            raise ValueError(f"FitConfig: summary_pool must be one of {POOLS}, got {self.summary_pool!r}")
        if self.pilot_size < 1 or self.chunk_size < 1:
            raise ValueError("FitConfig: pilot_size and chunk_size must be >= 1")
        if not 0 <= self.max_invalid_fraction <= 1:
            raise ValueError(f"FitConfig: max_invalid_fraction must be in [0, 1], got {self.max_invalid_fraction}")

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        """Build from a (possibly nested) dict; unknown keys raise ``TypeError`` naming them."""
        return _override(cls(), d, "FitConfig")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flow_for(self, param_dim: int, num_train: int | None = None) -> FlowConfig:
        """The coupling flow for ``param_dim`` parameters and ``num_train`` training simulations (see ``flow``)."""
        if isinstance(self.flow, FlowConfig):
            return self.flow
        return dataclasses.replace(default_flow(param_dim, num_train), **(self.flow or {}))

    def train_for(self, num_train: int) -> TrainConfig:
        """The optimisation settings for ``num_train`` training simulations (see ``train``)."""
        if isinstance(self.train, TrainConfig):
            return self.train
        return dataclasses.replace(default_train(num_train), **(self.train or {}))


def default_train(num_train: int) -> TrainConfig:
    """The optimisation of ``fit_posterior`` for ``num_train`` training simulations when ``FitConfig.train`` is
    ``None``: ``DEFAULT_TRAIN``, or below ``SMALL_DATA_ROWS`` simulations ``SMALL_DATA_TRAIN`` (learning rate 2e-3,
    patience 10; see ``default_flow`` for the measurements)."""
    return SMALL_DATA_TRAIN if num_train < SMALL_DATA_ROWS else DEFAULT_TRAIN


def default_flow(param_dim: int, num_train: int | None = None) -> FlowConfig:
    """The coupling flow of ``fit_posterior`` for ``param_dim`` parameters and ``num_train`` training simulations
    (``None``: many) when ``FitConfig.flow`` is ``None``.

    Subnets of one hidden layer of 64; 8 coupling blocks, or 4 for two parameters. Chosen on
    ``benchmarks/bench_vs_sbi.py`` (C2ST per cell, one seed): against 6 blocks of two 128-wide layers, 8 x 64 x 1
    moved the C2ST by at most +-0.03 per cell while sampling got 2.5-4x faster, because the condition is projected once
    per observation and each block then costs a few hundred operations per sample. With two parameters every block
    transforms both coordinates, and 4 blocks matched 8 (Gaussian mixture 0.617 / 0.553 against 0.610 / 0.555 at
    1000 / 10 000 simulations, set-valued 0.665 / 0.528 against 0.668 / 0.575) at half the cost; with four or more
    parameters 4 blocks lost (inverse kinematics at 10 000: 0.707 against 0.611).

    Below ``SMALL_DATA_ROWS`` training simulations the subnets get dropout ``SMALL_DATA_DROPOUT`` (and
    ``default_train`` a learning rate of 2e-3 and patience 10). At 1000 simulations, data seeds 0 / 1 / 2 (measured
    before batches became equal-sized, ``sbi_inn.train.iterate_batches``), C2ST against
    the reference posterior: tissue spectra 0.612 / 0.620 / 0.655 against 0.647 / 0.696 / 0.738 without, inverse
    kinematics 0.763 / 0.853 / 0.803 against 0.874 / 0.909 / 0.875, sets 0.652 / 0.582 / 0.573 against 0.657 / 0.561 /
    0.559 (in 39 / 28 / 57 instead of 82 / 53 / 90 epochs), the mixture 0.609 against 0.594. Dropout alone at lr 1e-3
    trained 2-3x longer, lr 2e-3 alone was worse (tissue 0.661), and at 10 000 simulations dropout was worse (mixture
    0.566 against 0.549, inverse kinematics 0.641 against 0.597). Six blocks or a 100-epoch schedule at 1000 were
    faster on inverse kinematics but worse on both it and tissue.
    """
    small = num_train is not None and num_train < SMALL_DATA_ROWS
    return FlowConfig(num_blocks=4 if param_dim == 2 else 8, hidden=64, num_layers=1,
                      dropout=SMALL_DATA_DROPOUT if small else 0.0)


def _override(default, d: dict, what: str):
    """``default`` (a dataclass instance) with the fields named in ``d`` replaced; unknown keys raise naming them."""
    if not isinstance(d, dict):
        raise TypeError(f"{what} must be a dict or {type(default).__name__}, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TypeError(f"{what}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return dataclasses.replace(default, **d)


# -- the entry point ----------------------------------------------------------------------------------------------
def fit_posterior(simulate: Callable | None = None, prior=None, *, num_simulations: int | None = None,
                  data: str | Path | None = None, method: str = "cinn", summary: str | nn.Module = "auto",
                  device: str | torch.device = "auto", seed: int = 0, config=None, show_progress: bool = True,
                  checkpoint_dir: str | Path | None = None, validation_fraction: float = 0.1) -> Posterior:
    """Simulate, train and return an amortised posterior ``q(x | y)``.

    Args:
        simulate: batched simulator ``x (n, D) -> y (n, M)`` (torch or numpy in/out; set-valued ones return
            ``(y (n, K, M) zero-padded, sizes (n,))``), e.g. a ``simulators.Simulator``. ``None`` with ``data``:
            train from an existing simulation file.
        prior: a ``torch.distributions.Distribution`` with event shape ``(D,)`` or a list of 1-D ones; ``None``
            takes ``simulate.prior`` (or, with ``data`` only, the support recorded in the file).
        num_simulations: number of simulations to run (required with ``simulate``).
        data: an HDF5 simulation file (``sbi_inn.data``): with ``simulate`` it is filled (resumed if interrupted,
            reused if it already holds enough matching simulations), without it is read as is.
        method: ``"cinn"`` (conditional INN, maximum likelihood) or ``"inn"`` (bidirectional INN, thesis ch. 4).
        summary: ``"auto"`` (deep set for sets, MLP otherwise), ``"mlp"``, ``"deepset"``, ``"none"`` or an
            ``nn.Module`` (see ``sbi_inn.cinn.ConditionalINN``; a posterior with a custom module cannot be saved).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        seed: seeds simulations, weight initialisation, shuffling and training noise.
        config: a :class:`FitConfig` or a dict of its fields (``method="inn"``: an ``INNConfig`` or dict).
        show_progress: progress bars for simulation and training.
        checkpoint_dir: directory for the training checkpoint; a call with the same directory resumes.
        validation_fraction: fraction of the simulations held out for early stopping (0 disables).

    Returns:
        The trained :class:`~sbi_inn.posterior.Posterior`; ``posterior.metadata`` holds the configuration, the data
        provenance and the per-epoch history (also ``posterior.history``).

    Raises:
        TypeError, ValueError: invalid arguments, or a simulator/prior pair that fails the pilot checks.

    Example:
        >>> import torch
        >>> from sbi_inn import BoxUniform
        >>> prior = BoxUniform(torch.zeros(2), torch.ones(2))
        >>> cfg = {"flow": {"num_blocks": 2, "hidden": 16}, "train": {"epochs": 2}}
        >>> post = fit_posterior(lambda x: x + 0.1 * torch.randn_like(x), prior, num_simulations=200, config=cfg,
        ...                      show_progress=False)
        >>> post.sample((5,), torch.tensor([0.5, 0.5])).shape
        torch.Size([5, 2])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (isinstance(summary, nn.Module) or summary in SUMMARIES):
        raise ValueError(f"summary must be one of {SUMMARIES} or an nn.Module, got {summary!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    seed = int(seed)
    if method == "cinn":
        config = _as_fit_config(config)
        settings = config
    else:
        if summary != "auto":
            raise ValueError("summary networks apply to method='cinn' only; the bidirectional INN ('inn') takes the "
                             "observation vector itself")
        if isinstance(config, FitConfig):
            raise TypeError("config=FitConfig(...) configures method='cinn'; for method='inn' pass an "
                            "sbi_inn.inn.INNConfig or a dict of its fields")
        settings = FitConfig()  # pilot and data-handling defaults
    dev = resolve_device(device)

    if simulate is None:
        if data is None:
            raise TypeError("fit_posterior needs a simulator (simulate, prior, num_simulations=...) or data=PATH")
        if num_simulations is not None:
            raise TypeError("num_simulations is only used together with a simulator; to use part of a file, "
                            "simulate into it with the simulator")
        sims = _load_file(data, prior, settings)
    else:
        if not callable(simulate):
            raise TypeError(f"simulate must be callable (x (n, D) -> y), got {type(simulate).__name__}")
        prior = prior_for(simulate, prior)
        if isinstance(num_simulations, bool) or not isinstance(num_simulations, (int, np.integer)):
            raise TypeError(f"num_simulations must be an integer, got {num_simulations!r}")
        if num_simulations < 10:
            raise ValueError(f"num_simulations must be at least 10, got {num_simulations}")
        pilot = _pilot_check(simulate, prior, settings, seed)
        if data is not None:
            sims = _simulate_file(simulate, prior, int(num_simulations), data, settings, seed, show_progress)
        else:
            sims = _simulate_memory(simulate, prior, int(num_simulations), settings, seed, show_progress)
        sims["is_set_valued"] = pilot["is_set_valued"]

    if method == "inn":
        return _fit_inn(sims, config, dev, seed, validation_fraction, show_progress, checkpoint_dir)
    return _fit_cinn(sims, config, summary, dev, seed, validation_fraction, show_progress, checkpoint_dir)


def _as_fit_config(config) -> FitConfig:
    if config is None:
        return FitConfig()
    if isinstance(config, FitConfig):
        return config
    if isinstance(config, dict):
        return FitConfig.from_dict(config)
    raise TypeError(f"config must be a FitConfig or a dict, got {type(config).__name__}")


# -- simulation ---------------------------------------------------------------------------------------------------
def _seeds(seed: int, chunk: int) -> tuple[int, int]:
    """Prior and simulator seeds of chunk ``chunk`` (chunk -1 is the pilot), depending on ``(seed, chunk)`` only."""
    state = np.random.SeedSequence(seed, spawn_key=(chunk + 1, 7)).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1)), int(state[1] >> np.uint64(1))


def _accepts(fn, name: str) -> bool:
    try:
        p = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _sample_prior(prior, n: int, seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = prior.sample((n,))
    x = torch.as_tensor(x)
    d = int(prior.event_shape[0])
    if x.shape != (n, d):
        raise ValueError(f"prior.sample(({n},)) returned shape {tuple(x.shape)}, expected ({n}, {d})")
    if not torch.is_floating_point(x):
        raise TypeError(f"prior samples must be floating point, got dtype {x.dtype} (a discrete prior cannot be "
                        "inferred with a normalising flow)")
    return x.to(torch.float32)


class _Runner:
    """Calls a user simulator reproducibly: a seeded ``generator`` when it takes one, else seeded global RNGs."""

    def __init__(self, simulate: Callable):
        self.simulate = simulate
        self.fn = simulate.simulate if hasattr(simulate, "simulate") and hasattr(simulate, "is_set_valued") \
            else simulate
        self.takes_generator = _accepts(self.fn, "generator")
        self.name = getattr(simulate, "name", None) or getattr(simulate, "__name__", type(simulate).__name__)
        self.use_numpy = False

    def __call__(self, x: Tensor, seed: int):
        out, self.use_numpy = call_simulator(self.fn, x, seed, takes_generator=self.takes_generator,
                                             use_numpy=self.use_numpy)
        return out

    def parse(self, out, n: int) -> tuple[Tensor, Tensor | None]:
        """Check one output for ``n`` parameter rows; return ``(y, sizes or None)``."""
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise ValueError(f"simulator {self.name!r} returned a {type(out).__name__} of length {len(out)}; "
                                 "return y (n, M), or (y (n, K, M), sizes (n,)) for set-valued observations")
            y, sizes = _as_array(out[0], self.name, "y"), torch.as_tensor(np.asarray(out[1]))
            if y.ndim != 3 or y.shape[0] != n:
                raise ValueError(f"set-valued simulator {self.name!r} returned y of shape {tuple(y.shape)} for {n} "
                                 f"parameter rows; expected ({n}, K, M)")
            if sizes.shape != (n,) or sizes.is_floating_point() or sizes.dtype == torch.bool:
                raise ValueError(f"set-valued simulator {self.name!r} returned sizes of shape {tuple(sizes.shape)} "
                                 f"and dtype {sizes.dtype}; expected integers of shape ({n},)")
            sizes = sizes.to(torch.int64)
            if (sizes < 1).any() or (sizes > y.shape[1]).any():
                raise ValueError(f"set-valued simulator {self.name!r} returned set sizes outside [1, {y.shape[1]}]")
            return y, sizes
        y = _as_array(out, self.name, "y")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"simulator {self.name!r} returned {y.shape[0] if y.ndim else 'a scalar, i.e. no'} rows "
                             f"(shape {tuple(y.shape)}) for {n} parameter rows; it must return one observation per "
                             "row of x")
        if y.ndim == 1:
            raise ValueError(f"simulator {self.name!r} returned shape {tuple(y.shape)}; return ({n}, M), e.g. "
                             "y[:, None] for a scalar observation")
        return y, None


def _as_array(value, name: str, what: str) -> Tensor:
    t = value.detach().cpu() if isinstance(value, Tensor) else None
    if t is None:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(f"simulator {name!r} returned {what} of type {type(value).__name__} that is not an "
                            f"array: {err}") from None
    if t.is_complex():
        raise TypeError(f"simulator {name!r} returned {what} of dtype {t.dtype}; observations must be real numbers")
    return t.to(torch.float32)  # integer and boolean observations (counts, labels) are used as floats


def _invalid_rows(y: Tensor, sizes: Tensor | None) -> Tensor:
    finite = torch.isfinite(y)
    if sizes is None:
        return ~finite.reshape(y.shape[0], -1).all(-1)
    in_set = torch.arange(y.shape[1])[None, :] < sizes[:, None]
    return ~(finite | ~in_set[..., None]).all(-1).all(-1)


def _pilot_check(simulate, prior, settings: FitConfig, seed: int) -> dict:
    """Simulate ``pilot_size`` draws and check shapes, dtypes and the NaN rate; raise with a precise message."""
    n = settings.pilot_size
    prior_seed, sim_seed = _seeds(seed, -1)
    x = _sample_prior(prior, n, prior_seed)
    runner = _Runner(simulate)
    try:
        out = runner(x, sim_seed)
    except Exception as err:
        msg = f"the simulator failed on a pilot batch of {n} prior draws (x of shape {tuple(x.shape)}): {err}"
        try:
            wrapped = type(err)(msg)
        except Exception:  # an exception type with another constructor signature
            wrapped = RuntimeError(msg)
        raise wrapped from err
    y, sizes = runner.parse(out, n)
    names = getattr(simulate, "param_names", None)
    if names and len(names) != x.shape[1]:
        raise ValueError(f"the prior has {x.shape[1]} dimensions but the simulator {runner.name!r} takes "
                         f"{len(names)} parameters ({', '.join(names)})")
    bad = _invalid_rows(y, sizes)
    if bad.float().mean() > settings.max_invalid_fraction:
        example = x[bad.nonzero()[0, 0]].tolist()
        raise ValueError(f"{int(bad.sum())} of {n} pilot simulations returned NaN or inf (e.g. for x = {example}); "
                         f"more than {settings.max_invalid_fraction:.0%} invalid means the simulator or the prior is "
                         "broken")
    return {"is_set_valued": sizes is not None, "obs_shape": tuple(y.shape[2:] if sizes is not None else y.shape[1:])}


def _simulate_memory(simulate, prior, num: int, settings: FitConfig, seed: int, show_progress: bool) -> dict:
    runner = _Runner(simulate)
    xs, ys, ss = [], [], []
    with tqdm(total=num, disable=not show_progress, desc="simulating", unit="sim") as bar:
        for i, start in enumerate(range(0, num, settings.chunk_size)):
            n = min(settings.chunk_size, num - start)
            prior_seed, sim_seed = _seeds(seed, i)
            x = _sample_prior(prior, n, prior_seed)
            y, sizes = runner.parse(runner(x, sim_seed), n)
            xs.append(x)
            ys.append(y)
            ss.append(sizes)
            bar.update(n)
    if ss[0] is not None:
        k = max(y.shape[1] for y in ys)
        ys = [torch.nn.functional.pad(y, (0, 0, 0, k - y.shape[1])) for y in ys]
        sizes = torch.cat(ss)
    else:
        sizes = None
    x, y = torch.cat(xs), torch.cat(ys)
    bad = _invalid_rows(y, sizes)
    n_bad = int(bad.sum())
    if n_bad == num:
        raise ValueError(f"all {num} simulations returned NaN or inf")
    if n_bad:
        warnings.warn(f"{n_bad} of {num} simulations returned NaN or inf and were dropped", RuntimeWarning,
                      stacklevel=3)
        keep = ~bad
        x, y = x[keep], y[keep]
        sizes = sizes[keep] if sizes is not None else None
    return {"x": x, "y": y, "sizes": sizes, "prior": prior, "param_names": _param_names(simulate, x.shape[1]),
            "provenance": {"source": "memory", "num_simulations": num, "num_invalid": n_bad,
                           **_simulator_info(simulate, prior)}}


def _simulate_file(simulate, prior, num: int, path, settings: FitConfig, seed: int, show_progress: bool) -> dict:
    from sbi_inn.data import simulate_to_hdf5

    info = simulate_to_hdf5(simulate, prior, num, path, seed=seed, chunk_size=settings.chunk_size, resume=True,
                            show_progress=show_progress)
    sims = _load_file(path, prior, settings, max_rows=num)
    sims["provenance"].update(num_simulations=num, simulation_info={k: v for k, v in info.items()
                                                                    if isinstance(v, (int, float, str, bool))})
    if not sims["provenance"].get("simulator"):
        sims["provenance"].update(_simulator_info(simulate, prior))
    return sims


def _load_file(path, prior, settings: FitConfig, max_rows: int | None = None) -> dict:
    """Read a simulation file: into memory when small, else as streaming ``HDF5Dataset`` splits."""
    from sbi_inn.data import HDF5Dataset, hdf5_info, load_hdf5

    path = Path(path)
    info = hdf5_info(path)
    rows = info["num_rows"] if max_rows is None else min(info["num_rows"], max_rows)
    if rows < 2:
        raise ValueError(f"{path} holds {rows} usable simulations; need at least 2")
    prior_desc = info["prior"]
    if prior is not None:
        prior = as_prior(prior)
        if int(prior.event_shape[0]) != len(info["param_names"]):
            raise ValueError(f"the prior has {int(prior.event_shape[0])} dimensions but {path} holds "
                             f"{len(info['param_names'])} parameters")
        lo, hi = support_bounds(prior)
    else:
        lo = _bounds(prior_desc.get("support_low"), -math.inf, len(info["param_names"]))
        hi = _bounds(prior_desc.get("support_high"), math.inf, len(info["param_names"]))
    provenance = {"source": "hdf5", "path": str(path.resolve()), "num_rows_in_file": info["num_rows"],
                  "num_invalid": info["num_invalid"], "simulator": info["simulator"],
                  "simulator_config": info["simulator_config"], "prior": prior_desc, "file_seed": info["seed"]}
    out = {"prior": prior, "lo": lo, "hi": hi, "param_names": info["param_names"],
           "is_set_valued": info["is_set_valued"], "provenance": provenance}
    k = info.get("max_set_size") or 1
    row_bytes = 4 * (len(info["param_names"]) + k * len(info["obs_names"]))
    if rows * row_bytes <= settings.max_memory_bytes:
        loaded = load_hdf5(path, max_rows=rows)
        out.update(x=loaded["x"], y=loaded["y"], sizes=loaded.get("sizes"))
    else:  # streamed from disk: the first `rows` committed rows of the file, split by HDF5Dataset
        out["dataset"] = lambda split, fractions, seed: HDF5Dataset(path, split, fractions=fractions, seed=seed,
                                                                    max_rows=rows)
    return out


def _bounds(values, fill: float, d: int) -> Tensor:
    if values is None:
        return torch.full((d,), fill)
    return torch.tensor([fill if v is None else float(v) for v in values], dtype=torch.float32)


def _param_names(simulate, d: int) -> list[str]:
    names = list(getattr(simulate, "param_names", None) or [])
    return names if len(names) == d else [f"x{i}" for i in range(d)]


def _simulator_info(simulate, prior) -> dict:
    cfg = None
    if hasattr(simulate, "config") and callable(simulate.config):
        try:
            cfg = simulate.config()
            json.dumps(cfg)
        except Exception:  # a user's object whose config is not JSON
            cfg = None
    name = getattr(simulate, "name", None) or getattr(simulate, "__name__", type(simulate).__name__)
    try:
        prior_desc = describe_prior(prior)
    except Exception:
        prior_desc = {"repr": repr(prior)}
    return {"simulator": str(name), "simulator_config": cfg, "prior": prior_desc}


# -- training -----------------------------------------------------------------------------------------------------
def _split(sims: dict, fraction: float, seed: int):
    """``(train, val)`` as tuples of tensors (or streaming datasets for large files)."""
    if "dataset" in sims:
        fr = (1 - fraction, fraction, 0.0)
        train_ds = sims["dataset"]("train", fr, seed)
        return train_ds, (sims["dataset"]("val", fr, seed) if fraction > 0 else None)
    x, y, sizes = sims["x"], sims["y"], sims["sizes"]
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(fraction * n)) if fraction > 0 else 0
    n_val = min(max(n_val, 1 if fraction > 0 else 0), n - 1)
    cols = (x, y) if sizes is None else (x, y, sizes)
    train_data = tuple(t[perm[n_val:]] for t in cols)
    val_data = tuple(t[perm[:n_val]] for t in cols) if n_val else None
    return train_data, val_data


def _standardization_sample(train_data, max_rows: int = 100_000):
    if isinstance(train_data, tuple):
        return train_data[0][:max_rows], train_data[1][:max_rows], (train_data[2][:max_rows]
                                                                    if len(train_data) > 2 else None)
    batch = train_data.get_batch(list(range(min(len(train_data), max_rows))))
    sizes = batch[2].sum(-1) if len(batch) > 2 else None
    return batch[0], batch[1], sizes


def _loss(model: ConditionalINN, batch):
    return model.loss(batch)


def _val_loss(model: ConditionalINN, batch):
    """Per-row validation NLL; ``train`` averages it over the validation set without the ``val_trim`` worst rows."""
    return model.nll_rows(batch), {}


def _fit_cinn(sims, config: FitConfig, summary, dev, seed, fraction, show_progress, checkpoint_dir) -> Posterior:
    train_data, val_data = _split(sims, fraction, seed)
    num_train = train_data[0].shape[0] if isinstance(train_data, tuple) else len(train_data)
    x0, y0, s0 = _standardization_sample(train_data)
    is_set = bool(sims["is_set_valued"])
    obs_shape = tuple(y0.shape[2:]) if is_set else tuple(y0.shape[1:])
    if "lo" in sims:
        lo, hi = sims["lo"], sims["hi"]
    else:
        lo, hi = support_bounds(sims["prior"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConditionalINN(x0.shape[1], obs_shape, support_low=lo, support_high=hi, is_set_valued=is_set,
                               flow=config.flow_for(x0.shape[1], num_train), summary=summary,
                               summary_dim=config.summary_dim,
                               summary_hidden=config.summary_hidden, summary_layers=config.summary_layers,
                               summary_activation=config.summary_activation, summary_pool=config.summary_pool,
                               spline_bins=config.spline_bins)
    outside = ~model.support.contains(x0)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} training parameters lie outside the prior's support "
                         f"[{lo.tolist()}, {hi.tolist()}] (e.g. x = {x0[outside][0].tolist()})")
    model.fit_standardization(x0, y0, s0)
    model.to(dev)
    if isinstance(train_data, tuple) and dev.type != "cpu":
        train_data = tuple(t.to(dev) for t in train_data)
        val_data = None if val_data is None else tuple(t.to(dev) for t in val_data)
    train_cfg = dataclasses.replace(config.train_for(num_train), seed=seed)
    ckpt = _checkpoint(checkpoint_dir, model, config, sims, seed, fraction, summary)
    t0 = time.perf_counter()
    history = train(model, _loss, train_data, val_data, train_cfg, device=dev, checkpoint_path=ckpt,
                    show_progress=show_progress, val_loss_fn=_val_loss)
    seconds = time.perf_counter() - t0
    num_val = 0 if val_data is None else (val_data[0].shape[0] if isinstance(val_data, tuple) else len(val_data))
    metadata = {"method": "cinn", "seed": seed, "sbi_inn_version": __version__, "device": str(dev),
                "fit_config": config.to_dict(), "train_config": train_cfg.to_dict(),
                "flow_config": model.flow_config.to_dict(), "summary": model.summary_kind,
                "data": {**sims["provenance"], "num_train": int(num_train), "num_val": int(num_val)},
                "train_seconds": seconds, "epochs_run": len(history), "history": history}
    return Posterior(model, param_names=sims["param_names"], obs_shape=obs_shape, is_set_valued=is_set,
                     metadata=_jsonable(metadata))


def _checkpoint(checkpoint_dir, model, config, sims, seed, fraction, summary) -> Path | None:
    """Checkpoint path inside ``checkpoint_dir``; refuses a directory left by a different fit."""
    if checkpoint_dir is None:
        return None
    d = Path(checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    model_cfg = model.config()
    prov = sims["provenance"]
    fingerprint = _jsonable({"model": model_cfg, "fit_config": config.to_dict(), "seed": seed,
                             "validation_fraction": fraction, "source": prov.get("source"), "path": prov.get("path"),
                             "num_simulations": prov.get("num_simulations"), "simulator": prov.get("simulator")})
    meta = d / "fit.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old != fingerprint:
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ValueError(f"checkpoint_dir {str(d)!r} holds a checkpoint of a different fit (differs in "
                             f"{changed}); use a new directory or delete it")
    else:
        meta.write_text(json.dumps(fingerprint, indent=1))
    return d / "checkpoint.pt"


def _fit_inn(sims, config, dev, seed, fraction, show_progress, checkpoint_dir) -> Posterior:
    try:
        from sbi_inn.inn import fit_inn
    except ImportError as err:
        raise NotImplementedError(f"method='inn' needs sbi_inn.inn, which is not available: {err}") from err
    if sims["is_set_valued"]:
        raise ValueError("method='inn' takes vector observations; use method='cinn' for set-valued data")
    if "dataset" in sims:
        raise ValueError("method='inn' trains from memory; this simulation file is larger than "
                         "FitConfig.max_memory_bytes")
    train_data, val_data = _split(sims, fraction, seed)
    lo, hi = (sims["lo"], sims["hi"]) if "lo" in sims else support_bounds(sims["prior"])
    ckpt = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt = Path(checkpoint_dir) / "checkpoint_inn.pt"
    prior = sims.get("prior")
    prior_log_prob = None if prior is None else (lambda x: prior.log_prob(x.cpu()).to(x.device))  # INNConfig.w_kl
    posterior = fit_inn(train_data[0], train_data[1], None if val_data is None else val_data[0],
                        None if val_data is None else val_data[1], prior_bounds=(lo, hi),
                        param_names=sims["param_names"], config=config, device=dev, seed=seed,
                        show_progress=show_progress, checkpoint_path=ckpt, prior_log_prob=prior_log_prob)
    posterior.metadata.update(_jsonable({"seed": seed, "data": sims["provenance"]}))
    return posterior


def _jsonable(obj):
    """Plain JSON types (tensors and numpy scalars converted, tuples to lists)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
