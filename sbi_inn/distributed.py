"""Running work on a Dask cluster: the one module of ``sbi_inn`` that imports ``dask.distributed``.

Dask is an optional dependency (``pip install "sbi_inn[distributed]"``); it is imported lazily, inside the functions
here, so ``import sbi_inn`` never needs it. Three pieces:

* :func:`require_distributed` - the ``distributed`` module, or an ``ImportError`` naming the extra to install and the
  feature that needed it.
* :func:`client_for` - a context manager yielding a ``distributed.Client``: connected to an existing scheduler, on a
  ``LocalCluster`` of worker processes started (and closed) here, or ``None`` for the single-process path.
* :func:`map_ordered` / :func:`map_as_completed` - submit ``fn(item)`` for many items with a bounded number in
  flight, retry a task whose worker died, and re-raise a task's exception as a :class:`RemoteTaskError` carrying the
  worker's traceback text.

What must hold on a cluster: ``fn`` and its arguments pickle (Dask uses cloudpickle, so lambdas defined in a script
work, but objects holding locks, open files or generators do not), and every module they refer to by name is
importable on the workers (a module-level function of an installed package, not of a script only the client has).

Example:
    >>> with client_for(workers=None) as client:  # no cluster: the caller runs things itself
    ...     client is None
    True
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_EXTRA = 'pip install "sbi_inn[distributed]"'
_DEFAULT_TIMEOUT_S = 10.0


class RemoteTaskError(RuntimeError):
    """A task raised on a Dask worker. The message holds the worker's traceback text; ``index`` is the task's
    position among the items, ``remote_traceback`` that text, and ``__cause__`` the original exception."""

    def __init__(self, message: str, *, index: int, remote_traceback: str):
        super().__init__(message)
        self.index = index
        self.remote_traceback = remote_traceback


class RemoteValueError(RemoteTaskError, ValueError):
    """A task raised a ``ValueError`` (e.g. a malformed simulator output): caught by ``except ValueError`` too."""


class RemoteTypeError(RemoteTaskError, TypeError):
    """A task raised a ``TypeError``: caught by ``except TypeError`` too."""


def require_distributed(feature: str):
    """The ``distributed`` module; ``ImportError`` saying which extra to install and which ``feature`` needed it."""
    try:
        import distributed
    except ImportError as err:
        raise ImportError(f"{feature} needs dask.distributed, which is not installed ({err}); install it with "
                          f"{_EXTRA}") from None
    return distributed


@contextlib.contextmanager
def client_for(workers: int | None = None, scheduler: str | None = None, *, threads_per_worker: int = 1,
               timeout: float = _DEFAULT_TIMEOUT_S, feature: str = "a Dask cluster") -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the ``with`` block (``None`` for the single-process path).

    Args:
        workers: ``N > 1`` starts a ``LocalCluster`` of ``N`` worker processes on this machine (closed on exit);
            ``None`` or ``1`` (with no ``scheduler``) yields ``None``: run in this process.
        scheduler: address of a running Dask scheduler (``"tcp://host:8786"``); the cluster is left running on exit.
        threads_per_worker: threads per local worker process (1 suits CPU-bound simulators that hold the GIL).
        timeout: seconds to wait for the scheduler (and for local workers to start).
        feature: what needs the cluster, for the error when Dask is missing.

    Raises:
        ValueError: both ``workers`` and ``scheduler``, ``workers < 1``, ``threads_per_worker < 1``, a bad timeout.
        TypeError: a non-integer ``workers`` or a non-string ``scheduler``.
        ConnectionError: the scheduler did not answer within ``timeout`` seconds.
        ImportError: Dask is not installed (the message names the extra).
    """
    if workers is not None:
        workers = _check_count("workers", workers)
    threads_per_worker = _check_count("threads_per_worker", threads_per_worker)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise TypeError(f"scheduler must be an address string such as 'tcp://host:8786', got {scheduler!r}")
        if workers is not None and workers != 1:
            raise ValueError(f"give either workers ({workers}, a local cluster) or scheduler ({scheduler!r}, an "
                             "existing cluster), not both")
    if scheduler is None and (workers is None or workers == 1):
        yield None
        return
    distributed = require_distributed(feature)
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler.strip(), timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s "
                                  f"({type(err).__name__}: {err}); start one with `dask scheduler` and workers with "
                                  "`dask worker ADDRESS`, or check the address") from None
        try:
            yield client
        finally:
            client.close()
        return
    # no dashboard, and the scheduler's HTTP routes on a free port (not 8787, which another cluster may hold)
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR,
                                       scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"})
    try:
        client = distributed.Client(cluster, timeout=timeout, set_as_default=False)
        try:
            client.wait_for_workers(workers, timeout=max(timeout, 60.0))
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def total_threads(client) -> int:
    """Worker threads (tasks that can run at once) on ``client``'s cluster now (at least 1)."""
    return max(1, sum(client.nthreads().values()))


def map_as_completed(client, fn: Callable, items: Iterable, *, start: int = 0, max_in_flight: int | None = None,
                     retries: int = 2, what: str = "task", key: str | None = None) -> Iterator[tuple[int, Any]]:
    """Run ``fn(item)`` on the cluster for each item, yielding ``(index, result)`` as tasks finish.

    Args:
        client: a ``distributed.Client``.
        fn: a picklable function of one item.
        items: the inputs; consumed lazily, so at most ``max_in_flight`` are submitted and not yet yielded.
        start: the index of the first item (e.g. the first chunk not yet on disk).
        max_in_flight: tasks submitted at once (default twice the worker threads, looked up as workers
            come and go).
        retries: resubmissions of a task whose worker died (Dask's ``KilledWorker``; the scheduler already moves a
            task off a dying worker ``distributed.scheduler.allowed-failures`` times before giving up). An exception
            raised by ``fn`` itself is not retried.
        what: what one task is, for error messages ("chunk" gives "chunk 7 failed on a Dask worker ...").
        key: prefix of the Dask task keys (default: ``fn``'s name).

    Raises:
        RemoteTaskError: a task raised; the message names the task and holds the worker's traceback. The tasks still
            running are cancelled.
    """
    yield from _map(client, fn, items, start=start, max_in_flight=max_in_flight, retries=retries, what=what, key=key,
                    ordered=False)


def map_ordered(client, fn: Callable, items: Iterable, *, start: int = 0, max_in_flight: int | None = None,
                retries: int = 2, what: str = "task", key: str | None = None) -> Iterator[tuple[int, Any]]:
    """:func:`map_as_completed` yielding ``(index, result)`` in index order: results that finish early are buffered,
    and the buffer counts towards ``max_in_flight``, so memory stays bounded (at most ``max_in_flight`` results held).

    A task that fails is reported only once every task before it was yielded, so a caller that writes results in
    order keeps everything that finished before the failing one.
    """
    yield from _map(client, fn, items, start=start, max_in_flight=max_in_flight, retries=retries, what=what, key=key,
                    ordered=True)


def _map(client, fn, items, *, start, max_in_flight, retries, what, key, ordered) -> Iterator[tuple[int, Any]]:
    distributed = require_distributed(f"running {what}s on a Dask cluster")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    retries = _check_count("retries", retries, minimum=0)
    fixed = None if max_in_flight is None else _check_count("max_in_flight", max_in_flight)
    limit_at = [0.0, 2]  # (time looked up, limit): with no fixed limit, twice the worker threads, looked up each second

    def limit() -> int:
        if fixed is not None:
            return fixed
        if time.monotonic() - limit_at[0] > 1.0:
            limit_at[:] = [time.monotonic(), 2 * total_threads(client)]
        return limit_at[1]
    prefix = f"{key or getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
    start = _check_count("start", start, minimum=0)
    source = iter(enumerate(items, start=start))
    pending = distributed.as_completed(loop=client.loop)
    index_of: dict[Any, int] = {}  # future -> item index
    inputs: dict[int, Any] = {}  # item index -> item, kept for a resubmission
    attempts: dict[int, int] = {}
    done: dict[int, Any] = {}  # finished, not yet yielded (ordered mode)
    failed: dict[int, BaseException] = {}
    next_out = start

    def submit(i: int, item) -> None:
        attempts[i] = attempts.get(i, -1) + 1
        fut = client.submit(fn, item, key=f"{prefix}-{i}-{attempts[i]}", pure=False, retries=0)
        index_of[fut] = i
        pending.add(fut)

    def fill() -> None:
        held = len(index_of) + (len(done) + len(failed) if ordered else 0)
        for i, item in itertools.islice(source, max(0, limit() - held)):
            inputs[i] = item
            submit(i, item)

    try:
        fill()
        while index_of:
            fut = next(pending)
            i = index_of.pop(fut)
            if fut.status == "finished":
                result = fut.result()
                inputs.pop(i, None)
                if not ordered:
                    yield i, result
                else:
                    done[i] = result
            else:
                err = _task_exception(fut)
                if isinstance(err, distributed.KilledWorker) and attempts[i] < retries:
                    submit(i, inputs[i])
                    continue
                if not ordered:
                    raise _remote_error(fut, err, i, what)
                failed[i] = _remote_error(fut, err, i, what)
            while ordered and (next_out in done or next_out in failed):
                if next_out in failed:
                    raise failed[next_out]
                yield next_out, done.pop(next_out)
                next_out += 1
            fill()
    finally:
        leftover = list(index_of)
        if leftover:
            client.cancel(leftover)


def _task_exception(fut) -> BaseException:
    try:
        return fut.exception()
    except BaseException as err:  # a cancelled future raises when asked
        return err


def _remote_error(fut, err: BaseException, index: int, what: str) -> RemoteTaskError:
    try:
        tb = fut.traceback()
        tb_text = "".join(traceback.format_exception(type(err), err, tb))
    except Exception:  # no traceback came back (e.g. the task was cancelled)
        tb_text = f"{type(err).__name__}: {err}\n"
    hint = ""
    if isinstance(err, (ImportError, AttributeError)) and "pickle" in tb_text.lower():
        hint = ("\n(the worker could not unpickle the task: its function and arguments must be importable there, "
                "e.g. a module-level function of a package installed on the workers)")
    if type(err).__name__ == "KilledWorker":
        hint = "\n(the worker running it died repeatedly: out of memory, a crash in native code, or os._exit?)"
    kind = RemoteValueError if isinstance(err, ValueError) else RemoteTypeError if isinstance(err, TypeError) \
        else RemoteTaskError
    out = kind(f"{what} {index} failed on a Dask worker: {type(err).__name__}: {err}{hint}\n"
                          f"Worker traceback:\n{tb_text}", index=index, remote_traceback=tb_text)
    out.__cause__ = err
    return out


# -- simulation chunks --------------------------------------------------------------------------------------------
def simulate_chunks_on(client, sim, num: int, *, chunk_size: int, seeds: Callable[[int], tuple[int, int]],
                       first_chunk: int = 0, show_progress: bool = False, desc: str = "simulating", initial: int = 0,
                       max_in_flight: int | None = None, retries: int = 2) -> Iterator:
    """:func:`sbi_inn.simulation.simulate_chunks` on a Dask cluster: the same chunks (chunk ``i`` depends on
    ``seeds(i)`` and its size only), yielded in chunk order whatever order the workers finish them in.

    Args:
        client: a ``distributed.Client``.
        sim: the :class:`sbi_inn.simulation.Simulation`; it is pickled to the workers (checked here first).
        num, chunk_size, seeds, first_chunk, show_progress, desc, initial: as for ``simulate_chunks``.
        max_in_flight: chunks submitted or finished but not yet yielded (default twice the worker threads), which
            bounds the memory held here.
        retries: resubmissions of a chunk whose worker died.

    Yields:
        :class:`sbi_inn.simulation.Chunk` ``first_chunk, first_chunk + 1, ...``; what the workers learned about a plain
        callable (set-valuedness, observation names, numpy-only) is copied onto ``sim``.

    Raises:
        TypeError: ``sim`` does not pickle (the message suggests a module-level function).
        WorkerImportError: a worker cannot unpickle ``sim`` (a module missing there).
        RemoteTaskError: a chunk failed on a worker (``RemoteValueError`` / ``RemoteTypeError`` for those types);
            the message names the chunk and holds the worker traceback. Every chunk before it was yielded first.
        ValueError: a plain callable returned sets in one chunk and plain arrays (or another width) in another.
    """
    from tqdm.auto import tqdm

    require_distributed("simulating on a Dask cluster")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not client.nthreads():
        import warnings

        warnings.warn("the Dask cluster has no workers yet: the chunks wait until some connect (scale the cluster or "
                      "start `dask worker ADDRESS`)", RuntimeWarning, stacklevel=3)
    check_on_workers(client, sim, f"the simulator {sim.name!r}")
    items = ((sim, seeds(i), min(chunk_size, num - i * chunk_size)) for i in range(first_chunk, -(-num // chunk_size)))
    with tqdm(total=num, initial=initial, disable=not show_progress, desc=desc, unit="sim", dynamic_ncols=True) as bar:
        for i, (chunk, state) in map_ordered(client, _simulate_chunk, items, start=first_chunk,
                                             max_in_flight=max_in_flight, retries=retries, what="simulation chunk",
                                             key="simulate-chunk"):
            _adopt(sim, state, chunk, i)
            yield chunk
            bar.update(len(chunk))


def _simulate_chunk(item) -> tuple[Any, dict[str, Any]]:
    """On a worker: one chunk ``(sim, seeds, n)`` and what simulating it taught the worker's copy of ``sim``."""
    sim, seeds, n = item
    chunk = sim.chunk(seeds, n)
    return chunk, {"is_set_valued": sim.is_set_valued, "obs_names": list(sim.obs_names), "use_numpy": sim.use_numpy}


def _adopt(sim, state: dict[str, Any], chunk, index: int) -> None:
    """Copy a worker's findings onto the client's ``sim``; refuse a chunk unlike the ones before it."""
    is_set = chunk.sizes is not None
    if sim.is_set_valued is None:
        sim.is_set_valued = is_set
    elif sim.is_set_valued != is_set:
        kind = ("(y, sizes) sets", "plain arrays") if is_set else ("plain arrays", "(y, sizes) sets")
        raise ValueError(f"simulator {sim.name!r} returned {kind[0]} in chunk {index} but {kind[1]} before; it must "
                         f"return the same kind of output every time{sim.expectation_hint}")
    width = chunk.y.shape[-1]
    if sim.obs_names and len(sim.obs_names) != width:
        raise ValueError(f"simulator {sim.name!r} returned {width} observation dimensions in chunk {index}, expected "
                         f"{len(sim.obs_names)} ({', '.join(sim.obs_names)}){sim.expectation_hint}")
    sim.obs_names = sim.obs_names or list(state["obs_names"])
    sim.use_numpy = sim.use_numpy or bool(state["use_numpy"])


class WorkerImportError(ImportError):
    """What a task needs cannot be unpickled on a worker (a module missing there)."""


def check_picklable(obj, what: str) -> bytes:
    """``obj`` pickled the way Dask sends it to workers (cloudpickle); ``TypeError`` when it cannot be."""
    require_distributed("sending work to Dask workers")
    from distributed.protocol.pickle import dumps

    try:
        return dumps(obj)
    except Exception as err:
        raise TypeError(f"{what} cannot be sent to Dask workers: pickling it failed ({type(err).__name__}: {err}). "
                        "Define the simulator as a module-level function, or a class whose attributes pickle (no "
                        "open files, locks, generators or lambdas inside such objects), in a module the workers can "
                        "import") from None


def check_on_workers(client, obj, what: str) -> None:
    """Unpickle ``obj`` on every connected worker first: a task whose function or argument names a module missing on
    a worker does not fail on Dask (the worker cannot read the message and the task never ends), so this is checked
    before any task is submitted.

    Raises:
        TypeError: ``obj`` does not pickle here.
        WorkerImportError: a worker cannot unpickle it; the message names the worker and the missing module.
    """
    payload = check_picklable(obj, what)
    problems = {addr: msg for addr, msg in client.run(_try_loads, payload).items() if msg}
    if problems:
        addr, msg = next(iter(sorted(problems.items())))
        raise WorkerImportError(f"{what} cannot be loaded on {len(problems)} Dask worker(s), e.g. {addr}: {msg}. "
                                "Workers import what the simulator refers to by name: use a module-level function or "
                                "class of a package installed on the workers (the same environment as here)")


def _try_loads(payload: bytes) -> str | None:
    """On a worker: ``None`` when ``payload`` unpickles, else the error."""
    from distributed.protocol.pickle import loads

    try:
        loads(payload)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def _check_count(name: str, value, minimum: int = 1) -> int:
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


__all__ = ["RemoteTaskError", "RemoteValueError", "RemoteTypeError", "require_distributed", "client_for", "map_ordered",
           "map_as_completed", "total_threads", "simulate_chunks_on", "check_picklable",
           "check_on_workers", "WorkerImportError"]
