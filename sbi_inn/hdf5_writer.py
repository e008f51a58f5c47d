"""Writing simulation files: resumable simulation runs (:func:`simulate_to_hdf5`) and posterior samples.

The file layout is that of :mod:`sbi_inn.hdf5_format`. Chunk ``i`` always draws ``min(chunk_size, remaining)``
parameters with seeds derived from ``(seed, i)`` only, so a run that is interrupted and resumed writes the same bytes
as an uninterrupted run, and a file of ``N`` simulations extended to ``N' > N`` equals a fresh run of ``N'`` (a last,
partial chunk is simulated again at full size). HDF5 is not journaled: the datasets are flushed before each commit,
so an interruption between commits loses at most the chunk in progress.

Example:
    >>> import tempfile, os, torch
    >>> from torch.distributions import Independent, Normal
    >>> from sbi_inn.data import HDF5Dataset
    >>> prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    >>> path = os.path.join(tempfile.mkdtemp(), "sq.h5")
    >>> simulate_to_hdf5(lambda x: x**2, prior, 100, path, chunk_size=40, show_progress=False)["num_rows"]
    100
    >>> ds = HDF5Dataset(path, split="train")
    >>> len(ds), ds[0][0].shape, ds[0][1].shape
    (80, torch.Size([2]), torch.Size([2]))
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from sbi_inn._version import __version__
from sbi_inn.hdf5_format import (
    COMPRESSION,
    FORMAT,
    FORMAT_VERSION,
    STATS,
    check_int,
    committed_stats,
    read_attr,
    utc_now,
)
from sbi_inn.locking import OutputLockedError, exclusive_lock
from sbi_inn.priors import describe_prior
from sbi_inn.simulation import Chunk, SeedTree, Simulation, simulate_chunks

_CHUNK_BYTES = 8 * 1024  # target size of one HDF5 chunk: small chunks keep random row reads cheap
_ON_INVALID = ("drop", "raise", "keep")
_ALL_INVALID_MIN_ROWS = 8  # a chunk of at least this many simulations with none valid means a broken simulator


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
    num_simulations = check_int("num_simulations", num_simulations, 1)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    seed = check_int("seed", seed, 0)
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
        self.stats = np.zeros((0, len(STATS)), dtype=np.int64)

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
            self.stats = committed_stats(f)
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
            have = read_attr(f, key)
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
                     created=utc_now(), param_names=json.dumps(sim.param_names), obs_names=json.dumps(sim.obs_names),
                     obs_dim=m, is_set_valued=bool(sim.is_set_valued), num_requested=0, num_simulated=0,
                     num_rows=0, num_invalid=0, chunks_done=0, completed=False)
        f.attrs.update(attrs)
        _new_dataset(f, "x", (d,), np.float32)
        _new_dataset(f, "y", (m,), np.float32)
        _new_dataset(f, "chunk_stats", (len(STATS),), np.int64, chunk_rows=256, compress=False)
        f["chunk_stats"].attrs["columns"] = json.dumps(STATS)
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
                       num_requested=max(num_requested, int(f.attrs["num_requested"])), updated=utc_now())
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
                     **(COMPRESSION if compress else {}))


def _extend(ds, start: int, values: np.ndarray) -> None:
    ds.resize(start + len(values), axis=0)
    if len(values):
        ds[start:start + len(values)] = values


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
