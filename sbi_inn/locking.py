"""One writer per output: an exclusive, non-blocking OS lock on a side file ``<path>.lock``.

Two processes that write the same simulation file or checkpoint directory would silently lose one's work (both
resume from the same committed state and the later write wins) or die with a raw HDF5 ``BlockingIOError``. Every
writer in the package takes :func:`exclusive_lock` on the output first; a second writer is refused at once with
:class:`OutputLockedError`, which names the path and the process holding it.

The lock is ``fcntl.flock`` on ``<path>.lock`` (POSIX). The operating system releases it when the holder exits,
however it exits (``SIGKILL`` included), so a lock file left behind by a killed run never blocks a resume: the
next writer simply takes it. A writer that finishes removes the lock file. On systems without ``fcntl``
(Windows) no lock is taken and a warning says so once.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "sims.h5")
    >>> with exclusive_lock(path):
    ...     os.path.exists(path + ".lock")
    True
    >>> os.path.exists(path + ".lock")
    False
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["OutputLockedError", "exclusive_lock", "lock_path"]

_warned_no_fcntl = False


class OutputLockedError(RuntimeError):
    """Another process is writing this output."""


def lock_path(path: str | os.PathLike) -> Path:
    """The side file that guards ``path``: ``<path>.lock`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, what: str = "file") -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` for the ``with`` block (``what`` names it in the error).

    Raises:
        OutputLockedError: another process holds the lock; the message names ``path`` and that process' id.
    """
    global _warned_no_fcntl
    if fcntl is None:  # pragma: no cover - Windows
        if not _warned_no_fcntl:
            warnings.warn("no fcntl on this system: outputs are not locked against a second writer", RuntimeWarning,
                          stacklevel=3)
            _warned_no_fcntl = True
        yield
        return
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, path, what)
    try:
        yield
    finally:
        # unlink while holding the lock; a writer that opened the old inode sees it vanish and retries (_acquire)
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _acquire(lock: Path, path, what: str) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            by = f"process {holder}" if holder else "another process"
            raise OutputLockedError(
                f"{what} {str(path)!r} is being written by {by} (lock {str(lock)!r}); wait until it finishes or "
                "write to another path") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked must still be the one at `lock` (the previous holder unlinks it when done)
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
