"""The ``sbi-inn`` command line.

Each subcommand is two functions: ``_add_<name>(subcommands)`` declares its arguments and sets ``func`` to
``_run_<name>(args) -> int``; ``list``, ``simulate`` and ``info`` live in :mod:`sbi_inn.cli.simulations`, ``train``,
``sample`` and ``diagnose`` in :mod:`sbi_inn.cli.models`, the options they share in :mod:`sbi_inn.cli.options`. To
add one, write both and append the ``_add_`` function to :data:`SUBCOMMANDS`.
Errors caused by bad input (``ValueError``, ``TypeError``, ``KeyError``, missing or existing files) end the program
with exit code 2 and one line on stderr; an interrupted ``simulate`` (or ``train`` with ``--checkpoint-dir``) exits
with 130 and resumes when the same command is run again.

The commands follow the data flow: ``list`` and ``simulate`` (simulators -> HDF5; a simulator is any entry of the
``sbi_inn.simulators`` entry-point group, see :mod:`sbi_inn.registry`), ``info`` (describe a file), ``train``
(HDF5 -> posterior file), ``sample`` (posterior + observations -> samples as .npy/.h5/.csv) and ``diagnose``
(posterior + test simulations -> :func:`sbi_inn.diagnostics.report` -> metrics, tables and plots).

Example:
    >>> args = build_parser().parse_args(["simulate", "inverse_kinematics", "-n", "100", "-o", "ik.h5"])
    >>> args.command, args.num_simulations, args.seed
    ('simulate', 100, 0)

    ``main([...])`` runs a command as the shell would, e.g. ``main(["train", "ik.h5", "-o", "ik.sbi"])``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sbi_inn._version import __version__
from sbi_inn.cli.models import _add_diagnose, _add_sample, _add_train
from sbi_inn.cli.options import _BAD_INPUT, _parse_config, torch_threads
from sbi_inn.cli.simulations import _add_info, _add_list, _add_simulate

__all__ = ["SUBCOMMANDS", "build_parser", "main", "_parse_config"]

# -- parser and entry point ---------------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable] = [_add_list, _add_simulate, _add_info, _add_train, _add_sample, _add_diagnose]


def build_parser() -> argparse.ArgumentParser:
    """The ``sbi-inn`` parser; its subparsers action is ``parser.subcommands`` (for ``add_parser``)."""
    parser = argparse.ArgumentParser(prog="sbi-inn",
                                     description="Simulation-based inference with invertible neural networks.")
    parser.add_argument("--version", action="version", version=f"sbi-inn {__version__}")
    parser.subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(parser.subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sbi-inn`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code, or raises ``SystemExit``
    with code 2 for bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with torch_threads(getattr(args, "threads", None)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"sbi-inn {args.command}: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`sbi-inn info FILE | head`): stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except _BAD_INPUT as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        message = " ".join(str(message).split())
        parser.exit(2, f"sbi-inn {args.command}: error: {message}\n")

