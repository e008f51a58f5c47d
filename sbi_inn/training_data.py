"""The simulations ``fit_posterior`` trains on: made (in memory or into an HDF5 file), read, split and refreshed.

Whatever their source, simulations reach training as :class:`TrainingData` and are split by :func:`split` into the
same train and validation rows whether they sit in memory or are streamed from disk (the ``split`` stream of the seed
tree, ``sbi_inn.simulation``). With the same seed and :class:`~sbi_inn.config.DataConfig`, simulating in memory and
simulating into a file give the same pairs, so ``fit_posterior(sim, prior, n, seed=s)`` and the same call with
``data=PATH`` train on the same simulations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sbi_inn.checks import real_tensor
from sbi_inn.config import DataConfig
from sbi_inn.data import HDF5Dataset, content_hash, hdf5_info, load_hdf5, simulate_to_hdf5
from sbi_inn.priors import as_prior, describe_prior, support_bounds
from sbi_inn.simulation import SeedTree, Simulation, drop_invalid, pilot, simulate_memory

STANDARDIZATION_ROWS = 100_000  # training rows the standardisation is fitted on


@dataclass
class TrainingData:
    """Simulated pairs and what is known about them.

    ``x (N, D)``, ``y (N, M)`` or sets ``(N, K, M)`` with ``sizes (N,)`` in memory, or, for a file too large for
    ``DataConfig.max_memory_bytes``, ``path`` with ``num_rows`` rows streamed by ``HDF5Dataset``. ``lo, hi (D,)`` bound
    the prior's support; ``simulation`` is set when a simulator is at hand (for fresh simulations per epoch).
    """

    prior: torch.distributions.Distribution | None
    lo: Tensor
    hi: Tensor
    param_names: list[str]
    is_set_valued: bool
    provenance: dict
    x: Tensor | None = None
    y: Tensor | None = None
    sizes: Tensor | None = None
    path: Path | None = None
    num_rows: int = 0
    simulation: Simulation | None = None
    fingerprint: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.x is not None:
            self.num_rows = int(self.x.shape[0])


def from_simulator(sim: Simulation, num: int, path, config: DataConfig, seed: int, show_progress: bool
                   ) -> TrainingData:
    """Check the simulator on a pilot batch, then simulate ``num`` pairs in memory (``path=None``) or into the HDF5
    file ``path`` (resumed if interrupted, reused if it already holds them); invalid rows are dropped and counted."""
    lo, hi = support_bounds(sim.prior)  # a prior without a readable support fails here, before any simulation
    pilot(sim, config.pilot_size, seed, config.max_invalid_fraction)
    origin = {"simulator": sim.name, "simulator_config": sim.config, "prior": describe_prior(sim.prior),
              "num_simulations": num, "seed": seed, "chunk_size": config.chunk_size}
    if path is not None:
        info = simulate_to_hdf5(sim, None, num, path, seed=seed, chunk_size=config.chunk_size,
                                show_progress=show_progress)
        data = from_file(path, sim.prior, config, max_rows=min(info["num_rows"], num))
        data.provenance.update({k: v for k, v in origin.items() if k not in data.provenance})
        data.simulation = sim
        return data
    chunk = simulate_memory(sim, num, chunk_size=config.chunk_size, seeds=SeedTree(seed).chunk_seeds,
                            show_progress=show_progress)
    n_bad = chunk.num_invalid
    chunk = drop_invalid(chunk, stacklevel=5)  # the warning points at the fit_posterior call
    return TrainingData(sim.prior, lo, hi, sim.param_names, chunk.sizes is not None,
                        {"source": "memory", "num_invalid": n_bad, **origin}, chunk.x, chunk.y, chunk.sizes,
                        simulation=sim, fingerprint={"source": "memory", **origin,
                                                     "sha256": _tensor_hash(chunk.x, chunk.y, chunk.sizes)})


def from_file(path, prior, config: DataConfig, max_rows: int | None = None) -> TrainingData:
    """Read a simulation file: into memory when it fits ``config.max_memory_bytes``, else for streaming."""
    path = Path(path)
    info = hdf5_info(path)
    rows = info["num_rows"] if max_rows is None else min(info["num_rows"], max_rows)
    if rows < 2:
        raise ValueError(f"{path} holds {rows} usable simulations; need at least 2")
    d = len(info["param_names"])
    if prior is not None:
        prior = as_prior(prior)
        if int(prior.event_shape[0]) != d:
            raise ValueError(f"the prior has {int(prior.event_shape[0])} dimensions but {path} holds {d} parameters")
        lo, hi = support_bounds(prior)
    else:
        lo = _bounds(info["prior"].get("support_low"), -math.inf, d)
        hi = _bounds(info["prior"].get("support_high"), math.inf, d)
    provenance = {"source": "hdf5", "path": str(path.resolve()), "num_rows_in_file": info["num_rows"],
                  "num_invalid": info["num_invalid"], "simulator": info["simulator"],
                  "simulator_config": info["simulator_config"], "prior": info["prior"], "file_seed": info["seed"]}
    data = TrainingData(prior, lo, hi, info["param_names"], info["is_set_valued"], provenance, num_rows=rows,
                        fingerprint={"source": "hdf5", "path": str(path.resolve()), "rows": rows,
                                     "sha256": content_hash(path, max_rows=rows)})
    k = info.get("max_set_size") or 1
    if rows * 4 * (d + k * len(info["obs_names"])) <= config.max_memory_bytes:
        loaded = load_hdf5(path, max_rows=rows)
        data.x, data.y, data.sizes = loaded["x"], loaded["y"], loaded.get("sizes")
    else:
        data.path = path
    return data


def from_arrays(x, y, sizes, prior) -> TrainingData:
    """Simulations a user already has: ``x (N, D)``, ``y (N, M)`` or sets ``(N, K, M)`` with ``sizes (N,)``."""
    x = real_tensor("data=(x, y): x", x).to(torch.float32)
    y = real_tensor("data=(x, y): y", y).to(torch.float32)
    if x.ndim != 2 or y.ndim not in (2, 3) or x.shape[0] != y.shape[0] or (sizes is None) != (y.ndim == 2):
        raise ValueError(f"data=(x, y) needs x (N, D) and y (N, M), or (x, y (N, K, M), sizes (N,)) for sets, with "
                         f"equal N; got x {tuple(x.shape)}, y {tuple(y.shape)}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("data=(x, y) contains NaN or inf; drop those rows first")
    sizes = None if sizes is None else torch.as_tensor(sizes).to(torch.int64)
    prior = None if prior is None else as_prior(prior)
    lo, hi = support_bounds(prior) if prior is not None else (torch.full((x.shape[1],), -math.inf),
                                                               torch.full((x.shape[1],), math.inf))
    digest = _tensor_hash(x, y, sizes)
    return TrainingData(prior, lo, hi, [f"x{i}" for i in range(x.shape[1])], sizes is not None,
                        {"source": "arrays", "num_simulations": int(x.shape[0]), "num_invalid": 0,
                         "prior": None if prior is None else describe_prior(prior)}, x, y, sizes,
                        fingerprint={"source": "arrays", "rows": int(x.shape[0]), "sha256": digest})


def _tensor_hash(*tensors) -> str:
    import hashlib

    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _bounds(values, fill: float, d: int) -> Tensor:
    if values is None:
        return torch.full((d,), fill)
    return torch.tensor([fill if v is None else float(v) for v in values], dtype=torch.float32)


# -- split, standardisation sample, fresh simulations ---------------------------------------------------------------
def split_rows(num_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, validation)`` row indices: a permutation from the ``split`` stream of ``SeedTree(seed)``, the
    first ``round(fraction * num_rows)`` rows (at least 1 when ``fraction > 0``, at most ``num_rows - 1``)
    validating.

    Example:
        >>> train, val = split_rows(10, 0.2, seed=0)
        >>> len(train), len(val), sorted(train.tolist() + val.tolist()) == list(range(10))
        (8, 2, True)
        >>> bool((split_rows(10, 0.2, seed=0)[1] == val).all())  # the same seed, the same split
        True
        >>> len(split_rows(10, 0.0, seed=0)[1]), len(split_rows(10, 0.01, seed=0)[1])
        (0, 1)
    """
    perm = SeedTree(seed).numpy("split").permutation(num_rows)
    n_val = min(max(int(round(fraction * num_rows)), 1), num_rows - 1) if fraction > 0 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split(data: TrainingData, fraction: float, seed: int):
    """``(train, val)``: tuples ``(x, y[, sizes])`` of tensors in memory, ``HDF5Dataset``s when streamed (``val``
    is ``None`` for ``fraction == 0``); the same rows either way."""
    train_idx, val_idx = split_rows(data.num_rows, fraction, seed)
    if data.path is not None:
        train = HDF5Dataset(data.path, indices=train_idx, max_rows=data.num_rows)
        val = HDF5Dataset(data.path, indices=val_idx, max_rows=data.num_rows) if len(val_idx) else None
        return train, val
    cols = (data.x, data.y) if data.sizes is None else (data.x, data.y, data.sizes)
    train = tuple(t[torch.from_numpy(train_idx)] for t in cols)
    val = tuple(t[torch.from_numpy(val_idx)] for t in cols) if len(val_idx) else None
    return train, val


def num_rows(part) -> int:
    return 0 if part is None else (part[0].shape[0] if isinstance(part, tuple) else len(part))


def standardization_sample(train, max_rows: int = STANDARDIZATION_ROWS):
    """``(x, y, sizes or None)``: the first ``max_rows`` training rows, to fit the models' standardisation."""
    if isinstance(train, tuple):
        return train[0][:max_rows], train[1][:max_rows], (train[2][:max_rows] if len(train) > 2 else None)
    batch = train.get_batch(list(range(min(len(train), max_rows))))
    return batch[0], batch[1], (batch[2].sum(-1) if len(batch) > 2 else None)


def fresh_epochs(data: TrainingData, first, num: int, chunk_size: int, seed: int):
    """``epoch -> training tuple``: ``first`` (the training split) for epoch 0, then ``num`` new simulations of the
    ``fresh`` stream of ``SeedTree(seed)`` per epoch, invalid rows dropped; deterministic in the epoch."""
    if data.simulation is None:
        raise ValueError("DataConfig.fresh_simulations needs a simulator: fit_posterior(simulate, prior, "
                         "num_simulations=..., data_config={'fresh_simulations': True})")
    tree = SeedTree(seed)

    def epoch_data(epoch: int):
        if epoch == 0:
            return first
        chunk = simulate_memory(data.simulation, num, chunk_size=chunk_size,
                                seeds=lambda i: tree.chunk_seeds(i, "fresh", epoch))
        if chunk.num_invalid == len(chunk):
            raise ValueError(f"all {num} fresh simulations of epoch {epoch} returned NaN or inf")
        chunk = chunk.rows(chunk.valid)
        return (chunk.x, chunk.y) if chunk.sizes is None else (chunk.x, chunk.y, chunk.sizes)

    return epoch_data
