"""Observation files in, posterior-sample files out: the file formats of ``sbi-inn sample`` and ``diagnose``.

Observations for a posterior come from one of three kinds of file, picked by suffix:

* ``.h5`` / ``.hdf5``: a simulation file written by :func:`sbi_inn.data.simulate_to_hdf5`; its ``y`` rows (a split of
  them, then a row selection) are read with :class:`sbi_inn.data.HDF5Dataset`.
* ``.npy``: an array ``(B, *obs_shape)`` or one observation ``obs_shape``; sets ``(B, K, *obs_shape)`` or
  ``(K, *obs_shape)``, where set elements that are all NaN pad a set to the common length ``K`` and come after its
  elements.
* ``.csv``: one vector observation per row, numbers separated by commas; a first line that is not numbers (a header)
  is skipped, lines starting with ``#`` are comments. Sets cannot be written this way.

Observations must be real and finite (NaN only as set padding). Samples ``(n, B, D)`` (``n`` draws for each of ``B``
observations of ``D`` parameters) are written as ``.npy`` (the array), ``.h5`` / ``.hdf5`` (dataset ``samples`` with
a ``param_names`` attribute, :func:`sbi_inn.data.write_samples_hdf5`) or ``.csv`` (long format: an ``observation``
column, then one column per parameter, row ``i * B + b`` holding draw ``i`` for observation ``b``).

Example:
    >>> select_rows(10, "2:5"), select_rows(10, "-1"), select_rows(10, ":3")
    (range(2, 5), range(9, 10), range(0, 3))
    >>> shape_text((2,)), obs_shape_text((2,), is_set_valued=True)
    ('(2,)', '(K, 2)')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sbi_inn.checks import real_tensor
from sbi_inn.locking import exclusive_lock

SAMPLE_SUFFIXES = (".npy", ".h5", ".hdf5", ".csv")
"""Suffixes :func:`write_samples` knows; the suffix picks the format."""

_HDF5_SUFFIXES = (".h5", ".hdf5")


class SimulationRows(NamedTuple):
    """Rows of a simulation file: ``x`` ``(B, D)``, ``y`` ``(B, M)`` (sets: ``(B, K, M)`` zero-padded with ``sizes``
    ``(B,)``, else ``sizes`` is ``None``) and the file's metadata (``param_names``, ``is_set_valued``, ...)."""

    x: Tensor
    y: Tensor
    sizes: Tensor | None
    metadata: dict[str, Any]


def select_rows(num_rows: int, spec: str | None) -> range:
    """The rows of ``range(num_rows)`` that ``spec`` picks, Python slice style.

    Args:
        num_rows: number of rows available.
        spec: ``"A:B"``, ``"A:"``, ``":B"`` (negative bounds count from the end) or one index ``"A"``; ``None``
            picks every row.

    Returns:
        The picked row indices as a ``range``.

    Raises:
        ValueError: ``spec`` is not of that form, or picks no row.
    """
    rows = range(num_rows)
    if spec is None:
        return rows
    start, sep, stop = str(spec).partition(":")
    bad = f"rows expects A:B, A:, :B or a single row index, got {spec!r}"
    try:
        a = int(start) if start.strip() else None
        b = int(stop) if stop.strip() else None
    except ValueError:
        raise ValueError(bad) from None
    if sep:
        picked = rows[a:b]
    elif a is None:
        raise ValueError(bad)
    else:  # one index, which must exist
        picked = rows[a % num_rows:][:1] if -num_rows <= a < num_rows else range(0)
    if len(picked) == 0:
        raise ValueError(f"rows {spec} selects none of the {num_rows} available rows")
    return picked


def read_hdf5_rows(path: str | os.PathLike, split: str = "all", rows: str | None = None) -> SimulationRows:
    """Rows of a simulation file: the ``split`` (fractions 0.8/0.1/0.1, see :class:`sbi_inn.data.HDF5Dataset`), then
    the rows of it that ``rows`` picks (:func:`select_rows`).

    Raises:
        FileNotFoundError: no such file. ValueError: the split holds no rows, or a bad ``rows``.
    """
    from sbi_inn.data import HDF5Dataset

    ds = HDF5Dataset(path, split)
    try:
        if len(ds) == 0:
            raise ValueError(f"{path}: split {split!r} holds no rows")
        batch = ds.get_batch(list(select_rows(len(ds), rows)))
    finally:
        ds.close()
    sizes = batch[2].sum(-1) if len(batch) > 2 else None
    return SimulationRows(batch[0], batch[1], sizes, ds.metadata)


def read_test_simulations(path: str | os.PathLike, *, param_dim: int, obs_shape: tuple[int, ...],
                          is_set_valued: bool, split: str = "all", rows: str | None = None) -> SimulationRows:
    """Rows of a simulation file (:func:`read_hdf5_rows`) to test a model on: ground truths ``x`` ``(B, D)`` and
    their observations ``y``, refused unless they fit a model of ``param_dim`` parameters taking ``obs_shape``
    (sets of it when ``is_set_valued``).

    Raises:
        ValueError: the file holds another number of parameters, sets for a vector model or vectors for a set
            model, or observations of another shape (each message gives both sides); see also
            :func:`read_hdf5_rows`.
    """
    found = read_hdf5_rows(path, split, rows)
    names = found.metadata["param_names"]
    if found.x.shape[1] != param_dim:
        raise ValueError(f"{path} holds {found.x.shape[1]} parameters ({', '.join(names)}) but the model infers "
                         f"{param_dim}")
    _check_kind(found.metadata, is_set_valued, path)
    check_obs_shape(found.y, obs_shape=obs_shape, is_set_valued=is_set_valued, source=path)
    return found


def read_csv(path: str | os.PathLike) -> np.ndarray:
    """Numbers of a comma-separated file as a float64 array ``(B, M)``, one row per line; a first line that is not
    numbers (a header) is skipped, lines starting with ``#`` are comments.

    Raises:
        ValueError: a line (after the header) that is not numbers, rows of different lengths, or no rows.
    """
    lines = [line for line in Path(path).read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and not _numbers(lines[0]):
        lines = lines[1:]  # the header
    if not lines:
        raise ValueError(f"{path}: the CSV file holds no observations")
    try:
        return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: cannot read the CSV as numbers: {err}") from None


def read_observations(path: str | os.PathLike, *, obs_shape: tuple[int, ...], is_set_valued: bool,
                      split: str = "all", rows: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Observations for a posterior taking ``obs_shape`` (sets of them when ``is_set_valued``) from a file.

    Args:
        path: an HDF5 simulation file, a ``.npy`` or a ``.csv`` file (formats: module docstring).
        obs_shape: the shape of one observation (of one set element), e.g. ``(M,)``.
        is_set_valued: whether an observation is a set of elements of ``obs_shape``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``; other than ``"all"`` for HDF5 files only.
        rows: which rows (after the split) to use, see :func:`select_rows`; ``None`` uses all.

    Returns:
        ``(Y, sizes)``: ``Y`` float32 ``(B, *obs_shape)`` and ``sizes`` ``None``, or for sets ``Y``
        ``(B, K, *obs_shape)`` zero-padded and ``sizes`` int64 ``(B,)``, every size at least 1.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, an unreadable file, a shape other than ``obs_shape`` (the message gives both),
            numbers that are not real (complex, text), NaN or inf other than set padding, padding before a set's
            elements, an empty set, a CSV for sets, ``split`` for a non-HDF5 file, or a bad ``rows``.
    """
    obs_shape = tuple(obs_shape)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    suffix = p.suffix.lower()
    if suffix in _HDF5_SUFFIXES:
        _, y, sizes, meta = read_hdf5_rows(p, split, rows)
        _check_kind(meta, is_set_valued, path)
        check_obs_shape(y, obs_shape=obs_shape, is_set_valued=is_set_valued, source=path)
        _check_finite(y.numpy(), path, range(len(y)), "of the selection")
        return y, sizes
    if split != "all":
        raise ValueError(f"split applies to HDF5 observation files, not {suffix or 'suffix-less'} files")
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    elif suffix == ".csv":
        if is_set_valued:
            raise ValueError("a CSV file holds one vector per row; give the sets of a set-valued model as "
                             ".npy (B, K, M) with NaN rows as padding, or as an HDF5 simulation file")
        arr = read_csv(p)
    else:
        raise ValueError(f"observations must be in an HDF5 simulation file (.h5), a .npy or a .csv file, got "
                         f"{str(path)!r}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{path}: expected real numbers, got an array of dtype {arr.dtype}")
    event_ndim = len(obs_shape) + (1 if is_set_valued else 0)
    if arr.ndim == event_ndim:
        arr = arr[None]
    if arr.ndim != event_ndim + 1:
        raise ValueError(f"{path}: expected an array of one or several observations of shape "
                         f"{obs_shape_text(obs_shape, is_set_valued)}, got shape {arr.shape}")
    check_obs_shape(arr, obs_shape=obs_shape, is_set_valued=is_set_valued, source=path)
    picked = select_rows(len(arr), rows)
    arr = arr[list(picked)].astype(np.float32)
    if not is_set_valued:
        _check_finite(arr, path, picked)
        return torch.from_numpy(arr), None
    elements = arr.reshape(*arr.shape[:2], -1)  # (B, K, prod(obs_shape))
    padding = np.isnan(elements).all(-1)
    sizes = (~padding).sum(-1)
    if (padding != (np.arange(arr.shape[1])[None] >= sizes[:, None])).any():
        raise ValueError(f"{path}: NaN padding rows must come after the elements of each set")
    if (sizes == 0).any():
        raise ValueError(f"{path}: the sets in {_rows(picked, sizes == 0)} have no elements (all NaN padding)")
    _check_finite(np.where(padding.reshape(*padding.shape, *[1] * len(obs_shape)), 0.0, arr), path, picked)
    return torch.from_numpy(np.nan_to_num(arr, nan=0.0)), torch.from_numpy(sizes.astype(np.int64))


def check_obs_shape(y, *, obs_shape: tuple[int, ...], is_set_valued: bool, source) -> None:
    """Refuse observations ``y`` ``(B, *shape)`` (sets ``(B, K, *shape)``) whose ``shape`` is not ``obs_shape``.

    Raises:
        ValueError: ``"{source}: observations have shape (3,) but the model takes (2,)"``.
    """
    width = tuple(y.shape[2:] if is_set_valued else y.shape[1:])
    if width != tuple(obs_shape):
        raise ValueError(f"{source}: observations have shape {shape_text(width)} but the model takes "
                         f"{obs_shape_text(obs_shape, is_set_valued)}")


def shape_text(shape) -> str:
    """A shape as Python writes a tuple: ``(2,)``, ``(3, 4)``."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def obs_shape_text(obs_shape, is_set_valued: bool) -> str:
    """The shape of one observation, sets with a leading ``K``: ``(2,)`` or ``(K, 2)``."""
    return "(K, " + ", ".join(map(str, obs_shape)) + ")" if is_set_valued else shape_text(obs_shape)


def write_samples(path: str | os.PathLike, samples, *, param_names, attrs: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write samples ``(n, B, D)`` to ``path`` in the format its suffix picks (module docstring), atomically: through
    a temporary file next to it, so an interrupted write leaves no partial ``path``. Missing folders are created.

    Args:
        samples: tensor or array ``(n, B, D)``: ``n`` draws for each of ``B`` observations.
        param_names: ``D`` parameter names (the HDF5 attribute and the CSV columns).
        attrs: extra HDF5 attributes (e.g. where the samples came from); ignored by ``.npy`` and ``.csv``.
        overwrite: replace an existing ``path`` instead of refusing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: an unknown suffix, or samples not of shape ``(n, B, len(param_names))``.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAMPLE_SUFFIXES:
        raise ValueError(f"samples are written as {', '.join(SAMPLE_SUFFIXES)} (the suffix picks the format), got "
                         f"{str(path)!r}")
    array = real_tensor("samples", samples).cpu().numpy()
    param_names = [str(name) for name in param_names]
    if array.ndim != 3 or array.shape[-1] != len(param_names):
        raise ValueError(f"samples must have shape (n, B, {len(param_names)}) for parameters "
                         f"{', '.join(param_names)}, got {array.shape}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with exclusive_lock(path, what="samples file"):  # two writers would share the .tmp file
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        elif suffix == ".csv":
            import pandas as pd

            n, b, d = array.shape
            frame = pd.DataFrame(array.reshape(n * b, d), columns=param_names)
            frame.insert(0, "observation", np.tile(np.arange(b), n))
            frame.to_csv(tmp, index=False)
        else:
            from sbi_inn.data import write_samples_hdf5

            write_samples_hdf5(tmp, array, param_names=param_names, attrs=attrs)
        tmp.replace(path)
    return path


def _check_kind(metadata: dict, is_set_valued: bool, path) -> None:
    if bool(metadata["is_set_valued"]) != bool(is_set_valued):
        raise ValueError(f"{path} is {'' if metadata['is_set_valued'] else 'not '}set-valued but the model is"
                         f"{'' if is_set_valued else ' not'}")


def _check_finite(arr: np.ndarray, path, picked: range, where: str = "") -> None:
    """Refuse NaN or inf in ``arr`` ``(B, ...)``, naming the rows (``picked[i]`` for row ``i`` of ``arr``)."""
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(-1)
    if bad.any():
        raise ValueError(f"{path}: the observations in {_rows(picked, bad)}{' ' + where if where else ''} "
                         "hold NaN or inf")


def _rows(picked: range, mask: np.ndarray, k: int = 5) -> str:
    """``rows 3, 7``: the file rows ``picked[i]`` where ``mask[i]`` (the first ``k``, then ``...``)."""
    idx = [picked[i] for i in np.flatnonzero(mask)]
    return ("row " if len(idx) == 1 else "rows ") + ", ".join(map(str, idx[:k])) + (", ..." if len(idx) > k else "")


def _numbers(line: str) -> bool:
    try:
        [float(field) for field in line.split(",")]
    except ValueError:
        return False
    return True
