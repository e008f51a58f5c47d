"""The ``sbi-inn`` command line.

Each subcommand is two functions: ``_add_<name>(subcommands)`` declares its arguments and sets ``func`` to
``_run_<name>(args) -> int``. To add one, write both and append the ``_add_`` function to :data:`SUBCOMMANDS`.
Errors caused by bad input (``ValueError``, ``TypeError``, ``KeyError``, missing files) end the program with exit
code 2 and one line on stderr; an interrupted ``simulate`` exits with 130 and can be resumed by re-running it.

Example:
    >>> main(["list"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from sbi_inn._version import __version__

_BAD_INPUT = (ValueError, TypeError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
              PermissionError)


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


# -- sbi-inn list -------------------------------------------------------------------------------------------------
def _add_list(subcommands) -> None:
    p = subcommands.add_parser("list", help="list the registered simulators",
                               description="List the registered simulators with their dimensions.")
    p.set_defaults(func=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    from simulators import get_simulator, list_simulators

    rows = []
    for name in list_simulators():
        try:
            sim = get_simulator(name)
            rows.append((name, str(sim.param_dim), str(sim.obs_dim), "yes" if sim.is_set_valued else "no",
                         ", ".join(sim.param_names)))
        except Exception as err:  # a simulator module being written or missing a dependency
            rows.append((name, "-", "-", "-", f"(unavailable: {type(err).__name__}: {err})"))
    _print_table(("simulator", "D", "M", "sets", "parameters"), rows)
    return 0


# -- sbi-inn simulate ---------------------------------------------------------------------------------------------
def _add_simulate(subcommands) -> None:
    p = subcommands.add_parser(
        "simulate", help="simulate a registered simulator into an HDF5 file (resumable)",
        description="Draw parameters from the simulator's prior, simulate, and write an HDF5 file in resumable "
                    "chunks. Re-running the same command after an interruption continues where it stopped.")
    p.add_argument("name", metavar="NAME", help="registered simulator (see `sbi-inn list`)")
    p.add_argument("-n", "--num-simulations", type=int, required=True, metavar="N", help="number of simulations")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="HDF5 file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--chunk-size", type=int, default=10_000, metavar="C",
                   help="simulations per resumable chunk (default: 10000)")
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="simulator configuration, values parsed as JSON where possible (e.g. noise=0.01)")
    p.add_argument("--on-invalid", choices=("drop", "raise", "keep"), default="drop",
                   help="what to do with simulations returning NaN/inf (default: drop)")
    p.add_argument("--no-resume", action="store_true", help="overwrite PATH instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from sbi_inn.data import simulate_to_hdf5
    from simulators import get_simulator

    sim = get_simulator(args.name, **_parse_config(args.config))
    try:
        summary = simulate_to_hdf5(sim, sim.prior, args.num_simulations, args.output, seed=args.seed,
                                   chunk_size=args.chunk_size, resume=not args.no_resume,
                                   on_invalid=args.on_invalid, show_progress=not args.quiet)
    except ValueError as err:  # speak in options, not keywords
        raise ValueError(str(err).replace("resume=False", "--no-resume").replace("on_invalid=", "--on-invalid ")
                         .replace("num_simulations", "-n").replace("chunk_size", "--chunk-size")) from None
    if not args.quiet:
        if summary["num_new"] == 0:
            print(f"{summary['path']} already holds {summary['num_simulations']} simulations; nothing to do")
        else:
            print(f"wrote {summary['num_new']} simulations to {summary['path']} in {summary['wall_time_s']:.1f} s "
                  f"({summary['simulations_per_second']:.0f}/s); file: {summary['num_rows']} rows, "
                  f"{summary['num_invalid']} invalid dropped")
    return 0


# -- sbi-inn info -------------------------------------------------------------------------------------------------
def _add_info(subcommands) -> None:
    p = subcommands.add_parser("info", help="describe an HDF5 simulation file",
                               description="Print the metadata, row counts and parameter ranges of a file "
                                           "written by `sbi-inn simulate`.")
    p.add_argument("path", metavar="PATH", help="HDF5 simulation file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from sbi_inn.data import hdf5_info

    info = hdf5_info(args.path)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    status = "complete" if info["completed"] else "INCOMPLETE (re-run the simulate command to finish)"
    lines = [
        ("file", f"{args.path} ({info['file_size_bytes'] / 1e6:.2f} MB, {info['compression']})"),
        ("simulator", f"{info['simulator']} {json.dumps(info['simulator_config'], sort_keys=True)}"),
        ("prior", info["prior"].get("repr", info["prior"].get("class", "?"))),
        ("seed / chunk size", f"{info['seed']} / {info['chunk_size']}"),
        ("simulations", f"{info['num_simulated']} of {info['num_requested']} requested, {status}"),
        ("rows", f"{info['num_rows']} ({info['num_invalid']} invalid simulations dropped, "
                 f"{info['chunks_done']} chunks)"),
        ("set-valued", "yes" if info["is_set_valued"] else "no"),
        ("written by", f"sbi_inn {info['sbi_inn_version']}, created {info['created']}, updated {info['updated']}"),
    ]
    if info["is_set_valued"]:
        lines.append(("set sizes", f"min {info['min_set_size']}, mean {info['mean_set_size']:.2f}, "
                                   f"max {info['max_set_size']} ({info['set_rows']} set rows)"))
    if info.get("rows_beyond_commit"):
        lines.append(("uncommitted rows", f"{info['rows_beyond_commit']} (ignored; dropped on resume)"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    for title, stats in (("parameters", info["param_stats"]), ("observations", info["obs_stats"])):
        print()
        _print_table((title, "min", "max", "mean"),
                     [(name, _fmt(s["min"]), _fmt(s["max"]), _fmt(s["mean"])) for name, s in stats.items()])
    return 0


# -- parser and entry point ---------------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable] = [_add_list, _add_simulate, _add_info]


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
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"sbi-inn {args.command}: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except _BAD_INPUT as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        message = " ".join(str(message).split())
        parser.exit(2, f"sbi-inn {args.command}: error: {message}\n")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[j])) for r in [header, *rows]) for j in range(len(header))]
    print("  ".join(f"{h:<{w}}" for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths)).rstrip())


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


if __name__ == "__main__":
    sys.exit(main())
