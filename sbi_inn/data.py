"""Reading simulation files: a streaming ``torch`` Dataset, whole-file loads, summaries and content hashes.

Files are written by :func:`simulate_to_hdf5` (:mod:`sbi_inn.hdf5_writer`, re-exported here with
:func:`write_samples_hdf5`) in the layout of :mod:`sbi_inn.hdf5_format`. Every reader opens a file through one check
of its format, attributes and datasets, and sees only the committed rows (``chunk_stats[:chunks_done]``): a file
damaged or crafted so that its records disagree with its datasets is refused naming what disagrees.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from sbi_inn._version import __version__
from sbi_inn.hdf5_format import FORMAT, FORMAT_VERSION, STATS, check_int, committed_stats, read_attr, read_int_attr
from sbi_inn.hdf5_writer import simulate_to_hdf5, write_samples_hdf5

_CACHE_BYTES = 32 * 1024**2  # HDF5 chunk cache per open file when reading


# -- reading -------------------------------------------------------------------------------------------------------
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
        seed = check_int("seed", seed, 0)
        self.path, self.split, self.fractions, self.seed = str(path), split, fractions, seed
        with _open_read(self.path) as f:
            self.metadata = _metadata(f)
            stats = committed_stats(f)
            self.num_file_rows = int(stats[:, 1].sum())
            if max_rows is not None:
                self.num_file_rows = min(self.num_file_rows, check_int("max_rows", max_rows, 1))
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
        max_rows = check_int("max_rows", max_rows, 0)
    with _open_read(path) as f:
        meta = _metadata(f)
        stats = committed_stats(f)
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
        stats = committed_stats(f)
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
        stats = committed_stats(f)
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



# -- helpers -------------------------------------------------------------------------------------------------------
def _check_sets(path, sizes: np.ndarray, offsets: np.ndarray, set_rows: int) -> None:
    """``offsets`` must start at 0 and step by ``sizes`` (non-negative) up to ``set_rows``: then every set read
    stays inside ``y``."""
    if (len(offsets) != len(sizes) + 1 or offsets[0] != 0 or (sizes < 0).any()
            or not np.array_equal(np.diff(offsets), sizes) or offsets[-1] > set_rows):
        raise ValueError(f"{str(path)!r}: the datasets 'sizes' and 'offsets' disagree (or point past 'y'); the file is "
                         "damaged or not written by sbi_inn")


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
    meta = {"simulator": read_attr(f, "simulator"), "simulator_config": _json_attr(f, "simulator_config", dict),
            "prior": _json_attr(f, "prior", (dict, list)), "seed": read_int_attr(f, "seed"),
            "chunk_size": read_int_attr(f, "chunk_size", 1), "param_names": _names_attr(f, "param_names"),
            "obs_names": _names_attr(f, "obs_names"), "is_set_valued": bool(read_attr(f, "is_set_valued")),
            "sbi_inn_version": read_attr(f, "sbi_inn_version"), "format_version": read_int_attr(f, "format_version", 1),
            "created": read_attr(f, "created"), "updated": read_attr(f, "updated") if "updated" in f.attrs else None}
    _check_datasets(f, meta)
    meta["compression"] = f["x"].compression
    return meta


_REQUIRED_ATTRS = ("simulator", "simulator_config", "prior", "seed", "chunk_size", "param_names", "obs_names",
                   "is_set_valued", "format_version", "chunks_done")


def _json_attr(f: h5py.File, key: str, kind):
    try:
        value = json.loads(read_attr(f, key))
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


def _check_datasets(f: h5py.File, meta: dict) -> None:
    """Each dataset a reader touches exists with the layout of the module docstring; x and y hold floating-point
    numbers (float32 as written; other float widths are read as float32), the counts integers."""
    widths = {"x": len(meta["param_names"]), "y": len(meta["obs_names"]), "chunk_stats": len(STATS)}
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



__all__ = ["HDF5Dataset", "simulate_to_hdf5", "write_samples_hdf5", "load_hdf5", "hdf5_info", "split_indices",
           "content_hash"]
