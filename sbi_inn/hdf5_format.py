"""The simulation-file format ``sbi_inn.simulations`` (version 1), the checks its writer and readers share, and the
attribute readers and conventions (compression, timestamps) of every HDF5 file the package writes.

The layout, one row per kept simulation:

* ``x`` ``(N, D)`` float32 parameters; ``y`` ``(N, M)`` float32 observations.
* Set-valued simulators store sets ragged, not padded: ``y`` is ``(R, M)`` with the rows of every set one after
  another, ``sizes`` ``(N,)`` int64 the set sizes and ``offsets`` ``(N + 1,)`` int64 where set ``i`` is
  ``y[offsets[i]:offsets[i + 1]]``. Readers pad to ``(K_max, M)`` with a boolean mask.
* ``chunk_stats`` ``(C, 4)`` int64: per simulation chunk ``(simulated, rows kept, invalid, set rows)``.
* The attribute ``chunks_done`` is the commit point: it is written and flushed only after a chunk's rows are
  completely written, and everything readers report (row counts, invalid counts) is derived from
  ``chunk_stats[:chunks_done]``. Rows past the last committed chunk are never read and are truncated on resume.
* Attributes record the simulator, its configuration, the prior, the seed, the chunk size, the parameter and
  observation names, the package version and the times of creation and of the last update.

Writing: :mod:`sbi_inn.hdf5_writer`; reading: :mod:`sbi_inn.data`.

References:
    The resumable, attribute-documented HDF5 backend follows ``emcee.backends.HDFBackend``.
"""

from __future__ import annotations

import datetime

import h5py
import numpy as np

FORMAT = "sbi_inn.simulations"
FORMAT_VERSION = 1
# lzf (bundled with h5py) decompresses faster than gzip, and float data compresses little either way
# (benchmarks/results/design_notes.md); every HDF5 file the package writes uses it
COMPRESSION = {"compression": "lzf", "shuffle": True}
STATS = ("simulated", "rows", "invalid", "set_rows")  # the columns of chunk_stats


def committed_stats(f: h5py.File) -> np.ndarray:
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
    stats = stats_ds[:done].astype(np.int64) if done else np.zeros((0, len(STATS)), np.int64)
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


def read_attr(f: h5py.File, key: str):
    """Attribute ``key`` of ``f`` as a Python value (bytes decoded, numpy scalars unwrapped; ``None`` if absent)."""
    value = f.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_int_attr(f: h5py.File, key: str, minimum: int = 0) -> int:
    """Attribute ``key`` of ``f``, refused naming the file and the attribute unless an integer >= ``minimum``."""
    value = read_attr(f, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{f.filename!r}: attribute {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an ``int`` (integral floats too); refused, naming ``name``, unless an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def utc_now() -> str:
    """The time now as the ``created`` / ``updated`` attributes of the package's HDF5 files record it (UTC, ISO 8601,
    seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
