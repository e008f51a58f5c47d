"""``fit_posterior``: from a simulator and a prior (or simulations) to a trained, amortised posterior.

The one entry point users call::

    posterior = fit_posterior(simulate, prior, num_simulations=10_000, method="cinn", seed=0)
    posterior = fit_posterior(data="sims.h5", method="inn")

Both methods take the same path: the simulations come from ``sbi_inn.training_data`` (a pilot batch checks the
simulator and prior, then they are simulated in memory or into a resumable HDF5 file, or read from one, and split by
the seed tree of ``sbi_inn.simulation``); the model is built (the conditional INN of ``sbi_inn.cinn``, thesis ch. 3,
or the bidirectional INN of ``sbi_inn.inn``, thesis ch. 4) and trained by the loop of ``sbi_inn.train`` with one
fingerprinted checkpoint, and wrapped as a :class:`~sbi_inn.posterior.Posterior`. The same ``seed`` gives the same
simulations, split and weights, in memory or from a file; with a ``checkpoint_dir`` an interrupted call resumes and
ends with the weights of an uninterrupted one, and a directory left by another fit is refused. With
``distributed=True`` every process of a ``torchrun`` launch makes the same call and trains one data-parallel shard
(``sbi_inn.ddp``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sbi_inn._version import __version__
from sbi_inn.cinn import ConditionalINN
from sbi_inn.config import DataConfig, FitConfig, as_config
from sbi_inn.fingerprint import checkpoint_path, jsonable
from sbi_inn.inn import INNConfig, build_inn
from sbi_inn.locking import exclusive_lock
from sbi_inn.losses import check_kl, inn_loss
from sbi_inn.posterior import Posterior, resolve_device, training_range
from sbi_inn.simulation import SeedTree, Simulation, check_seed
from sbi_inn.train import train
from sbi_inn.training_data import (
    TrainingData,
    fresh_epochs,
    from_arrays,
    from_file,
    from_simulator,
    num_rows,
    split,
    standardization_sample,
)

METHODS = ("cinn", "inn")
SUMMARIES = ("auto", "mlp", "deepset", "none")


def fit_posterior(simulate: Callable | None = None, prior=None, *, num_simulations: int | None = None,
                  data=None, method: str = "cinn", summary: str | nn.Module = "auto",
                  device: str | torch.device = "auto", seed: int = 0, config=None, data_config=None,
                  show_progress: bool = True, checkpoint_dir: str | Path | None = None,
                  distributed: bool = False) -> Posterior:
    """Simulate, train and return an amortised posterior ``q(x | y)``.

    Args:
        simulate: batched simulator ``x (n, D) -> y (n, M)`` (torch or numpy in/out; set-valued ones return
            ``(y (n, K, M) zero-padded, sizes (n,))``), e.g. a ``simulators.Simulator``. ``None`` with ``data``:
            train on existing simulations.
        prior: a ``torch.distributions.Distribution`` with event shape ``(D,)`` or a list of 1-D ones; ``None``
            takes ``simulate.prior`` (or, with a file only, the support recorded in it).
        num_simulations: number of simulations to run (required with ``simulate``).
        data: an HDF5 simulation file (``sbi_inn.data``): with ``simulate`` it is filled (resumed if interrupted,
            reused if it already holds these simulations), without it is read as is. Without ``simulate`` also
            simulations in memory, ``(x (N, D), y (N, M))`` or ``(x, y (N, K, M), sizes (N,))``.
        method: ``"cinn"`` (conditional INN, maximum likelihood) or ``"inn"`` (bidirectional INN, thesis ch. 4).
        summary: ``"auto"`` (deep set for sets, MLP otherwise), ``"mlp"``, ``"deepset"``, ``"none"`` or an
            ``nn.Module`` (``sbi_inn.cinn.ConditionalINN``; ``method="cinn"`` only).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        seed: the root of the seed tree (``sbi_inn.simulation.SeedTree``): simulations, split, initialisation,
            shuffling and training noise.
        config: the method's settings: a :class:`~sbi_inn.config.FitConfig` (``"cinn"``) or
            :class:`~sbi_inn.inn.INNConfig` (``"inn"``), or a dict of its fields.
        data_config: a :class:`~sbi_inn.config.DataConfig` or dict: chunk and pilot size, validation fraction,
            memory limit, fresh simulations per epoch; the same for both methods.
        show_progress: progress bars for simulation and training.
        checkpoint_dir: directory for the training checkpoint; a call with the same directory resumes, a
            directory of a fit with another configuration, data or seed is refused naming what differs.
        distributed: train data-parallel with ``DistributedDataParallel``: every process of an initialised process
            group (``with sbi_inn.ddp.process_group():`` under ``torchrun``) makes this call with the same
            arguments; ``TrainConfig.batch_size`` is the global batch, ``device="auto"`` is the rank's device, only
            rank 0 locks and writes ``checkpoint_dir``. Every rank returns the same posterior; save it on rank 0.
            Simulating into a file is done first (``simulate_to_hdf5``), then trained on with ``data=PATH``.

    Returns:
        The trained :class:`~sbi_inn.posterior.Posterior`; ``posterior.metadata`` holds the configuration, the data
        provenance and the per-epoch history (also ``posterior.history``).

    Raises:
        TypeError, ValueError: invalid arguments, or a simulator/prior pair that fails the pilot checks.

    Example:
        >>> import torch
        >>> from sbi_inn import BoxUniform
        >>> prior = BoxUniform(torch.zeros(2), torch.ones(2))
        >>> noisy = lambda x, generator: x + 0.1 * torch.randn(x.shape, generator=generator)
        >>> cfg = {"flow": {"num_blocks": 2, "hidden": 16}, "train": {"epochs": 2}}
        >>> post = fit_posterior(noisy, prior, num_simulations=200, config=cfg, show_progress=False)
        >>> post.sample((5,), torch.tensor([0.5, 0.5])).shape
        torch.Size([5, 2])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (isinstance(summary, nn.Module) or summary in SUMMARIES):
        raise ValueError(f"summary must be one of {SUMMARIES} or an nn.Module, got {summary!r}")
    seed = check_seed(seed)
    dconf = as_config(data_config, DataConfig, "data_config")
    if method == "inn":
        if not (isinstance(summary, str) and summary == "auto"):
            raise ValueError("summary networks apply to method='cinn' only; the bidirectional INN ('inn') takes the "
                             "observation vector itself")
        if isinstance(config, FitConfig):
            raise TypeError("config=FitConfig(...) configures method='cinn'; for method='inn' pass an "
                            "sbi_inn.INNConfig or a dict of its fields")
        mconf = as_config(config, INNConfig, "config")
    else:
        if isinstance(config, INNConfig):
            raise TypeError("config=INNConfig(...) configures method='inn'; for method='cinn' pass an "
                            "sbi_inn.FitConfig or a dict of its fields")
        mconf = as_config(config, FitConfig, "config")
    group = _process_group(distributed, simulate, data)
    dev = group.device if group is not None and str(device) == "auto" else resolve_device(device)
    if group is not None and dev != group.device:
        raise ValueError(f"device {str(dev)!r} is not this rank's device {str(group.device)!r} of the "
                         f"{group.backend} process group; use device='auto'")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} is a file, not a directory")  # before any work
    everywhere = (lambda fn, main_only=False: fn()) if group is None else group.agree
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is not None:  # one fit per checkpoint directory at a time, refused before simulating
            def lock():
                Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
                stack.enter_context(exclusive_lock(Path(checkpoint_dir) / "checkpoint.pt", what="checkpoint"))
            everywhere(lock, main_only=True)  # distributed: rank 0 holds the lock for all
        sims = everywhere(lambda: _training_data(simulate, prior, num_simulations, data, dconf, seed,
                                                 show_progress and (group is None or group.is_main)))
        if method == "inn" and sims.is_set_valued:
            raise ValueError("method='inn' takes vector observations; use method='cinn' for set-valued data")
        return _fit(sims, method, mconf, dconf, summary, dev, seed, show_progress, checkpoint_dir, group)


def _process_group(distributed: bool, simulate, data):
    """The ``sbi_inn.ddp.Distributed`` of this rank with ``distributed=True`` (``None`` otherwise)."""
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True or False, got {distributed!r}")
    if not distributed:
        return None
    if simulate is not None and data is not None and not isinstance(data, (tuple, list)):
        raise ValueError("distributed=True with a simulator and data=PATH would have every rank write the file; "
                         "simulate into it first (simulate_to_hdf5 or `sbi-inn simulate`), then train with "
                         "data=PATH, or simulate in memory (no data=)")
    from sbi_inn.ddp import current

    return current()


def _training_data(simulate, prior, num, data, dconf: DataConfig, seed: int, show_progress: bool) -> TrainingData:
    if simulate is None:
        if data is None:
            raise TypeError("fit_posterior needs a simulator (simulate, prior, num_simulations=...) or data=PATH")
        if num is not None:
            raise TypeError("num_simulations is only used together with a simulator; to use part of a file, "
                            "simulate into it with the simulator")
        if dconf.fresh_simulations:
            raise ValueError("DataConfig.fresh_simulations needs a simulator to simulate with")
        if isinstance(data, (tuple, list)):
            if len(data) not in (2, 3):
                raise ValueError(f"data=(x, y) or (x, y, sizes), got a sequence of {len(data)}")
            return from_arrays(data[0], data[1], data[2] if len(data) == 3 else None, prior)
        return from_file(data, prior, dconf)
    if not callable(simulate):
        raise TypeError(f"simulate must be callable (x (n, D) -> y), got {type(simulate).__name__}")
    if isinstance(data, (tuple, list)):
        raise TypeError("data=(x, y) holds simulations already made; pass it without a simulator")
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)):
        raise TypeError(f"num_simulations must be an integer, got {num!r}")
    if num < 10:
        raise ValueError(f"num_simulations must be at least 10, got {num}")
    return from_simulator(Simulation(simulate, prior), int(num), data, dconf, seed, show_progress)


def _fit(sims: TrainingData, method: str, mconf, dconf: DataConfig, summary, dev, seed: int, show_progress: bool,
         checkpoint_dir, group=None) -> Posterior:
    train_part, val_part = split(sims, dconf.validation_fraction, seed)
    num_train = num_rows(train_part)
    x0, y0, s0 = standardization_sample(train_part)
    covered = training_range(y0, s0)  # posteriors warn about observations outside it
    obs_shape = tuple(y0.shape[2:]) if sims.is_set_valued else tuple(y0.shape[1:])
    init_seed = SeedTree(seed).seed("init")
    if method == "cinn":
        model, train_cfg, loss_fn, val_fn = _cinn(mconf, x0.shape[1], obs_shape, sims, summary, num_train, init_seed)
    else:
        model, train_cfg, loss_fn, val_fn = _inn(mconf, x0.shape[1], obs_shape[0], sims, init_seed)
    train_cfg = dataclasses.replace(train_cfg, seed=seed)  # the fit's seed tree seeds the training stream too
    resolved = {**mconf.to_dict(), "flow": model.flow_config.to_dict(), "train": train_cfg.to_dict()}
    outside = ~model.support.contains(x0)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} training parameters lie outside the prior's support "
                         f"[{sims.lo.tolist()}, {sims.hi.tolist()}] (e.g. x = {x0[outside][0].tolist()})")
    model.fit_standardization(x0, y0, s0)
    model.to(dev)
    if dev.type != "cpu":
        train_part = tuple(t.to(dev) for t in train_part) if isinstance(train_part, tuple) else train_part
        val_part = tuple(t.to(dev) for t in val_part) if isinstance(val_part, tuple) else val_part
    train_data = train_part
    if dconf.fresh_simulations:
        stream = fresh_epochs(sims, train_part, num_train, dconf.chunk_size, seed)
        train_data = (lambda epoch: tuple(t.to(dev) for t in stream(epoch))) if dev.type != "cpu" else stream
    summary_name = summary if isinstance(summary, str) else f"custom:{type(summary).__qualname__}"
    fingerprint = jsonable({"method": method, "config": resolved, "data_config": dconf.to_dict(), "seed": seed,
                            "data": sims.fingerprint, "summary": summary_name, "model": model.config()})
    if group is None:
        checkpoint = checkpoint_path(checkpoint_dir, fingerprint)
    else:  # the same fit on every rank; rank 0 alone checks and writes the fingerprint, and all agree on its verdict
        group.check_same(json.dumps(fingerprint, sort_keys=True), "the fit (data, configuration, seed)")
        checkpoint = group.agree(lambda: checkpoint_path(checkpoint_dir, fingerprint), main_only=True)
        checkpoint = None if checkpoint_dir is None else Path(checkpoint_dir) / "checkpoint.pt"
    t0 = time.perf_counter()
    history = train(model, loss_fn, train_data, val_part, train_cfg, device=dev, checkpoint_path=checkpoint,
                    show_progress=show_progress and (group is None or group.is_main), val_loss_fn=val_fn,
                    distributed=group)
    metadata = {"method": method, "seed": seed, "sbi_inn_version": __version__, "device": str(dev),
                "config": resolved, "data_config": dconf.to_dict(), "train_config": train_cfg.to_dict(),
                "flow_config": model.flow_config.to_dict(), "summary": getattr(model, "summary_kind", None),
                "data": {**sims.provenance, "num_train": num_train, "num_val": num_rows(val_part),
                         "fresh_simulations_per_epoch": dconf.fresh_simulations},
                "train_seconds": time.perf_counter() - t0, "epochs_run": len(history), "history": history,
                "training_range": covered}
    if group is not None:
        metadata["distributed"] = {"world_size": group.world_size, "backend": group.backend}
    return Posterior(model, param_names=sims.param_names, obs_shape=obs_shape, is_set_valued=sims.is_set_valued,
                     metadata=jsonable(metadata))


def _cinn(cfg: FitConfig, param_dim: int, obs_shape, sims: TrainingData, summary, num_train: int, init_seed: int):
    """The conditional INN, its optimisation (seeded by the fit), and its losses: the NLL (thesis eq. 3.8) for
    training, per row for validation (so ``TrainConfig.val_trim`` can leave out the worst rows)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = ConditionalINN(param_dim, obs_shape, support_low=sims.lo, support_high=sims.hi,
                               is_set_valued=sims.is_set_valued, flow=cfg.flow_for(param_dim, num_train),
                               summary=summary, summary_dim=cfg.summary_dim, summary_hidden=cfg.summary_hidden,
                               summary_layers=cfg.summary_layers, summary_activation=cfg.summary_activation,
                               summary_pool=cfg.summary_pool, spline_bins=cfg.spline_bins,
                               precondition=cfg.precondition, interval_map=cfg.interval_map)
    return (model, cfg.train_for(num_train), lambda m, batch, step: m.loss(batch),
            lambda m, batch, step: (m.nll_rows(batch), {}))


def _inn(cfg: INNConfig, param_dim: int, obs_dim: int, sims: TrainingData, init_seed: int):
    """The bidirectional INN, its optimisation and its losses (thesis sec. 4.1.2; ``L_kl`` gets the prior)."""
    model = build_inn(param_dim, obs_dim, cfg, support_low=sims.lo, support_high=sims.hi, seed=init_seed)
    prior = sims.prior
    prior_log_prob = None if prior is None else (lambda x: prior.log_prob(x.cpu()).to(x.device))
    if cfg.w_kl > 0:
        check_kl(model, prior_log_prob)
    return (model, cfg.train, inn_loss(cfg, prior_log_prob=prior_log_prob),
            inn_loss(cfg, ramp=False, prior_log_prob=prior_log_prob))
