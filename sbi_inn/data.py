"""Simulation data on disk: resumable HDF5 simulation runs and a streaming ``torch`` Dataset.

The file layout (format ``sbi_inn.simulations``, version 1), one row per kept simulation:

* ``x`` ``(N, D)`` float32 parameters; ``y`` ``(N, M)`` float32 observations.
* Set-valued simulators store sets ragged, not padded: ``y`` is ``(R, M)`` with the rows of every set one after
  another, ``sizes`` ``(N,)`` int64 the set sizes and ``offsets`` ``(N + 1,)`` int64 where set ``i`` is
  ``y[offsets[i]:offsets[i + 1]]``. Readers pad to ``(K_max, M)`` with a boolean mask.
* ``chunk_stats`` ``(C, 4)`` int64: per simulation chunk ``(simulated, rows kept, invalid, set rows)``.
* The attribute ``chunks_done`` is the commit point: it is written and flushed only after a chunk's rows are
  completely written, and everything readers report (row counts, invalid counts) is derived from
  ``chunk_stats[:chunks_done]``. Rows past the last committed chunk are never read and are truncated on resume.

Chunk ``i`` always draws ``min(chunk_size, remaining)`` parameters with seeds derived from ``(seed, i)`` only, so
a run that is interrupted and resumed writes the same bytes as an uninterrupted run, and a file of ``N``
simulations extended to ``N' > N`` equals a fresh run of ``N'`` (a last, partial chunk is simulated again at full
size). HDF5 is not journaled: the datasets are flushed before each commit, so an interruption between commits
loses at most the chunk in progress.

Example:
    >>> import tempfile, os, torch
    >>> from torch.distributions import Independent, Normal
    >>> prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "sq.h5")
    >>> simulate_to_hdf5(lambda x: x**2, prior, 100, path, chunk_size=40, show_progress=False)["num_rows"]
    100
    >>> ds = HDF5Dataset(path, split="train")
    >>> len(ds), ds[0][0].shape, ds[0][1].shape
    (80, torch.Size([2]), torch.Size([2]))

References:
    The resumable, attribute-documented HDF5 backend follows ``emcee.backends.HDFBackend``.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from sbi_inn._version import __version__
from sbi_inn.locking import OutputLockedError, exclusive_lock
from sbi_inn.priors import describe_prior
from sbi_inn.simulation import Chunk, SeedTree, Simulation, simulate_chunks

FORMAT = "sbi_inn.simulations"
FORMAT_VERSION = 1
# lzf (bundled with h5py) decompresses faster than gzip, and float data compresses little either way
# (benchmarks/results/design_notes.md)
_COMPRESSION = {"compression": "lzf", "shuffle": True}
_CHUNK_BYTES = 8 * 1024  # target size of one HDF5 chunk: small chunks keep random row reads cheap
_CACHE_BYTES = 32 * 1024**2  # HDF5 chunk cache per open file when reading
_STATS = ("simulated", "rows", "invalid", "set_rows")
_ON_INVALID = ("drop", "raise", "keep")
_ALL_INVALID_MIN_ROWS = 8  # a chunk of at least this many simulations with none valid means a broken simulator


# -- writing ------------------------------------------------------------------------------------------------------
def simulate_to_hdf5(
    simulate: Callable,
    prior: torch.distributions.Distribution | None,
    num_simulations: int,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    chunk_size: int = 10_000,
    resume: bool = True,
    on_invalid: str = "drop",
    simulator_name: str | None = None,
    simulator_config: dict[str, Any] | None = None,
    show_progress: bool = True,
    client=None,
) -> dict[str, Any]:
    """Draw parameters from ``prior``, simulate, and append the pairs to an HDF5 file in resumable chunks.

    Args:
        simulate: a ``simulators.Simulator`` (its name, configuration, names and set-valuedness are recorded) or
            any callable ``x (n, D) -> y (n, M)`` taking and returning tensors or numpy arrays; set-valued ones
            return ``(y (n, K, M), sizes (n,))``. A callable with a ``generator`` keyword gets a seeded
            ``torch.Generator``; otherwise it runs under seeded global torch and numpy RNGs (restored after).
        prior: distribution with event shape ``(D,)``; ``None`` takes ``simulate.prior``.
        num_simulations: number of simulations (parameter draws) the file should hold; a file holding at least
            that many is returned as is, a smaller one is extended.
        path: HDF5 file to write; missing directories are created.
        seed: non-negative integer; chunk ``i`` draws from the ``simulation`` stream of ``SeedTree(seed)``
            (``sbi_inn.simulation``), as ``fit_posterior`` does in memory.
        chunk_size: simulations per chunk (the unit of resumption and of per-chunk seeding).
        resume: continue a matching existing file; ``False`` replaces it (once the first chunk is done).
        on_invalid: rows with NaN/inf observations are ``"drop"``-ped and counted (a warning reports the count),
            ``"raise"`` an error, or ``"keep"``-ed.
        simulator_name, simulator_config: recorded metadata, overriding what ``simulate`` provides.
        show_progress: show a tqdm progress bar.
        client: a ``distributed.Client`` (``sbi_inn.distributed.client_for``; needs ``sbi_inn[distributed]``) to
            simulate the chunks on Dask workers; ``None`` simulates here. This process stays the only writer: chunks
            come back and are appended in chunk order (early ones wait, at most twice the worker threads in flight),
            so the file is bit-identical to a single-process run with the same ``seed`` and ``chunk_size``. The
            simulator must pickle and be importable on the workers (a module-level function or a class); a chunk
            whose worker dies is retried, and a chunk that raises is reported (``RemoteTaskError`` naming the chunk,
            with the worker traceback) after the chunks before it are committed.

    Returns:
        ``{"path", "num_simulations", "num_rows", "num_invalid", "num_new", "wall_time_s",
        "simulations_per_second", "completed"}`` where ``num_simulations``, ``num_rows`` and ``num_invalid``
        describe the whole file and ``num_new`` the simulations run by this call.

    Raises:
        ValueError: invalid arguments, an existing file written with different settings (the message names the
            field), a malformed simulator output, invalid rows with ``on_invalid="raise"``, or a chunk whose
            simulations are all invalid.
        sbi_inn.locking.OutputLockedError: another process is writing ``path`` (each writer holds an OS lock on
            ``<path>.lock`` while it runs; see :mod:`sbi_inn.locking`).
        sbi_inn.distributed.RemoteTaskError: with a ``client``, a chunk failed on a worker (also a ``ValueError`` or
            ``TypeError`` when it raised one).
        ImportError: a ``client`` without Dask installed (the message names the extra).
    """
    start_time = time.perf_counter()
    if client is not None:
        from sbi_inn.distributed import require_distributed

        require_distributed("simulate_to_hdf5(client=...)")
        if not callable(getattr(client, "submit", None)):
            raise TypeError(f"client must be a distributed.Client (see sbi_inn.distributed.client_for), got "
                            f"{type(client).__name__}")
    num_simulations = _check_int("num_simulations", num_simulations, 1)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    seed = _check_int("seed", seed, 0)
    if on_invalid not in _ON_INVALID:
        raise ValueError(f"on_invalid must be one of {_ON_INVALID}, got {on_invalid!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name such as {str(path / 'sims.h5')!r}")
    path.parent.mkdir(parents=True, exist_ok=True)

    if isinstance(simulate, Simulation):  # already adapted (fit_posterior): its prior and metadata are used
        if prior is not None or simulator_name is not None or simulator_config is not None:
            raise TypeError("simulate_to_hdf5: a Simulation carries its prior, name and configuration")
        sim = simulate
    else:
        sim = Simulation(simulate, prior, name=simulator_name, config=simulator_config)
    with exclusive_lock(path, what="simulation file"):  # a second writer of this path is refused here
        writer = _Writer(path, _header(sim, seed, chunk_size), sim)
        if path.exists() and resume:
            writer.open_existing()
        tmp_path = path.with_name(path.name + ".tmp")
        new = new_invalid = 0
        chunks = None
        try:
            writer.rollback_partial_tail(num_simulations)
            run = simulate_chunks
            if client is not None:
                from sbi_inn.distributed import simulate_chunks_on

                run = functools.partial(simulate_chunks_on, client)
            chunks = run(sim, num_simulations, chunk_size=chunk_size, seeds=SeedTree(seed).chunk_seeds,
                         first_chunk=writer.chunks_done, show_progress=show_progress, desc=path.name,
                         initial=min(writer.num_simulated, num_simulations))
            for i, chunk in enumerate(chunks, start=writer.chunks_done):
                rows = _check_invalid(chunk, i, on_invalid, writer.rows == 0)
                if writer.file is None:
                    writer.create(tmp_path, chunk)
                writer.append(rows, len(chunk), chunk.num_invalid, num_requested=num_simulations)
                if writer.created_at_tmp:
                    writer.close()
                    os.replace(tmp_path, path)
                    writer.created_at_tmp = False
                    writer.open_existing()
                new += len(chunk)
                new_invalid += chunk.num_invalid
            writer.finish(num_simulations)
        finally:
            if chunks is not None:
                chunks.close()  # stops the progress bar and cancels the chunks still on workers
            writer.close()
            if writer.created_at_tmp and tmp_path.exists():
                tmp_path.unlink()
    if new_invalid and on_invalid == "drop":
        warnings.warn(f"{new_invalid} of {new} simulations returned NaN or inf and were dropped "
                      f"({writer.num_invalid} in {str(path)!r} in total)", RuntimeWarning, stacklevel=2)
    wall = time.perf_counter() - start_time
    return {"path": str(path), "num_simulations": writer.num_simulated, "num_rows": writer.rows,
            "num_invalid": writer.num_invalid, "num_new": new, "wall_time_s": wall,
            "simulations_per_second": new / wall if new else 0.0,
            "completed": writer.num_simulated >= num_simulations}


def _check_invalid(chunk: Chunk, index: int, on_invalid: str, nothing_valid_yet: bool) -> Chunk:
    """Apply ``on_invalid`` to chunk ``index``; return the rows to write."""
    n, n_bad = len(chunk), chunk.num_invalid
    if n_bad == 0:
        return chunk
    if on_invalid == "raise":
        raise ValueError(f"{n_bad} of {n} simulations in chunk {index} returned NaN or inf, e.g. for "
                         f"parameters x = {chunk.example()}; use on_invalid='drop' to skip such rows")
    if n_bad == n and (n >= _ALL_INVALID_MIN_ROWS or nothing_valid_yet):
        raise ValueError(f"all {n} simulations in chunk {index} returned NaN or inf (e.g. for x = "
                         f"{chunk.example()}); the simulator looks broken")
    return chunk if on_invalid == "keep" else chunk.rows(chunk.valid)


def _arrays(chunk: Chunk) -> dict[str, np.ndarray]:
    """The rows of ``chunk`` as stored: sets ragged (members of all sets one after another) with their sizes."""
    x, y = chunk.x.cpu(), chunk.y.cpu()
    if chunk.sizes is None:
        return {"x": x.numpy(), "y": y.numpy()}
    sizes = chunk.sizes.cpu()
    mask = torch.arange(y.shape[1])[None, :] < sizes[:, None]
    return {"x": x.numpy(), "y": y[mask].reshape(-1, y.shape[-1]).numpy(), "sizes": sizes.numpy()}


def _header(sim: Simulation, seed: int, chunk_size: int) -> dict[str, Any]:
    return {"simulator": sim.name, "simulator_config": sim.config_json, "seed": seed, "chunk_size": chunk_size,
            "param_dim": sim.param_dim, "prior": json.dumps(describe_prior(sim.prior), sort_keys=True)}


class _Writer:
    """The open output file and its committed state."""

    def __init__(self, path: Path, header: dict[str, Any], sim: Simulation):
        self.path, self.header, self.sim = path, header, sim
        self.file: h5py.File | None = None
        self.created_at_tmp = False
        self.stats = np.zeros((0, len(_STATS)), dtype=np.int64)

    @property
    def chunks_done(self) -> int:
        return len(self.stats)

    @property
    def num_simulated(self) -> int:
        return int(self.stats[:, 0].sum())

    @property
    def rows(self) -> int:
        return int(self.stats[:, 1].sum())

    @property
    def num_invalid(self) -> int:
        return int(self.stats[:, 2].sum())

    def open_existing(self) -> None:
        try:
            f = h5py.File(self.path, "r+")
        except OSError as err:
            if "lock" in str(err).lower():  # HDF5's own file lock: another process has the file open
                raise OutputLockedError(f"{str(self.path)!r} is open in another process (HDF5: {err}); close it "
                                        "there or write to another path") from None
            raise ValueError(f"cannot open {str(self.path)!r} as an HDF5 file ({err}); choose another path or pass "
                             "resume=False to overwrite it") from None
        self.file = f
        try:
            self._check_header(f)
            self.stats = _committed_stats(f)
            self._truncate()
        except BaseException:
            self.close()
            raise

    def _check_header(self, f: h5py.File) -> None:
        hint = f"; use another path or resume=False to overwrite {str(self.path)!r}"
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{str(self.path)!r} is not an sbi_inn simulation file{hint}")
        fields = dict(self.header)
        if self.sim.is_set_valued is not None:
            fields["is_set_valued"] = self.sim.is_set_valued
        if self.sim.obs_names:
            fields["obs_dim"] = len(self.sim.obs_names)
        for key, want in fields.items():
            have = _attr(f, key)
            if key in ("simulator_config", "prior"):
                have, want = json.loads(have), json.loads(want)
            if have != want:
                raise ValueError(f"{str(self.path)!r} was written with a different {key}: file has {have!r}, this "
                                 f"call has {want!r}{hint}")
        if self.sim.is_set_valued is None:  # a plain callable: the file tells what it returned
            self.sim.is_set_valued = bool(f.attrs["is_set_valued"])
            self.sim.obs_names = json.loads(f.attrs["obs_names"])
            self.sim.expectation_hint = f" as recorded in the file (different obs_dim or set-valuedness){hint}"

    def _truncate(self) -> None:
        """Drop rows past the last committed chunk (a chunk interrupted while being written)."""
        f, rows = self.file, self.rows
        f["x"].resize(rows, axis=0)
        f["chunk_stats"].resize(self.chunks_done, axis=0)
        if "sizes" in f:
            f["sizes"].resize(rows, axis=0)
            f["offsets"].resize(rows + 1, axis=0)
            f["y"].resize(int(self.stats[:, 3].sum()), axis=0)
        else:
            f["y"].resize(rows, axis=0)
        f.flush()

    def rollback_partial_tail(self, num_simulations: int) -> None:
        """A last chunk smaller than chunk_size is simulated again at full size when the file grows."""
        if self.chunks_done and self.num_simulated < num_simulations:
            if self.stats[-1, 0] < self.header["chunk_size"]:
                self.stats = self.stats[:-1]
                self.file.attrs["completed"] = False
                self.file.attrs["chunks_done"] = self.chunks_done
                self.file.flush()
                self._truncate()

    def create(self, tmp_path: Path, chunk: Chunk) -> None:
        f = self.file = h5py.File(tmp_path, "w")
        self.created_at_tmp = True
        sim, d, m = self.sim, self.sim.param_dim, chunk.y.shape[-1]
        attrs = dict(self.header)
        attrs.update(format=FORMAT, format_version=FORMAT_VERSION, sbi_inn_version=__version__,
                     created=_now(), param_names=json.dumps(sim.param_names), obs_names=json.dumps(sim.obs_names),
                     obs_dim=m, is_set_valued=bool(sim.is_set_valued), num_requested=0, num_simulated=0,
                     num_rows=0, num_invalid=0, chunks_done=0, completed=False)
        f.attrs.update(attrs)
        _new_dataset(f, "x", (d,), np.float32)
        _new_dataset(f, "y", (m,), np.float32)
        _new_dataset(f, "chunk_stats", (len(_STATS),), np.int64, chunk_rows=256, compress=False)
        f["chunk_stats"].attrs["columns"] = json.dumps(_STATS)
        if sim.is_set_valued:
            _new_dataset(f, "sizes", (), np.int64)
            _new_dataset(f, "offsets", (), np.int64)
            f["offsets"].resize(1, axis=0)
            f["offsets"][0] = 0
        f.flush()

    def append(self, chunk: Chunk, num_simulated: int, num_invalid: int, num_requested: int) -> None:
        """Write the rows of ``chunk`` (``num_simulated`` simulations, ``num_invalid`` of them invalid) and commit."""
        f, arrays = self.file, _arrays(chunk)
        rows, k = self.rows, len(arrays["x"])
        _extend(f["x"], rows, arrays["x"])
        if "sizes" in arrays:
            set_rows = int(self.stats[:, 3].sum())
            _extend(f["y"], set_rows, arrays["y"])
            _extend(f["sizes"], rows, arrays["sizes"])
            _extend(f["offsets"], rows + 1, set_rows + np.cumsum(arrays["sizes"]))
            n_set_rows = len(arrays["y"])
        else:
            _extend(f["y"], rows, arrays["y"])
            n_set_rows = 0
        stat = np.array([[num_simulated, k, num_invalid, n_set_rows]], dtype=np.int64)
        _extend(f["chunk_stats"], self.chunks_done, stat)
        f.flush()  # the rows are on disk before the commit below
        self.stats = np.concatenate([self.stats, stat])
        f.attrs["chunks_done"] = self.chunks_done  # the commit point
        f.flush()
        f.attrs.update(num_simulated=self.num_simulated, num_rows=self.rows, num_invalid=self.num_invalid,
                       num_requested=max(num_requested, int(f.attrs["num_requested"])), updated=_now())
        if self.sim.is_set_valued:
            f.attrs["max_set_size"] = max(int(f.attrs.get("max_set_size", 0)), int(arrays["sizes"].max(initial=0)))

    def finish(self, num_simulations: int) -> None:
        if self.file is None:
            return
        a = self.file.attrs
        a["num_requested"] = max(num_simulations, int(a["num_requested"]))
        a["completed"] = self.num_simulated >= int(a["num_requested"])
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _new_dataset(f, name, tail, dtype, chunk_rows=None, compress=True):
    width = int(np.prod(tail)) if tail else 1
    if chunk_rows is None:
        chunk_rows = int(np.clip(_CHUNK_BYTES // (width * np.dtype(dtype).itemsize), 64, 65536))
    f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype, chunks=(chunk_rows, *tail),
                     **(_COMPRESSION if compress else {}))


def _extend(ds, start: int, values: np.ndarray) -> None:
    ds.resize(start + len(values), axis=0)
    if len(values):
        ds[start:start + len(values)] = values


def _committed_stats(f: h5py.File) -> np.ndarray:
    """``chunk_stats[:chunks_done]`` ``(C, 4)``, checked against what the file holds: a file whose attributes or
    statistics claim more rows than its datasets have (damaged or crafted) is refused before anything is sized
    by those counts."""
    done = f.attrs.get("chunks_done", 0)
    done = done.item() if isinstance(done, np.generic) else done
    if isinstance(done, bool) or not isinstance(done, int) or done < 0:
        raise ValueError(f"{f.filename!r}: attribute 'chunks_done' must be an integer >= 0, got {done!r}")
    stats_ds = f.get("chunk_stats")
    held = stats_ds.shape[0] if isinstance(stats_ds, h5py.Dataset) else 0
    if done > held:
        raise ValueError(f"{f.filename!r} records {done} finished chunks but holds statistics for {held}; "
                         "the file is damaged: use another path or resume=False")
    stats = stats_ds[:done].astype(np.int64) if done else np.zeros((0, len(_STATS)), np.int64)
    if (stats < 0).any():
        raise ValueError(f"{f.filename!r}: negative counts in 'chunk_stats'; the file is damaged")
    rows, set_rows = int(stats[:, 1].sum()), int(stats[:, 3].sum())
    claims = {"x": rows, "y": set_rows if "sizes" in f else rows}
    if "sizes" in f:
        claims.update(sizes=rows, offsets=rows + 1)
    for name, need in claims.items():
        have = f[name].shape[0] if isinstance(f.get(name), h5py.Dataset) else 0
        if need > have:
            raise ValueError(f"{f.filename!r}: its chunk statistics claim {need} rows of {name!r}, the dataset holds "
                             f"{have}; the file is damaged or not written by sbi_inn")
    return stats


def _check_sets(path, sizes: np.ndarray, offsets: np.ndarray, set_rows: int) -> None:
    """``offsets`` must start at 0 and step by ``sizes`` (non-negative) up to ``set_rows``: then every set read
    stays inside ``y``."""
    if (len(offsets) != len(sizes) + 1 or offsets[0] != 0 or (sizes < 0).any()
            or not np.array_equal(np.diff(offsets), sizes) or offsets[-1] > set_rows):
        raise ValueError(f"{str(path)!r}: the datasets 'sizes' and 'offsets' disagree (or point past 'y'); the file is "
                         "damaged or not written by sbi_inn")


# -- reading ------------------------------------------------------------------------------------------------------
class HDF5Dataset(torch.utils.data.Dataset):
    """Stream ``(x, y)`` pairs (sets: ``(x, y_padded (K_max, M), mask (K_max,))``) from a simulation file.

    The file is opened lazily in each process and never pickled, so the dataset works with
    ``DataLoader(num_workers > 0)``. Only the committed rows (see module docstring) are visible. Batched access
    (``__getitems__``, used by ``DataLoader``, and :meth:`get_batch`) reads all rows of a batch in one HDF5 call.

    Args:
        path: file written by :func:`simulate_to_hdf5`.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        fractions: ``(train, val, test)`` fractions, non-negative, summing to 1.
        seed: seed of the permutation of row indices that defines the splits; the same ``(seed, fractions)`` and
            row count give the same, disjoint splits (extending the file changes them).
        max_rows: use only the first ``max_rows`` committed rows (all when ``None``).
        indices: explicit file-row indices (sorted, unique) instead of ``split`` and ``fractions``; this is how
            ``fit_posterior`` streams its train / validation split, the same rows it would use in memory.

    Example:
        >>> import tempfile
        >>> from torch.distributions import Independent, Normal
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "sims.h5")
        >>> prior = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
        >>> _ = simulate_to_hdf5(lambda x: x[:, :2] ** 2, prior, 200, path, show_progress=False)
        >>> train = HDF5Dataset(path, split="train")  # 80 % of the 200 rows
        >>> loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, num_workers=0,  # or > 0
        ...                                      generator=torch.Generator().manual_seed(0))
        >>> x, y = next(iter(loader))
        >>> len(train), tuple(x.shape), tuple(y.shape)
        (160, (64, 3), (64, 2))
        >>> train.close(); tmp.cleanup()
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", *,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, max_rows: int | None = None,
                 indices: Sequence[int] | None = None):
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
        fractions = _check_fractions(fractions)
        seed = _check_int("seed", seed, 0)
        self.path, self.split, self.fractions, self.seed = str(path), split, fractions, seed
        with _open_read(self.path) as f:
            self.metadata = _metadata(f)
            stats = _committed_stats(f)
            self.num_file_rows = int(stats[:, 1].sum())
            if max_rows is not None:
                self.num_file_rows = min(self.num_file_rows, _check_int("max_rows", max_rows, 1))
            self._sizes = self._offsets = None
            if self.metadata["is_set_valued"]:
                self._sizes = f["sizes"][: self.num_file_rows].astype(np.int64)
                self._offsets = f["offsets"][: self.num_file_rows + 1].astype(np.int64)
                _check_sets(self.path, self._sizes, self._offsets, int(stats[:, 3].sum()))
        self.max_set_size = int(max(self._sizes.max(initial=0), 1)) if self._sizes is not None else None
        if indices is None:
            self.indices = split_indices(self.num_file_rows, split, fractions=fractions, seed=seed)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.num_file_rows
                                      or (np.diff(self.indices) <= 0).any()):
                raise ValueError(f"indices must be sorted, unique rows in [0, {self.num_file_rows})")
            self.split = "rows"
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._pid: int | None = None

    # metadata -------------------------------------------------------------------------------------------------
    param_names = property(lambda self: self.metadata["param_names"])
    obs_names = property(lambda self: self.metadata["obs_names"])
    is_set_valued = property(lambda self: self.metadata["is_set_valued"])
    simulator_name = property(lambda self: self.metadata["simulator"])
    simulator_config = property(lambda self: self.metadata["simulator_config"])
    param_dim = property(lambda self: len(self.metadata["param_names"]))
    obs_dim = property(lambda self: len(self.metadata["obs_names"]))

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"HDF5Dataset({self.path!r}, split={self.split!r}, rows={len(self)}, "
                f"simulator={self.simulator_name!r})")

    # access ---------------------------------------------------------------------------------------------------
    def __getitem__(self, index: int):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"HDF5Dataset index must be an int, got {type(index).__name__}; use get_batch for many")
        return tuple(t[0] for t in self.get_batch([index]))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, ...]]:
        return list(zip(*(t.unbind(0) for t in self.get_batch(indices))))

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        """Rows ``indices`` of this split as stacked tensors: ``(x (B, D), y (B, M))`` or, for sets,
        ``(x (B, D), y (B, K_max, M), mask (B, K_max))``; rows come back in the order asked for."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self.indices)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for HDF5Dataset split {self.split!r} with {n} rows")
        rows, inverse = np.unique(self.indices[idx % n] if n else idx, return_inverse=True)
        f = self._handle()  # dataset handles are kept: each holds its own HDF5 chunk cache
        x = _float32(_read_ranges(f["x"], rows, rows + 1)[inverse])
        if not self.is_set_valued:
            y = _float32(_read_ranges(f["y"], rows, rows + 1)[inverse])
            return torch.from_numpy(x), torch.from_numpy(y)
        flat = _read_ranges(f["y"], self._offsets[rows], self._offsets[rows + 1])
        mask = np.arange(self.max_set_size)[None, :] < self._sizes[rows][:, None]
        y = np.zeros((len(rows), self.max_set_size, self.obs_dim), np.float32)
        y[mask] = flat
        return torch.from_numpy(x), torch.from_numpy(y[inverse]), torch.from_numpy(mask[inverse])

    def _handle(self) -> dict[str, h5py.Dataset]:
        if self._file is None or self._pid != os.getpid():
            self._file = _open_read(self.path)  # a handle inherited through fork is not used
            self._pid = os.getpid()
            self._datasets = {"x": self._file["x"], "y": self._file["y"]}
        return self._datasets

    def close(self) -> None:
        """Close this process's file handle (it reopens on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._datasets = None, {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"], state["_datasets"] = None, None, {}
        return state


def split_indices(num_rows: int, split: str, *, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> np.ndarray:
    """Sorted file-row indices of ``split`` among ``num_rows`` rows: a seeded permutation cut by ``fractions``."""
    fractions = _check_fractions(fractions)
    if split == "all":
        return np.arange(num_rows, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(num_rows)
    n_train = int(math.floor(fractions[0] * num_rows + 1e-9))
    n_val = int(math.floor(fractions[1] * num_rows + 1e-9))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, num_rows)}
    if split not in bounds:
        raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
    lo, hi = bounds[split]
    return np.sort(perm[lo:hi]).astype(np.int64)


def load_hdf5(path: str | os.PathLike, *, max_rows: int | None = None) -> dict[str, Any]:
    """Load the committed rows of a simulation file into memory (for small files).

    Returns:
        ``{"x": (N, D), "y": (N, M), "metadata": dict}``; for set-valued files ``y`` is ``(N, K_max, M)``
        zero-padded, plus ``"sizes"`` ``(N,)`` int64 and ``"mask"`` ``(N, K_max)`` bool. Tensors are float32.
    """
    if max_rows is not None:
        max_rows = _check_int("max_rows", max_rows, 0)
    with _open_read(path) as f:
        meta = _metadata(f)
        stats = _committed_stats(f)
        committed = int(stats[:, 1].sum())
        n = committed if max_rows is None else min(committed, max_rows)
        out: dict[str, Any] = {"x": torch.from_numpy(_float32(f["x"][:n])), "metadata": meta}
        if not meta["is_set_valued"]:
            out["y"] = torch.from_numpy(_float32(f["y"][:n]))
            return out
        all_sizes = f["sizes"][:committed].astype(np.int64)
        _check_sets(path, all_sizes, f["offsets"][: committed + 1].astype(np.int64), int(stats[:, 3].sum()))
        sizes, offsets = all_sizes[:n], f["offsets"][: n + 1]
        k = int(max(all_sizes.max(initial=0), 1))
        flat = f["y"][: int(offsets[-1])]
    mask = np.arange(k)[None, :] < sizes[:, None]
    y = np.zeros((n, k, flat.shape[-1]), np.float32)
    y[mask] = flat
    out.update(y=torch.from_numpy(y), sizes=torch.from_numpy(sizes.astype(np.int64)), mask=torch.from_numpy(mask))
    return out


def hdf5_info(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata, counts and per-dimension statistics of a simulation file (streamed; works for large files).

    Returns:
        A JSON-serialisable dict: the recorded metadata (simulator, configuration, prior, seed, chunk size,
        version, times, names), ``num_requested``, ``num_simulated``, ``num_rows``, ``num_invalid``,
        ``chunks_done``, ``completed``, ``file_size_bytes``, ``param_stats`` and ``obs_stats`` (``{name: {"min",
        "max", "mean"}}``, NaN-ignoring) and, for sets, ``set_rows``, ``min/mean/max_set_size``.
    """
    with _open_read(path) as f:
        info = _metadata(f)
        stats = _committed_stats(f)
        rows = int(stats[:, 1].sum())
        info.update(num_requested=int(f.attrs.get("num_requested", 0)), num_simulated=int(stats[:, 0].sum()),
                    num_rows=rows, num_invalid=int(stats[:, 2].sum()), chunks_done=len(stats),
                    completed=int(stats[:, 0].sum()) >= int(f.attrs.get("num_requested", 0)) > 0,
                    rows_beyond_commit=int(f["x"].shape[0] - rows), file_size_bytes=os.path.getsize(path))
        info["param_stats"] = _column_stats(f["x"], rows, info["param_names"])
        if info["is_set_valued"]:
            sizes = f["sizes"][:rows]
            set_rows = int(stats[:, 3].sum())
            info.update(set_rows=set_rows, min_set_size=int(sizes.min()) if rows else 0,
                        mean_set_size=float(sizes.mean()) if rows else 0.0, max_set_size=int(sizes.max(initial=0)))
            info["obs_stats"] = _column_stats(f["y"], set_rows, info["obs_names"])
        else:
            info["obs_stats"] = _column_stats(f["y"], rows, info["obs_names"])
    return info


def content_hash(path: str | os.PathLike, *, max_rows: int | None = None, block: int = 1 << 16) -> str:
    """SHA-256 (hex) of the committed rows of a simulation file (the first ``max_rows`` when given): ``x``, ``y`` and,
    for sets, ``sizes``, read in blocks. Two files with the same hash hold the same simulations."""
    import hashlib

    digest = hashlib.sha256()
    with _open_read(path) as f:
        _metadata(f)  # checks the layout
        stats = _committed_stats(f)
        rows = int(stats[:, 1].sum()) if max_rows is None else min(int(stats[:, 1].sum()), max_rows)
        y_rows = rows
        if "sizes" in f:
            y_rows = int(f["offsets"][rows])
            digest.update(np.ascontiguousarray(f["sizes"][:rows]).tobytes())
        for name, n in (("x", rows), ("y", y_rows)):
            for start in range(0, n, block):
                digest.update(np.ascontiguousarray(f[name][start:min(start + block, n)]).tobytes())
    return digest.hexdigest()


def _column_stats(ds, rows: int, names: list[str], block: int = 1 << 16) -> dict[str, dict[str, float]]:
    lo = np.full(ds.shape[1], np.inf)
    hi = np.full(ds.shape[1], -np.inf)
    total, count = np.zeros(ds.shape[1]), np.zeros(ds.shape[1])
    for start in range(0, rows, block):
        a = ds[start:min(start + block, rows)].astype(np.float64)
        finite = np.isfinite(a)
        lo = np.minimum(lo, np.where(finite, a, np.inf).min(0))
        hi = np.maximum(hi, np.where(finite, a, -np.inf).max(0))
        total += np.where(finite, a, 0.0).sum(0)
        count += finite.sum(0)
    mean = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return {name: {"min": _num(lo[j]), "max": _num(hi[j]), "mean": _num(mean[j])} for j, name in enumerate(names)}


def _read_ranges(ds, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Rows ``[starts[i], stops[i])`` of ``ds`` (ascending, non-overlapping ranges), concatenated, in one read."""
    starts, stops = np.asarray(starts, np.int64), np.asarray(stops, np.int64)
    tail = ds.shape[1:]
    total = int((stops - starts).sum())
    out = np.empty((total, *tail), dtype=ds.dtype)
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    if total == 0:
        return out
    breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1  # merge touching ranges into runs
    run_starts = starts[np.r_[0, breaks]]
    run_stops = stops[np.r_[breaks - 1, len(stops) - 1]]
    if len(run_starts) == 1:
        ds.read_direct(out, np.s_[int(run_starts[0]):int(run_stops[0])])
        return out
    fspace = ds.id.get_space()
    if total <= 4 * len(run_starts) and len(tail) == 1:  # scattered rows: a point selection beats a hyperslab union
        rows = np.repeat(run_starts - np.r_[0, np.cumsum(run_stops - run_starts)[:-1]], run_stops - run_starts)
        rows += np.arange(total)
        coords = np.empty((total * tail[0], 2), dtype=np.uint64)
        coords[:, 0] = np.repeat(rows, tail[0])
        coords[:, 1] = np.tile(np.arange(tail[0]), total)
        fspace.select_elements(coords)
    else:
        fspace.select_none()
        zeros = (0,) * len(tail)
        for a, b in zip(run_starts.tolist(), run_stops.tolist()):
            fspace.select_hyperslab((a, *zeros), (b - a, *tail), op=h5py.h5s.SELECT_OR)
    ds.id.read(h5py.h5s.create_simple(out.shape), fspace, out)
    return out


# -- helpers ------------------------------------------------------------------------------------------------------
def _open_read(path) -> h5py.File:
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such simulation file: {path!r}")
    try:
        f = h5py.File(path, "r", rdcc_nbytes=_CACHE_BYTES, rdcc_nslots=10007)
    except OSError as err:
        raise ValueError(f"cannot read {path!r} as an HDF5 file: {err}") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise ValueError(f"{path!r} is not an sbi_inn simulation file (written by simulate_to_hdf5)")
    version = f.attrs.get("format_version")
    version = version.item() if isinstance(version, np.generic) else version
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        f.close()
        raise ValueError(f"{path!r} is in simulation-file format version {version!r}; this sbi_inn "
                         f"({__version__}) reads versions 1 to {FORMAT_VERSION}")
    return f


def _metadata(f: h5py.File) -> dict[str, Any]:
    """The recorded metadata of an open simulation file, every attribute and dataset checked first: a missing or
    garbled attribute, or a dataset of the wrong shape or dtype, is refused naming it."""
    missing = [key for key in _REQUIRED_ATTRS if key not in f.attrs]
    if missing:
        raise ValueError(f"{f.filename!r} lacks the attribute(s) {', '.join(missing)}: not a complete sbi_inn "
                         "simulation file")
    meta = {"simulator": _attr(f, "simulator"), "simulator_config": _json_attr(f, "simulator_config", dict),
            "prior": _json_attr(f, "prior", (dict, list)), "seed": _int_attr(f, "seed"),
            "chunk_size": _int_attr(f, "chunk_size", 1), "param_names": _names_attr(f, "param_names"),
            "obs_names": _names_attr(f, "obs_names"), "is_set_valued": bool(_attr(f, "is_set_valued")),
            "sbi_inn_version": _attr(f, "sbi_inn_version"), "format_version": _int_attr(f, "format_version", 1),
            "created": _attr(f, "created"), "updated": _attr(f, "updated") if "updated" in f.attrs else None}
    _check_datasets(f, meta)
    meta["compression"] = f["x"].compression
    return meta


_REQUIRED_ATTRS = ("simulator", "simulator_config", "prior", "seed", "chunk_size", "param_names", "obs_names",
                   "is_set_valued", "format_version", "chunks_done")


def _json_attr(f: h5py.File, key: str, kind):
    try:
        value = json.loads(_attr(f, key))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{f.filename!r}: attribute {key!r} is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise ValueError(f"{f.filename!r}: attribute {key!r} holds a JSON {type(value).__name__}, not the expected "
                         f"{getattr(kind, '__name__', 'object')}")
    return value


def _names_attr(f: h5py.File, key: str) -> list[str]:
    names = _json_attr(f, key, list)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{f.filename!r}: attribute {key!r} must be a non-empty JSON list of names, got {names!r}")
    return names


def _int_attr(f: h5py.File, key: str, minimum: int = 0) -> int:
    value = _attr(f, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{f.filename!r}: attribute {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_datasets(f: h5py.File, meta: dict) -> None:
    """Each dataset a reader touches exists with the layout of the module docstring; x and y hold floating-point
    numbers (float32 as written; other float widths are read as float32), the counts integers."""
    widths = {"x": len(meta["param_names"]), "y": len(meta["obs_names"]), "chunk_stats": len(_STATS)}
    layout = {"x": (2, "f"), "y": (2, "f"), "chunk_stats": (2, "iu")}
    if meta["is_set_valued"]:
        layout.update(sizes=(1, "iu"), offsets=(1, "iu"))
    for name, (ndim, kinds) in layout.items():
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise ValueError(f"{f.filename!r} has no dataset {name!r}: not a complete sbi_inn simulation file")
        if ds.dtype.kind not in kinds:
            what = "floating-point numbers" if kinds == "f" else "integers"
            raise ValueError(f"{f.filename!r}: dataset {name!r} has dtype {ds.dtype}; it must hold {what}")
        if ds.ndim != ndim or (name in widths and ds.shape[1] != widths[name]):
            want = f"(rows, {widths[name]})" if name in widths else "(rows,)"
            raise ValueError(f"{f.filename!r}: dataset {name!r} has shape {ds.shape}, expected {want} (from the "
                             "recorded names)")


def _float32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _attr(f: h5py.File, key: str):
    value = f.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        fr = tuple(float(v) for v in fractions)
    except (TypeError, ValueError):
        raise TypeError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if len(fr) != 3 or any(not (v >= 0) for v in fr) or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    return fr


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["HDF5Dataset", "simulate_to_hdf5", "load_hdf5", "hdf5_info", "split_indices", "content_hash"]


def write_samples_hdf5(path, samples, *, param_names, attrs: dict | None = None) -> None:
    """Write posterior samples ``(n, B, D)`` to ``path`` as dataset ``samples`` with ``param_names`` attributes."""
    samples = np.asarray(samples)
    if samples.ndim != 3 or samples.shape[-1] != len(param_names):
        raise ValueError(f"samples must have shape (n, B, {len(param_names)}), got {samples.shape}")
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", data=samples, chunks=True, compression="lzf", shuffle=True)
        f.attrs["param_names"] = list(param_names)
        f.attrs["layout"] = "(num_samples, num_observations, num_parameters)"
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
