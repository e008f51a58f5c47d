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
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    try:
        client = distributed.Client(cluster, timeout=timeout, set_as_default=False)
        try:
            client.wait_for_workers(workers, timeout=max(timeout, 60.0))
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def num_workers(client) -> int:
    """Worker processes currently connected to ``client``'s scheduler (at least 1)."""
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def map_as_completed(client, fn: Callable, items: Iterable, *, max_in_flight: int | None = None, retries: int = 2,
                     what: str = "task", key: str | None = None) -> Iterator[tuple[int, Any]]:
    """Run ``fn(item)`` on the cluster for each item, yielding ``(index, result)`` as tasks finish.

    Args:
        client: a ``distributed.Client``.
        fn: a picklable function of one item.
        items: the inputs; consumed lazily, so at most ``max_in_flight`` are submitted and not yet yielded.
        max_in_flight: tasks submitted at once (default twice the workers).
        retries: resubmissions of a task whose worker died (Dask's ``KilledWorker``; the scheduler already moves a
            task off a dying worker ``distributed.scheduler.allowed-failures`` times before giving up). An exception
            raised by ``fn`` itself is not retried.
        what: what one task is, for error messages ("chunk" gives "chunk 7 failed on a Dask worker ...").
        key: prefix of the Dask task keys (default: ``fn``'s name).

    Raises:
        RemoteTaskError: a task raised; the message names the task and holds the worker's traceback. The tasks still
            running are cancelled.
    """
    yield from _map(client, fn, items, max_in_flight=max_in_flight, retries=retries, what=what, key=key,
                    ordered=False)


def map_ordered(client, fn: Callable, items: Iterable, *, max_in_flight: int | None = None, retries: int = 2,
                what: str = "task", key: str | None = None) -> Iterator[tuple[int, Any]]:
    """:func:`map_as_completed` yielding ``(index, result)`` in index order: results that finish early are buffered,
    and the buffer counts towards ``max_in_flight``, so memory stays bounded (at most ``max_in_flight`` results held).

    A task that fails is reported only once every task before it was yielded, so a caller that writes results in
    order keeps everything that finished before the failing one.
    """
    yield from _map(client, fn, items, max_in_flight=max_in_flight, retries=retries, what=what, key=key,
                    ordered=True)


def _map(client, fn, items, *, max_in_flight, retries, what, key, ordered) -> Iterator[tuple[int, Any]]:
    distributed = require_distributed(f"running {what}s on a Dask cluster")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    retries = _check_count("retries", retries, minimum=0)
    limit = 2 * num_workers(client) if max_in_flight is None else _check_count("max_in_flight", max_in_flight)
    prefix = f"{key or getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex[:8]}"
    source = iter(enumerate(items))
    pending = distributed.as_completed(loop=client.loop)
    index_of: dict[Any, int] = {}  # future -> item index
    inputs: dict[int, Any] = {}  # item index -> item, kept for a resubmission
    attempts: dict[int, int] = {}
    done: dict[int, Any] = {}  # finished, not yet yielded (ordered mode)
    failed: dict[int, BaseException] = {}
    next_out = 0

    def submit(i: int, item) -> None:
        attempts[i] = attempts.get(i, -1) + 1
        fut = client.submit(fn, item, key=f"{prefix}-{i}-{attempts[i]}", pure=False, retries=0)
        index_of[fut] = i
        pending.add(fut)

    def fill() -> None:
        held = len(index_of) + (len(done) + len(failed) if ordered else 0)
        for i, item in itertools.islice(source, max(0, limit - held)):
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
    out = RemoteTaskError(f"{what} {index} failed on a Dask worker: {type(err).__name__}: {err}{hint}\n"
                          f"Worker traceback:\n{tb_text}", index=index, remote_traceback=tb_text)
    out.__cause__ = err
    return out


def _check_count(name: str, value, minimum: int = 1) -> int:
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


__all__ = ["RemoteTaskError", "require_distributed", "client_for", "map_ordered", "map_as_completed", "num_workers"]
