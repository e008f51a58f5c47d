"""Options and helpers shared by the ``sbi-inn`` subcommands (argument types, device and thread options, tables)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from sbi_inn.locking import OutputLockedError

_BAD_INPUT = (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError,
              NotADirectoryError, PermissionError, OutputLockedError)


def _parse_config(items: Sequence[str] | None) -> dict:
    """``["noise=0.01", "lengths=[1,1,1]", "name=abc"]`` -> dict; values are JSON where they parse, else strings."""
    config = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config expects key=value, got {item!r}")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config


def _positive(kind: type) -> Callable:
    """An argparse ``type`` accepting numbers of ``kind`` greater than zero."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _add_device(p) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run: auto uses CUDA when available (default: auto)")


def _add_threads(p) -> None:
    p.add_argument("--threads", type=_positive(int), metavar="T",
                   help="torch CPU threads (default: torch's choice; 1 is often faster for small models on a busy "
                        "machine)")


@contextlib.contextmanager
def torch_threads(num: int | None):
    """Run with ``num`` torch intra-op threads (unchanged when ``None``), restoring the previous number."""
    if num is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available here; use --device cpu")
    from sbi_inn.posterior import resolve_device

    return resolve_device(name)


def _load_model(path: str, device: str):
    from sbi_inn.posterior import load_posterior

    return load_posterior(path, device=_device(device))


@contextlib.contextmanager
def _in_options():
    """Re-raise a library ``ValueError`` about its ``rows`` or ``split`` argument in the words of the options."""
    try:
        yield
    except ValueError as err:
        if str(err).startswith(("rows ", "split ")):
            raise ValueError(f"--{err}") from None
        raise


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[j])) for r in [header, *rows]) for j in range(len(header))]
    print("  ".join(f"{h:<{w}}" for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths)).rstrip())


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _check_output(output: str, inputs: Sequence[str], force: bool, option: str = "-o") -> Path:
    """The output path of a command, checked before any work: not a directory, never one of the command's own
    inputs, and an existing file only with ``--force``."""
    out = Path(output)
    if out.is_dir():
        raise IsADirectoryError(f"{option} {output!r} is a directory; give a file name")
    for given in inputs:
        if given is not None and Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"{option} {output!r} is one of this command's inputs; it is never written over")
    if out.exists() and not force:
        raise FileExistsError(f"{option} {output!r} exists; pass --force to replace it")
    return out


def add_dask_options(p) -> None:
    """``--workers N`` / ``--scheduler ADDRESS`` (exclusive) and ``--scheduler-timeout``: where a command runs its
    work (``sbi_inn.distributed.client_for``; read them back with :func:`_dask_client`)."""
    g = p.add_argument_group("distributed (needs sbi_inn[distributed])")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                       help="run on a local Dask cluster of N worker processes (default: 1, this process only)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the workers of a running Dask scheduler, e.g. tcp://host:8786")
    g.add_argument("--scheduler-timeout", type=_positive(float), default=10.0, metavar="S",
                   help="seconds to wait for the scheduler (default: 10)")


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace):
    """The ``distributed.Client`` (or ``None``) asked for by :func:`add_dask_options`; a missing Dask or an
    unreachable scheduler ends the command with exit code 2 and one line on stderr."""
    import sys

    from sbi_inn.distributed import client_for

    stack = contextlib.ExitStack()
    try:
        client = stack.enter_context(client_for(args.workers, args.scheduler, timeout=args.scheduler_timeout,
                                                feature=f"sbi-inn {args.command} --workers/--scheduler"))
    except (ImportError, ConnectionError) as err:
        print(f"sbi-inn {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    with stack:
        yield client
