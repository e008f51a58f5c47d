"""Batch inference over a file: one amortised posterior run chunk by chunk over ``B`` observations, the results
written chunk by chunk to an HDF5 file, resumable, locally or on a Dask cluster.

The observations are the ``y`` rows of a simulation file (:mod:`sbi_inn.data`) or the pixels of an observation
image (:mod:`sbi_inn.images`), flattened row-major (pixel ``p`` is row ``p // W``, column ``p % W``). They are cut
into chunks of ``chunk_rows`` consecutive observations; memory stays bounded by one chunk (per worker) whatever
``B`` is. Two outputs share the engine:

* :func:`sample_to_hdf5`: raw samples, dataset ``samples`` ``(n, B, D)``.
* :func:`posterior_maps`: per-observation summaries, float32, shaped like the input, ``(H, W, D)`` for an image or
  ``(B, D)`` for a simulation file: ``mean``, ``std``, ``median``, ``point`` (the point estimate, see below),
  ``width68`` (the width ``q84 - q16`` of the central 68 % interval) and, when asked for, ``quantiles``
  ``(Q, H, W, D)`` with the levels in its ``levels`` attribute. Quantiles interpolate linearly between order
  statistics (``numpy.quantile``'s default). Each observation's summaries depend on its own samples only, bit for
  bit, not on the chunk it was computed in.

The point estimate (attribute ``point_estimate``) is the per-parameter posterior median by default
(``point="median"``; ``point`` is then an HDF5 hard link to ``median``, stored once), or the mode by mean shift
(``point="mean_shift"``, :func:`sbi_inn.meanshift.mean_shift`, thesis sec. 4.2.3, run per chunk: its stopping
rule looks at the whole chunk), which costs about 3-4 times the sampling itself for 256 samples of 4 parameters.

Seeds: chunk ``k`` is sampled as ``posterior.sample_batched((n,), Y_k, seed=SeedTree(seed).seed("inference", k),
max_rows=MAX_ROWS)``, where ``Y_k`` are the chunk's observations that are inferred (all of them, or the finite ones
with ``on_nan="mask"``), in order. Each observation draws its latent noise from its own generator
(``ConditionalINN.sample_given``), so for ``n <= 4096`` (``Posterior.sample`` draws up to 4096 samples at once)
and ``chunk_rows=1`` observation ``p`` gets exactly ``posterior.sample((n,), y_p,
seed=SeedTree(seed).seed("inference", p))``. The results depend on the seed, the
chunking and the device kind (CPU or CUDA), never on the number of workers or the order chunks finish in.

NaN or inf observations: ``on_nan="raise"`` (default) refuses the input before any work, naming the first bad
pixels (rows); ``on_nan="mask"`` skips them: the output's ``mask`` (``(H, W)`` or ``(B,)``, true where inferred)
marks them and their results are NaN. A band count other than the posterior's is refused before any work.

The output file (format ``sbi_inn.inference``, version 1) records its settings as attributes: ``kind``
(``"samples"`` / ``"summaries"``), ``seed``, ``chunk_rows``, ``num_samples``, ``max_rows``, ``quantiles``,
``point_estimate``, ``on_nan``, ``device``, ``sbi_inn_version``, ``model_hash`` (SHA-256 of the posterior's
configuration and weights: the same for a saved file and the posterior loaded from it), ``model_path``,
``input_path``, ``input_kind``, ``input_hash`` (SHA-256 of the observations read), ``input_shape`` and
``param_names``. The dataset ``done`` ``(C,)`` uint8 holds one flag per chunk: it is set and flushed only after the
chunk's results were written and flushed, which is the commit point. Running the same call again resumes a killed
run: finished chunks are kept, the others computed; an output written with other settings is refused naming the
field. An existing file that is not such an output is never replaced unless ``overwrite=True``. The output is
locked (:mod:`sbi_inn.locking`) while written.

Dask: with ``client=`` (a ``distributed.Client``) or ``workers=`` / ``scheduler=`` (:func:`sbi_inn.distributed.
client_for`), the client process reads each chunk's observations and sends them with the posterior's *file path*
to a worker, which loads the posterior once per process with ``load_posterior(path, device="cpu")`` (checking its
hash), samples on one torch thread and returns arrays; the client writes them as they arrive. The result equals
the single-process run on CPU bit for bit. The workers must see the posterior file at the same path (a shared file
system on a real cluster); the observations travel with the tasks. A script that starts a local cluster
(``workers=N``) must call it under ``if __name__ == "__main__":``, since the worker processes import the script.

Example:
    >>> import os, tempfile, numpy as np
    >>> from sbi_inn.images import write_observation_image
    >>> d = tempfile.mkdtemp()
    >>> image = write_observation_image(os.path.join(d, "img.h5"), np.ones((2, 3, 2), np.float32))
    >>> # posterior_maps("model.sbi", image, os.path.join(d, "maps.h5"), num_samples=256, seed=0)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from sbi_inn._version import __version__
from sbi_inn.hdf5_format import COMPRESSION, utc_now
from sbi_inn.images import FORMAT as IMAGE_FORMAT
from sbi_inn.images import check_bands, image_info, nonfinite_pixels, pixel_text, read_pixels
from sbi_inn.locking import exclusive_lock
from sbi_inn.posterior import SAMPLE_CHUNK_ROWS, Posterior, load_posterior, resolve_device
from sbi_inn.simulation import SeedTree, check_seed

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_ROWS", "POINT_ESTIMATES", "model_hash", "posterior_maps",
           "read_inference", "sample_to_hdf5", "summarise"]

FORMAT = "sbi_inn.inference"
FORMAT_VERSION = 1
MAX_ROWS = 4 * SAMPLE_CHUNK_ROWS
"""``max_rows`` of every chunk's ``sample_batched`` call (recorded). 4x ``Posterior.sample``'s 4096: one flow pass
over 64 pixels x 256 samples instead of 16 x 256 sampled a tissue image 1.3-1.5x as fast on two threads (fewer, larger
matrix products; `benchmarks/bench_maps.py`) for ~10 MiB more memory; for one observation of up to 4096 samples the
draws are the same either way."""
POINT_ESTIMATES = ("median", "mean_shift")
_ON_NAN = ("raise", "mask")
_WIDTH_LEVELS = (0.16, 0.84)
_SUMMARIES = ("mean", "std", "median", "width68")
_CHUNK_BYTES = 1 << 20
_SCAN_ROWS = 1 << 16  # observations read at once when hashing and checking the input


# -- public API ---------------------------------------------------------------------------------------------------
def posterior_maps(posterior: Posterior | str | os.PathLike, observations: str | os.PathLike,
                   output: str | os.PathLike, *, num_samples: int = 256, seed: int = 0, quantiles: Sequence[float] = (),
                   point: str = "median", chunk_rows: int = 1024, on_nan: str = "raise", overwrite: bool = False,
                   client=None, workers: int | None = None, scheduler: str | None = None,
                   device: str | torch.device = "auto", show_progress: bool = True) -> dict[str, Any]:
    """Per-observation posterior summaries of an image's pixels (or a simulation file's rows), written chunk by
    chunk to ``output`` (format and guarantees: module docstring).

    Args:
        posterior: a :class:`~sbi_inn.posterior.Posterior` or the path of a saved one (a path is required on Dask).
        observations: an observation image (``sbi_inn.image``) or a simulation file (``sbi_inn.simulations``).
        output: the HDF5 file to write (or resume); never one of the inputs.
        num_samples: posterior samples per observation, at least 2.
        seed: non-negative integer; chunk ``k`` is sampled with ``SeedTree(seed).seed("inference", k)``.
        quantiles: extra quantile levels in ``(0, 1)`` for the ``quantiles`` dataset ``(Q, H, W, D)``.
        point: the point estimate, ``"median"`` or ``"mean_shift"``.
        chunk_rows: observations per chunk (the unit of seeding, resumption and work per task); a chunk in flight
            takes about ``20 * chunk_rows * num_samples * D`` bytes.
        on_nan: ``"raise"`` refuses NaN/inf observations naming them; ``"mask"`` skips and masks them.
        overwrite: replace an existing ``output`` instead of resuming it or refusing.
        client, workers, scheduler: run the chunks on Dask: a ``distributed.Client``, or the number of local
            worker processes, or a scheduler address (:func:`sbi_inn.distributed.client_for`).
        device: where to sample in this process (``"auto"``: CUDA when available); Dask workers use the CPU.
        show_progress: a tqdm bar over chunks.

    Returns:
        ``{"path", "kind", "shape", "num_observations", "num_masked", "num_chunks", "num_new_chunks",
        "completed", "wall_time_s", "observations_per_second", "datasets"}``.

    Raises:
        ValueError: bad arguments, a band count or observation shape the posterior does not take, NaN/inf
            observations with ``on_nan="raise"``, an output written with other settings (naming the field), or an
            output path that is one of the inputs.
        FileExistsError: ``output`` exists and is not an inference output, without ``overwrite``.
        sbi_inn.locking.OutputLockedError: another process is writing ``output``.
    """
    if isinstance(num_samples, int) and not isinstance(num_samples, bool) and num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 for summaries (quantiles need several draws), got "
                         f"{num_samples}")
    return _run(posterior, observations, output, kind="summaries", num_samples=num_samples, seed=seed,
                quantiles=quantiles, point=point, chunk_rows=chunk_rows, on_nan=on_nan, overwrite=overwrite,
                client=client, workers=workers, scheduler=scheduler, device=device, show_progress=show_progress)


def sample_to_hdf5(posterior: Posterior | str | os.PathLike, observations: str | os.PathLike,
                   output: str | os.PathLike, *, num_samples: int, seed: int = 0, chunk_rows: int = 1024,
                   on_nan: str = "raise", overwrite: bool = False, client=None, workers: int | None = None,
                   scheduler: str | None = None, device: str | torch.device = "auto",
                   show_progress: bool = True) -> dict[str, Any]:
    """Raw posterior samples ``(n, B, D)`` for every observation of a simulation file (or pixel of an image, ``B =
    H * W`` row-major), written chunk by chunk to dataset ``samples`` of ``output``: ``sample_batched`` over an HDF5
    file. Arguments, return value and errors as in :func:`posterior_maps` (no ``quantiles`` or ``point``)."""
    return _run(posterior, observations, output, kind="samples", num_samples=num_samples, seed=seed, quantiles=(),
                point="median", chunk_rows=chunk_rows, on_nan=on_nan, overwrite=overwrite, client=client,
                workers=workers, scheduler=scheduler, device=device, show_progress=show_progress)


def read_inference(path: str | os.PathLike) -> dict[str, Any]:
    """The settings (attributes, JSON decoded) of an inference output and its progress: ``chunks_done``,
    ``num_chunks``, ``completed`` and the dataset names.

    Raises:
        FileNotFoundError: no such file. ValueError: not an inference output.
    """
    with _open_output(path, "r") as f:
        attrs = {key: _decode(f.attrs[key]) for key in f.attrs}
        done = f["done"][()]
        attrs.update(chunks_done=int(done.sum()), num_chunks=len(done), completed=bool(done.all()),
                     datasets=sorted(f))
    return attrs


def summarise(samples: torch.Tensor, *, quantiles: Sequence[float] = (), point: str = "median") -> dict[str, Any]:
    """The summaries :func:`posterior_maps` writes, of samples ``(n, B, D)``.

    Returns:
        float32 numpy arrays ``mean``, ``std``, ``median``, ``point``, ``width68`` ``(B, D)`` and, with
        ``quantiles``, ``quantiles`` ``(Q, B, D)``.

    Example:
        >>> s = torch.arange(5.0).reshape(5, 1, 1)
        >>> out = summarise(s, quantiles=(0.25,))
        >>> out["median"].item(), round(out["width68"].item(), 4), out["quantiles"].item()
        (2.0, 2.72, 1.0)
    """
    n = samples.shape[0]
    levels = [*_WIDTH_LEVELS, 0.5, *quantiles]
    per_obs = samples.permute(1, 2, 0).contiguous()  # (B, D, n): reductions along contiguous rows, so an
    # observation's summaries are the same bits whichever chunk it was computed in
    q = _quantiles(per_obs.sort(dim=-1).values, levels)  # (len(levels), B, D)
    out = {"mean": per_obs.mean(-1), "std": per_obs.std(-1) if n > 1 else torch.zeros_like(samples[0]),
           "median": q[2], "width68": q[1] - q[0]}
    if quantiles:
        out["quantiles"] = q[3:]
    if point == "mean_shift":
        from sbi_inn.meanshift import mean_shift

        out["point"] = mean_shift(samples)
    else:
        out["point"] = out["median"]
    return {k: v.to(torch.float32).cpu().numpy() for k, v in out.items()}


def _quantiles(ordered: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Quantiles ``(L, B, D)`` of samples ``(B, D, n)`` sorted along the last axis, at ``levels``, interpolating
    linearly between the order statistics around position ``level * (n - 1)`` (``numpy.quantile``'s default)."""
    n = ordered.shape[-1]
    pos = torch.tensor(list(levels), dtype=torch.float64) * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = pos.ceil().long().clamp(0, n - 1)
    frac = (pos - lo).to(device=ordered.device, dtype=ordered.dtype)
    a, b = ordered[..., lo.to(ordered.device)], ordered[..., hi.to(ordered.device)]  # (B, D, L)
    return (a + frac * (b - a)).permute(2, 0, 1)


def model_hash(posterior: Posterior) -> str:
    """SHA-256 (hex) of a posterior's configuration, names, observation shape and weights: equal for a saved file
    and the posterior loaded from it, different when any weight differs."""
    digest = hashlib.sha256()
    header = {"model": posterior.model.config(), "param_names": posterior.param_names,
              "obs_shape": list(posterior.obs_shape), "is_set_valued": posterior.is_set_valued}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in sorted(posterior.model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


# -- settings and inputs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    kind: str
    num_samples: int
    seed: int
    chunk_rows: int
    quantiles: tuple[float, ...]
    point: str
    on_nan: str
    max_rows: int = MAX_ROWS


@dataclass(frozen=True)
class _Input:
    """The observations: a checked image or simulation file, its shape and a reader of row ranges."""

    path: str
    kind: str  # "image" or "simulations"
    shape: tuple[int, ...]  # (H, W) or (B,)
    obs_dim: int
    is_set_valued: bool

    @property
    def num_rows(self) -> int:
        return math.prod(self.shape)

    @contextlib.contextmanager
    def reader(self) -> Iterator:
        """A function ``(start, stop) -> (y float32 (b, M) or (b, K, M), sizes (b,) int64 or None)``."""
        if self.kind == "image":
            with h5py.File(self.path, "r") as f:
                yield lambda a, b: (read_pixels(f, a, b, self.shape[1]), None)
            return
        from sbi_inn.data import HDF5Dataset

        ds = HDF5Dataset(self.path, "all")
        try:
            def read(a: int, b: int):
                batch = ds.get_batch(np.arange(a, b))
                sizes = batch[2].sum(-1).numpy().astype(np.int64) if self.is_set_valued else None
                return batch[1].numpy(), sizes
            yield read
        finally:
            ds.close()


def _open_input(path, posterior: Posterior) -> _Input:
    """The observations at ``path``, refused unless the posterior takes them (before any work)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such observation file: {path!r}")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    except OSError as err:
        raise ValueError(f"cannot read {path!r} as an HDF5 file ({err}); observations for batch inference are an "
                         "observation image or a simulation file") from None
    if fmt == IMAGE_FORMAT:
        if posterior.is_set_valued:
            raise ValueError(f"{path} is an image of vector pixels, but the posterior takes sets")
        info = image_info(path)
        check_bands(info, posterior.obs_shape)
        return _Input(path, "image", info.shape, info.num_bands, False)
    from sbi_inn.data import HDF5Dataset
    from sbi_inn.observations import check_obs_shape

    try:
        ds = HDF5Dataset(path, "all")
    except ValueError as err:
        raise ValueError(f"{err}; batch inference reads an observation image (sbi_inn.images) or a simulation "
                         "file") from None
    ds.close()
    if ds.is_set_valued != posterior.is_set_valued:
        raise ValueError(f"{path} is {'' if ds.is_set_valued else 'not '}set-valued but the posterior is"
                         f"{'' if posterior.is_set_valued else ' not'}")
    check_obs_shape(np.zeros((0, *([1] if ds.is_set_valued else []), ds.obs_dim)), obs_shape=posterior.obs_shape,
                    is_set_valued=posterior.is_set_valued, source=path)
    if len(ds) == 0:
        raise ValueError(f"{path} holds no observations")
    return _Input(path, "simulations", (len(ds),), ds.obs_dim, ds.is_set_valued)


def _scan(inp: _Input, on_nan: str, show_progress: bool) -> tuple[str, np.ndarray]:
    """``(hash, valid (B,) bool)``: SHA-256 of the observations (and set sizes), and which are finite."""
    digest = hashlib.sha256(json.dumps({"kind": inp.kind, "shape": inp.shape}).encode())
    valid = np.empty(inp.num_rows, dtype=bool)
    rows = _SCAN_ROWS if inp.kind == "image" else 4096
    with inp.reader() as read:
        for a in tqdm(range(0, inp.num_rows, rows), disable=not show_progress, desc="checking input", unit="block",
                      leave=False):
            b = min(inp.num_rows, a + rows)
            y, sizes = read(a, b)
            digest.update(np.ascontiguousarray(y).tobytes())
            if sizes is not None:
                digest.update(sizes.tobytes())
                members = np.arange(y.shape[1])[None, :] < sizes[:, None]
                y = np.where(members[..., None], y, 0.0)
            valid[a:b] = True
            valid[a + nonfinite_pixels(y.reshape(b - a, -1))] = False
    if on_nan == "raise" and not valid.all():
        bad = np.flatnonzero(~valid)
        where = (pixel_text(bad, inp.shape[1]) + " of the image" if inp.kind == "image" else
                 ("row " if len(bad) == 1 else "rows ") + ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5
                                                                                         else ""))
        raise ValueError(f"{inp.path}: {where} hold NaN or inf ({len(bad)} in all); pass on_nan='mask' to skip and "
                         "mask them (their results are NaN)")
    return digest.hexdigest(), valid


def _check_settings(num_samples, seed, chunk_rows, quantiles, point, on_nan, kind) -> _Settings:
    for name, value, least in (("num_samples", num_samples, 1), ("chunk_rows", chunk_rows, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer >= {least}, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value}")
    seed = check_seed(seed)
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence):
        raise TypeError(f"quantiles must be a sequence of levels in (0, 1), got {quantiles!r}")
    levels = []
    for q in quantiles:
        if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)) or not 0 < q < 1:
            raise ValueError(f"quantiles must be levels strictly between 0 and 1, got {q!r}")
        levels.append(float(q))
    if len(set(levels)) != len(levels):
        raise ValueError(f"quantiles must not repeat a level, got {levels}")
    if point not in POINT_ESTIMATES:
        raise ValueError(f"point must be one of {POINT_ESTIMATES}, got {point!r}")
    if on_nan not in _ON_NAN:
        raise ValueError(f"on_nan must be one of {_ON_NAN}, got {on_nan!r}")
    return _Settings(kind, int(num_samples), seed, int(chunk_rows), tuple(levels), point, on_nan)


# -- the engine ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    """One chunk's work: its index, the observations to infer (the chunk's valid rows) and what to compute."""

    index: int
    start: int
    stop: int
    valid: np.ndarray  # (stop - start,) bool
    y: np.ndarray  # (v, M) or (v, K, M), the valid rows only
    sizes: np.ndarray | None
    settings: _Settings
    model_path: str | None = None
    model_hash: str | None = None


def _run(posterior, observations, output, *, kind, num_samples, seed, quantiles, point, chunk_rows, on_nan,
         overwrite, client, workers, scheduler, device, show_progress) -> dict[str, Any]:
    t0 = time.perf_counter()
    settings = _check_settings(num_samples, seed, chunk_rows, quantiles, point, on_nan, kind)
    distributed = client is not None or workers is not None or scheduler is not None
    if client is not None and (workers is not None or scheduler is not None):
        raise ValueError("give either client= or workers= / scheduler=, not both")
    model_path = None
    if isinstance(posterior, (str, os.PathLike)):
        model_path = str(Path(posterior).resolve())
        posterior = load_posterior(model_path, device="cpu" if distributed else device)
    elif not isinstance(posterior, Posterior):
        raise TypeError(f"posterior must be a Posterior or the path of a saved one, got {type(posterior).__name__}")
    elif distributed:
        raise ValueError("Dask workers load the posterior from its file: save it (posterior.save(path)) and pass "
                         "the path instead of the object")
    dev = "cpu" if distributed else posterior.device.type
    if not distributed and str(device) != "auto" and resolve_device(device) != posterior.device:
        posterior = copy.deepcopy(posterior).to(resolve_device(device))  # the caller's object stays where it is
        dev = posterior.device.type
    out = Path(output)
    if out.is_dir():
        raise IsADirectoryError(f"output {str(output)!r} is a directory; give a file name such as "
                                f"{str(out / 'maps.h5')!r}")
    for given in (observations, model_path):
        if given is not None and out.exists() and Path(given).exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"output {str(output)!r} is one of the inputs; it is never written over")
    inp = _open_input(observations, posterior)
    input_hash, valid = _scan(inp, settings.on_nan, show_progress)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "seed": settings.seed,
              "chunk_rows": settings.chunk_rows, "num_samples": settings.num_samples, "max_rows": settings.max_rows,
              "quantiles": json.dumps(settings.quantiles), "point_estimate": settings.point,
              "on_nan": settings.on_nan, "device": dev, "sbi_inn_version": __version__,
              "model_hash": model_hash(posterior), "input_kind": inp.kind, "input_hash": input_hash,
              "input_shape": json.dumps(inp.shape), "param_names": json.dumps(posterior.param_names)}
    num_chunks = -(-inp.num_rows // settings.chunk_rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out, what="inference output"):
        f = _open_or_create(out, header, inp, valid, posterior.param_dim, num_chunks, overwrite,
                            {"model_path": model_path or "", "input_path": str(Path(inp.path).resolve())})
        try:
            done = f["done"][()].astype(bool)
            todo = [k for k in range(num_chunks) if not done[k]]
            bar = tqdm(total=num_chunks, initial=num_chunks - len(todo), disable=not show_progress,
                       desc="inference", unit="chunk")
            tasks = _tasks(inp, valid, todo, settings, model_path, header["model_hash"])
            with warnings.catch_warnings(record=True) as caught, bar:
                warnings.simplefilter("always")
                if distributed:
                    _run_dask(f, tasks, client, workers, scheduler, inp, kind, bar)
                else:
                    for task in tasks:
                        _commit(f, task, _compute(posterior, task), inp, kind)
                        bar.update()
            _rewarn(caught, num_chunks)
            f.attrs.update(completed=True, updated=utc_now())
            f.flush()
            datasets = sorted(f)
        finally:
            f.close()
    seconds = time.perf_counter() - t0
    new_rows = sum(min(inp.num_rows, (k + 1) * settings.chunk_rows) - k * settings.chunk_rows for k in todo)
    return {"path": str(out), "kind": kind, "shape": inp.shape, "num_observations": inp.num_rows,
            "num_masked": int((~valid).sum()), "num_chunks": num_chunks, "num_new_chunks": len(todo),
            "completed": True, "wall_time_s": seconds,
            "observations_per_second": new_rows / seconds if seconds > 0 else math.inf, "datasets": datasets}


def _tasks(inp: _Input, valid: np.ndarray, todo: list[int], settings: _Settings, model_path, mhash) -> Iterator[_Task]:
    """The chunks still to compute, their observations read lazily (one chunk at a time)."""
    with inp.reader() as read:
        for k in todo:
            a, b = k * settings.chunk_rows, min(inp.num_rows, (k + 1) * settings.chunk_rows)
            v = valid[a:b]
            y, sizes = read(a, b)
            yield _Task(k, a, b, v, np.ascontiguousarray(y[v]), None if sizes is None else sizes[v], settings,
                        model_path, mhash)


def _compute(posterior: Posterior, task: _Task) -> dict[str, np.ndarray]:
    """Chunk ``task.index``'s results for all its rows (NaN where not inferred): ``samples`` ``(n, b, D)`` or the
    summaries of :func:`summarise`."""
    s, b, d = task.settings, task.stop - task.start, posterior.param_dim
    if task.valid.any():
        seed = SeedTree(s.seed).seed("inference", task.index)
        sizes = None if task.sizes is None else torch.from_numpy(task.sizes)
        samples = posterior.sample_batched((s.num_samples,), torch.from_numpy(task.y), sizes=sizes, seed=seed,
                                           max_rows=s.max_rows)
        found = {"samples": samples.cpu().numpy()} if s.kind == "samples" else summarise(
            samples, quantiles=s.quantiles, point=s.point)
    else:
        found = {}
    out = {}
    for name, shape in _layout(s, d).items():
        full = np.full((*shape[:-2], b, d), np.nan, dtype=np.float32)
        if name in found:
            full[..., task.valid, :] = found[name]
        out[name] = full
    return out


def _layout(s: _Settings, d: int) -> dict[str, tuple[int, ...]]:
    """Per dataset, the shape of one chunk's results with ``1`` standing for its rows: ``(lead..., 1, D)``."""
    if s.kind == "samples":
        return {"samples": (s.num_samples, 1, d)}
    layout = {name: (1, d) for name in _SUMMARIES}
    if s.point != "median":
        layout["point"] = (1, d)
    if s.quantiles:
        layout["quantiles"] = (len(s.quantiles), 1, d)
    return layout


# worker side: one posterior per worker process, loaded from its path
_WORKER_POSTERIORS: dict[tuple[str, str], Posterior] = {}


def _worker_chunk(task: _Task) -> tuple[int, dict[str, np.ndarray]]:
    """Run on a Dask worker: load (once) the posterior at ``task.model_path`` on the CPU, check its hash, compute."""
    key = (task.model_path, task.model_hash)
    posterior = _WORKER_POSTERIORS.get(key)
    if posterior is None:
        posterior = load_posterior(task.model_path, device="cpu")
        found = model_hash(posterior)
        if found != task.model_hash:
            raise ValueError(f"the posterior at {task.model_path} on this worker differs from the one the client "
                             f"read (hash {found[:12]} vs {task.model_hash[:12]}); workers must see the same file")
        _WORKER_POSTERIORS.clear()
        _WORKER_POSTERIORS[key] = posterior
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return task.index, _compute(posterior, task)
    finally:
        torch.set_num_threads(threads)


def _run_dask(f: h5py.File, tasks: Iterator[_Task], client, workers, scheduler, inp: _Input, kind: str, bar) -> None:
    from sbi_inn.distributed import client_for, map_as_completed, require_distributed

    require_distributed("batch inference on Dask")
    context = contextlib.nullcontext(client) if client is not None else client_for(
        workers, scheduler, feature="batch inference on Dask")
    with context as cl:
        if cl is None:  # workers=1: run here, on the CPU, as a worker would
            for task in tasks:
                _commit(f, task, _worker_chunk(task)[1], inp, kind)
                bar.update()
            return
        by_index = {}

        def submitted() -> Iterator[_Task]:
            for task in tasks:
                by_index[task.index] = task
                yield task

        for _, (k, arrays) in map_as_completed(cl, _worker_chunk, submitted(), what="chunk", key="sbi-inn-chunk"):
            _commit(f, by_index.pop(k), arrays, inp, kind)
            bar.update()


# -- the output file ----------------------------------------------------------------------------------------------
def _open_or_create(out: Path, header: dict, inp: _Input, valid: np.ndarray, d: int, num_chunks: int,
                    overwrite: bool, paths: dict) -> h5py.File:
    if out.exists() and not overwrite:
        f = _open_output(out, "r+", hint=True)
        try:
            for key, want in header.items():
                have = _decode(f.attrs.get(key))
                if have != _decode(want):
                    raise ValueError(f"{str(out)!r} was written with a different {key}: file has {have!r}, this call "
                                     f"has {_decode(want)!r}; pass overwrite=True to replace it, or use another path")
            done = f.get("done")
            if not isinstance(done, h5py.Dataset) or done.shape != (num_chunks,):
                raise ValueError(f"{str(out)!r}: dataset 'done' is missing or not of shape ({num_chunks},); the file "
                                 "is damaged: pass overwrite=True to replace it")
        except BaseException:
            f.close()
            raise
        return f
    if out.exists():
        out.unlink()
    f = h5py.File(out, "w")
    try:
        f.attrs.update(header)
        f.attrs.update(paths, created=utc_now(), updated=utc_now(), completed=False, num_chunks=num_chunks)
        settings = _Settings(header["kind"], header["num_samples"], header["seed"], header["chunk_rows"],
                             tuple(json.loads(header["quantiles"])), header["point_estimate"], header["on_nan"])
        for name, shape in _layout(settings, d).items():
            full = (*shape[:-2], *_row_shape(inp, header["kind"]), d)
            ds = f.create_dataset(name, shape=full, dtype=np.float32, fillvalue=np.nan,
                                  chunks=_chunks(full, len(shape) - 2), **COMPRESSION)
            if name == "quantiles":
                ds.attrs["levels"] = json.dumps(settings.quantiles)
            if name == "width68":
                ds.attrs["levels"] = json.dumps(_WIDTH_LEVELS)
        if header["kind"] == "summaries" and settings.point == "median":
            f["point"] = f["median"]  # a hard link: the median is the point estimate, stored once
        f.create_dataset("mask", data=valid.reshape(inp.shape), **COMPRESSION)
        f.create_dataset("done", shape=(num_chunks,), dtype=np.uint8, fillvalue=0)
        f.flush()
    except BaseException:
        f.close()
        raise
    return f


def _row_shape(inp: _Input, kind: str) -> tuple[int, ...]:
    """How the observation axis is laid out in the output: ``(H, W)`` for image summaries, else ``(B,)``."""
    return inp.shape if kind == "summaries" else (inp.num_rows,)


def _commit(f: h5py.File, task: _Task, arrays: dict[str, np.ndarray], inp: _Input, kind: str) -> None:
    """Write one chunk's results, flush, then set and flush its ``done`` flag (the commit point)."""
    width = inp.shape[1] if kind == "summaries" and inp.kind == "image" else None
    for name, values in arrays.items():
        _write_rows(f[name], task.start, task.stop, values, width)
    f.flush()
    f["done"][task.index] = 1
    f.flush()


def _write_rows(ds: h5py.Dataset, a: int, b: int, values: np.ndarray, width: int | None) -> None:
    """Write ``values`` ``(lead..., b - a, D)`` to observations ``a:b`` of ``ds``; with ``width``, ``ds`` is
    ``(lead..., H, W, D)`` and observation ``p`` is pixel ``(p // width, p % width)``."""
    if width is None:
        ds[..., a:b, :] = values
        return
    p, i = a, 0
    while p < b:
        r, c = divmod(p, width)
        if c == 0 and b - p >= width:  # whole rows at once
            rows = (b - p) // width
            ds[..., r:r + rows, :, :] = values[..., i:i + rows * width, :].reshape(
                *values.shape[:-2], rows, width, values.shape[-1])
            step = rows * width
        else:  # part of one row
            step = min(width - c, b - p)
            ds[..., r, c:c + step, :] = values[..., i:i + step, :]
        p, i = p + step, i + step


def _chunks(shape: tuple[int, ...], lead: int) -> tuple[int, ...]:
    """HDF5 chunks of about 1 MiB for a dataset ``(lead axes..., observation axes..., D)``: cut along the
    observation axes first (rows of an image before its columns), so writing one engine chunk of consecutive
    observations touches few HDF5 chunks; then along the leading axes (samples, quantile levels); never along D."""
    chunks = list(shape)
    order = [*range(lead, len(shape) - 1), *range(lead)]
    for axis in order:
        size = 4 * math.prod(chunks)
        if size <= _CHUNK_BYTES:
            break
        chunks[axis] = max(1, chunks[axis] * _CHUNK_BYTES // size)
    return tuple(max(1, c) for c in chunks)


def _open_output(path, mode: str, hint: bool = False) -> h5py.File:
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such inference output: {path!r}")
    suffix = "; pass overwrite=True to replace it" if hint else ""
    try:
        f = h5py.File(path, mode)
    except OSError as err:
        if hint:
            raise FileExistsError(f"{path} exists and is not a readable HDF5 file ({err}){suffix}") from None
        raise ValueError(f"cannot read {path!r} as an HDF5 file: {err}") from None
    if _decode(f.attrs.get("format")) != FORMAT:
        f.close()
        if hint:
            raise FileExistsError(f"{path} exists and is not an sbi_inn inference output{suffix}")
        raise ValueError(f"{path!r} is not an sbi_inn inference output (format {FORMAT!r})")
    return f


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _rewarn(caught: list, num_chunks: int) -> None:
    """Re-issue the warnings of all chunks once each kind (e.g. one OutsideTrainingWarning, not one per chunk)."""
    seen: dict[type, list] = {}
    for w in caught:
        seen.setdefault(w.category, []).append(w)
    for category, items in seen.items():
        first = str(items[0].message)
        more = f" (and in {len(items) - 1} more of the {num_chunks} chunks)" if len(items) > 1 else ""
        warnings.warn(f"{first}{more}", category, stacklevel=4)
