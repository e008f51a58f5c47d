"""Observation images on disk: multispectral images ``(H, W, M)`` with optional ground-truth parameter maps.

The file layout (format ``sbi_inn.image``, version 1), an HDF5 file written by :func:`write_observation_image`:

* ``y`` ``(H, W, M)`` float32: ``M`` spectral bands (observation components) per pixel. NaN marks a missing pixel
  (e.g. background); ``inf`` is refused when writing.
* ``truth`` ``(H, W, D)`` float32, optional: the ground-truth parameters of each pixel (synthetic images); NaN where
  a pixel has none.
* Attributes: ``format`` (``"sbi_inn.image"``), ``format_version``, ``sbi_inn_version``, ``created``, ``height``,
  ``width``, ``num_bands``, ``obs_names`` and ``param_names`` (JSON lists; ``param_names`` is ``[]`` without
  ``truth``), ``has_truth``, and ``attrs_keys`` (a JSON list) naming the caller's attributes, each stored as a
  JSON string (simulator, its configuration, seed, ...) and read back as the JSON value.

Datasets are chunked by whole image rows (about 256 KiB a chunk) and compressed (lzf with shuffle), so the pixels
of an image read in row-major order (pixel ``p`` is row ``p // W``, column ``p % W``) stream chunk by chunk; this
is how :mod:`sbi_inn.batch` reads them. Files are written atomically (through ``<path>.tmp``) under the one-writer
lock of :mod:`sbi_inn.locking`.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "img.h5")
    >>> y = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    >>> _ = write_observation_image(path, y, attrs={"simulator": "tissue_spectra", "seed": 0})
    >>> info = image_info(path, obs_shape=(3,))
    >>> info.shape, info.num_bands, info.attrs["seed"]
    ((5, 7), 3, 0)
    >>> image_info(path, obs_shape=(16,))
    Traceback (most recent call last):
    ...
    ValueError: ...: the image has 3 bands, the posterior takes 16
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sbi_inn._version import __version__
from sbi_inn.hdf5_format import COMPRESSION, read_attr, read_int_attr, utc_now
from sbi_inn.locking import exclusive_lock

__all__ = ["FORMAT", "FORMAT_VERSION", "ImageInfo", "ObservationImage", "image_info", "is_image_file",
           "read_observation_image", "read_pixels", "write_observation_image", "nonfinite_pixels", "pixel_text",
           "check_bands"]

FORMAT = "sbi_inn.image"
FORMAT_VERSION = 1
_CHUNK_BYTES = 256 * 1024
_RESERVED = ("format", "format_version", "sbi_inn_version", "created", "height", "width", "num_bands",
             "obs_names", "param_names", "has_truth", "attrs_keys")


@dataclass(frozen=True)
class ImageInfo:
    """What an image file holds (checked): ``shape`` ``(H, W)``, ``num_bands`` ``M``, names, the caller's
    ``attrs`` (JSON values) and whether it holds ``truth`` maps ``(H, W, len(param_names))``."""

    path: str
    height: int
    width: int
    num_bands: int
    obs_names: list[str]
    param_names: list[str]
    has_truth: bool
    format_version: int
    sbi_inn_version: str
    created: str
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.height, self.width

    @property
    def num_pixels(self) -> int:
        """``H * W``."""
        return self.height * self.width


@dataclass(frozen=True)
class ObservationImage:
    """An image read into memory: ``y`` float32 ``(H, W, M)``, ``truth`` float32 ``(H, W, D)`` or ``None``."""

    y: np.ndarray
    truth: np.ndarray | None
    info: ImageInfo


def write_observation_image(path: str | os.PathLike, y, *, truth=None, param_names=None, obs_names=None,
                            attrs: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write an observation image (format: module docstring), atomically and under the output lock.

    Args:
        path: the HDF5 file to write (``.h5`` / ``.hdf5``); missing folders are created.
        y: real array or tensor ``(H, W, M)``, stored as float32; NaN marks missing pixels.
        truth: optional real array ``(H, W, D)`` of ground-truth parameters, stored as float32 (NaN allowed).
        param_names: ``D`` names for ``truth``'s parameters (default ``x0, x1, ...``); only with ``truth``.
        obs_names: ``M`` band names (default ``y0, y1, ...``).
        attrs: extra metadata, each value JSON-serialisable (simulator, config, seed, ...); keys must be strings
            other than the format's own attributes.
        overwrite: replace an existing file instead of refusing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: a shape other than ``(H, W, M)`` / ``(H, W, D)``, an empty image, infinite values, names of the
            wrong count, ``param_names`` without ``truth``, or a reserved attribute key.
        TypeError: values that are not real numbers, or an attribute that is not JSON-serialisable.
    """
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"an observation image is an HDF5 file (.h5 or .hdf5), got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name such as {str(path / 'image.h5')!r}")
    y = _real_array("y", y)
    if y.ndim != 3 or 0 in y.shape:
        raise ValueError(f"y must be an image (H, W, M) with M bands per pixel, got shape {y.shape}")
    if np.isinf(y).any():
        bad = np.flatnonzero(np.isinf(y).any(-1).reshape(-1))
        raise ValueError(f"y holds inf at {pixel_text(bad, y.shape[1])}; use NaN to mark a missing pixel")
    h, w, m = y.shape
    obs_names = _names("obs_names", obs_names, m, "y")
    if truth is None:
        if param_names is not None:
            raise ValueError("param_names names the parameters of truth; pass truth too, or leave param_names out")
        param_names = []
    else:
        truth = _real_array("truth", truth)
        if truth.ndim != 3 or truth.shape[:2] != (h, w) or truth.shape[2] == 0:
            raise ValueError(f"truth must have shape ({h}, {w}, D) like y's pixels, got {truth.shape}")
        if np.isinf(truth).any():
            raise ValueError("truth holds inf; use NaN for a pixel without ground truth")
        param_names = _names("param_names", param_names, truth.shape[2], "x")
    extra = _encode_attrs(attrs)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with exclusive_lock(path, what="image file"):
        with h5py.File(tmp, "w") as f:
            f.create_dataset("y", data=y, chunks=_chunks(y.shape), **COMPRESSION)
            if truth is not None:
                f.create_dataset("truth", data=truth, chunks=_chunks(truth.shape), **COMPRESSION)
            f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, sbi_inn_version=__version__,
                           created=utc_now(),
                           height=h, width=w, num_bands=m, obs_names=json.dumps(obs_names),
                           param_names=json.dumps(param_names), has_truth=truth is not None,
                           attrs_keys=json.dumps(sorted(extra)))
            f.attrs.update(extra)
        tmp.replace(path)
    return path


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file whose ``format`` attribute says ``sbi_inn.image`` (no other checks)."""
    try:
        with h5py.File(path, "r") as f:
            return _text(f.attrs.get("format")) == FORMAT
    except (OSError, ValueError):
        return False


def image_info(path: str | os.PathLike, *, obs_shape=None) -> ImageInfo:
    """The checked metadata of an image file; with ``obs_shape``, also that its pixels fit a posterior taking it.

    Args:
        path: an image file written by :func:`write_observation_image`.
        obs_shape: a posterior's ``obs_shape`` ``(M,)``; ``None`` skips that check.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file, another format or format version, a missing or garbled attribute, datasets
            whose shape or dtype disagree with the attributes, or (``obs_shape``) another band count: "the image
            has 8 bands, the posterior takes 16".
    """
    with _open(path) as f:
        return _info(f, path, obs_shape)


def read_observation_image(path: str | os.PathLike, *, obs_shape=None, allow_nan: bool = False) -> ObservationImage:
    """Read a whole image into memory, checked as :func:`image_info` does (for images that fit in memory; the
    batch engine streams large ones with :func:`read_pixels`).

    Args:
        obs_shape: a posterior's ``obs_shape``, checked against the band count; ``None`` skips the check.
        allow_nan: accept missing (NaN) pixels in ``y``; by default they are refused naming the first ones.

    Raises:
        ValueError: see :func:`image_info`; NaN pixels without ``allow_nan``: "pixels (row 0, col 3), ... hold NaN".
    """
    with _open(path) as f:
        info = _info(f, path, obs_shape)
        y = f["y"][()].astype(np.float32, copy=False)
        truth = f["truth"][()].astype(np.float32, copy=False) if info.has_truth else None
    if not allow_nan:
        bad = nonfinite_pixels(y.reshape(-1, info.num_bands))
        if len(bad):
            raise ValueError(f"{path}: {pixel_text(bad, info.width)} of the image hold NaN; mask or fill them "
                             "first (or read with allow_nan=True)")
    return ObservationImage(y, truth, info)


def read_pixels(f: h5py.File, start: int, stop: int, width: int, name: str = "y") -> np.ndarray:
    """Pixels ``start:stop`` of an open image file in row-major order (pixel ``p`` = row ``p // W``, column
    ``p % W``), as float32 ``(stop - start, C)`` from dataset ``name`` ``(H, W, C)``; reads only the rows touched."""
    r0, r1 = start // width, (stop - 1) // width + 1
    block = f[name][r0:r1]
    flat = block.reshape(-1, block.shape[-1])
    return flat[start - r0 * width: stop - r0 * width].astype(np.float32, copy=False)


def nonfinite_pixels(pixels: np.ndarray) -> np.ndarray:
    """Indices (int64) of the rows of ``pixels`` ``(P, M)`` holding NaN or inf."""
    return np.flatnonzero(~np.isfinite(pixels).all(-1))


def pixel_text(indices, width: int, k: int = 5) -> str:
    """``pixels (row 0, col 3), (row 2, col 1)``: flat pixel indices as image positions (the first ``k``)."""
    idx = [int(i) for i in indices]
    cells = ", ".join(f"(row {i // width}, col {i % width})" for i in idx[:k])
    more = f", ... ({len(idx)} in all)" if len(idx) > k else ""
    return ("pixel " if len(idx) == 1 else "pixels ") + cells + more


# -- helpers ------------------------------------------------------------------------------------------------------
def _open(path) -> h5py.File:
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image file: {path!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"cannot read {path!r} as an HDF5 file: {err}") from None
    fmt = _text(f.attrs.get("format"))
    if fmt != FORMAT:
        f.close()
        what = "an sbi_inn simulation file" if fmt == "sbi_inn.simulations" else f"format {fmt!r}"
        raise ValueError(f"{path!r} is not an sbi_inn observation image (format {FORMAT!r}); it is {what}")
    return f


def _info(f: h5py.File, path, obs_shape) -> ImageInfo:
    missing = [k for k in _RESERVED if k not in f.attrs]
    if missing:
        raise ValueError(f"{str(path)!r} lacks the attribute(s) {', '.join(missing)}: not a complete sbi_inn image")
    version = read_int_attr(f, "format_version", 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} is in image format version {version}; this sbi_inn ({__version__}) reads "
                         f"versions 1 to {FORMAT_VERSION}")
    h, w, m = read_int_attr(f, "height", 1), read_int_attr(f, "width", 1), read_int_attr(f, "num_bands", 1)
    obs_names, param_names = _json(f, "obs_names", list), _json(f, "param_names", list)
    has_truth = bool(read_attr(f, "has_truth"))
    keys = _json(f, "attrs_keys", list)
    if len(obs_names) != m:
        raise ValueError(f"{str(path)!r}: {len(obs_names)} obs_names for {m} bands")
    _check_dataset(f, path, "y", (h, w, m))
    if has_truth:
        if not param_names:
            raise ValueError(f"{str(path)!r}: has_truth is set but param_names is empty")
        _check_dataset(f, path, "truth", (h, w, len(param_names)))
    attrs = {}
    for key in keys:
        if not isinstance(key, str) or key not in f.attrs:
            raise ValueError(f"{str(path)!r}: attrs_keys names {key!r}, which the file does not hold")
        attrs[key] = _json(f, key, object)
    info = ImageInfo(str(path), h, w, m, obs_names, param_names, has_truth, version,
                     str(read_attr(f, "sbi_inn_version")), str(read_attr(f, "created")), attrs)
    if obs_shape is not None:
        check_bands(info, obs_shape)
    return info


def check_bands(info: ImageInfo, obs_shape) -> None:
    """Refuse an image whose pixels are not observations of shape ``obs_shape`` (a posterior's ``(M,)``).

    Raises:
        ValueError: "{path}: the image has 8 bands, the posterior takes 16" (or takes a non-vector shape).
    """
    obs_shape = tuple(int(s) for s in obs_shape)
    if len(obs_shape) != 1:
        raise ValueError(f"{info.path}: image pixels are vectors of {info.num_bands} bands, but the posterior takes "
                         f"observations of shape {obs_shape}")
    if obs_shape[0] != info.num_bands:
        raise ValueError(f"{info.path}: the image has {info.num_bands} bands, the posterior takes {obs_shape[0]}")


def _check_dataset(f, path, name, shape) -> None:
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{str(path)!r} has no dataset {name!r}: not a complete sbi_inn image")
    if ds.dtype.kind != "f":
        raise ValueError(f"{str(path)!r}: dataset {name!r} has dtype {ds.dtype}; it must hold floating-point numbers")
    if ds.shape != shape:
        raise ValueError(f"{str(path)!r}: dataset {name!r} has shape {ds.shape}, the attributes say {shape}")


def _text(v) -> str | None:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v if isinstance(v, str) else None


def _json(f, key, kind):
    try:
        value = json.loads(read_attr(f, key))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{f.filename!r}: attribute {key!r} is not valid JSON ({err})") from None
    if kind is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{f.filename!r}: attribute {key!r} must be a JSON list of strings, got {value!r}")
    return value


def _real_array(name: str, value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of real numbers ({err})") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float32)


def _names(name: str, names, count: int, prefix: str) -> list[str]:
    if names is None:
        return [f"{prefix}{i}" for i in range(count)]
    if isinstance(names, str):
        raise TypeError(f"{name} must be a list of {count} names, got the string {names!r}")
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{name} has {len(names)} names for {count} columns")
    return names


def _encode_attrs(attrs) -> dict[str, str]:
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict of JSON-serialisable values, got {type(attrs).__name__}")
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"attrs keys must be non-empty strings, got {key!r}")
        if key in _RESERVED:
            raise ValueError(f"attrs key {key!r} is one of the image format's own attributes ({', '.join(_RESERVED)})")
        try:
            out[key] = json.dumps(value, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"attrs[{key!r}] is not JSON-serialisable ({err})") from None
    return out


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Whole-row chunks of about ``_CHUNK_BYTES`` (wider rows are split along the width)."""
    h, w, c = shape
    row_bytes = w * c * 4
    if row_bytes <= _CHUNK_BYTES:
        return max(1, min(h, _CHUNK_BYTES // row_bytes)), w, c
    return 1, max(1, min(w, _CHUNK_BYTES // (c * 4))), c
