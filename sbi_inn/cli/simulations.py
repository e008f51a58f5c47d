"""``sbi-inn list``, ``simulate`` and ``info``: simulators (found through the ``sbi_inn.simulators`` entry-point
group, :mod:`sbi_inn.registry`) to HDF5 simulation files, and what a file holds."""

from __future__ import annotations

import argparse
import json
import sys

from sbi_inn.cli.options import _dask_client, _fmt, _parse_config, _print_table, add_dask_options


# -- sbi-inn list -------------------------------------------------------------------------------------------------
def _add_list(subcommands) -> None:
    p = subcommands.add_parser("list", help="list the registered simulators",
                               description="List the simulators registered in the `sbi_inn.simulators` "
                                           "entry-point group (by this and any installed package) with their "
                                           "dimensions.")
    p.set_defaults(func=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    from sbi_inn.registry import available_simulators, load_simulator

    rows = []
    for name in available_simulators():
        try:
            sim = load_simulator(name)
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
    add_dask_options(p)
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from sbi_inn.data import simulate_to_hdf5
    from sbi_inn.distributed import RemoteTaskError, WorkerImportError
    from sbi_inn.registry import load_simulator

    sim = load_simulator(args.name, **_parse_config(args.config))
    try:
        with _dask_client(args) as client:
            summary = simulate_to_hdf5(sim, sim.prior, args.num_simulations, args.output, seed=args.seed,
                                       chunk_size=args.chunk_size, resume=not args.no_resume,
                                       on_invalid=args.on_invalid, show_progress=not args.quiet, client=client)
    except WorkerImportError as err:
        print(f"sbi-inn simulate: error: {err}", file=sys.stderr)
        return 2
    except RemoteTaskError as err:  # the worker's traceback is kept, on several lines
        print(f"sbi-inn simulate: error: {err}\n(the chunks before it are saved; re-run the command to resume)",
              file=sys.stderr)
        return 1
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

