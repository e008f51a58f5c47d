"""The ``sbi-inn`` command line.

Each subcommand is two functions: ``_add_<name>(subcommands)`` declares its arguments and sets ``func`` to
``_run_<name>(args) -> int``. To add one, write both and append the ``_add_`` function to :data:`SUBCOMMANDS`.
Errors caused by bad input (``ValueError``, ``TypeError``, ``KeyError``, missing or existing files) end the program
with exit code 2 and one line on stderr; an interrupted ``simulate`` (or ``train`` with ``--checkpoint-dir``) exits
with 130 and resumes when the same command is run again.

The commands follow the data flow: ``list`` and ``simulate`` (simulators -> HDF5; a simulator is any entry of the
``sbi_inn.simulators`` entry-point group, see :mod:`sbi_inn.registry`), ``info`` (describe a file), ``train``
(HDF5 -> posterior file), ``sample`` (posterior + observations -> samples as .npy/.h5/.csv) and ``diagnose``
(posterior + test simulations -> :func:`sbi_inn.diagnostics.report` -> metrics, tables and plots).

Example:
    >>> main(["list"])  # doctest: +SKIP
    >>> main(["train", "ik.h5", "-o", "ik.sbi", "--minutes", "5"])  # doctest: +SKIP
    >>> main(["sample", "ik.sbi", "--obs", "y.csv", "-n", "1000", "-o", "samples.h5"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sbi_inn._version import __version__

_BAD_INPUT = (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError,
              NotADirectoryError, PermissionError)


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
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from sbi_inn.data import simulate_to_hdf5
    from sbi_inn.registry import load_simulator

    sim = load_simulator(args.name, **_parse_config(args.config))
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


# -- shared helpers of train / sample / diagnose -------------------------------------------------------------------
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
def _torch_threads(num: int | None):
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


# -- sbi-inn train ------------------------------------------------------------------------------------------------
def _add_train(subcommands) -> None:
    p = subcommands.add_parser(
        "train", help="train a posterior on an HDF5 simulation file",
        description="Train a conditional INN (cinn, maximum likelihood) or a bidirectional INN (inn, MMD losses) "
                    "on the simulations of DATA.h5, holding out 10% for validation, and save the posterior. "
                    "Training stops at --epochs, at the --minutes budget, or when the validation loss has stopped "
                    "improving (early stopping), whichever comes first; the saved weights are those of the best "
                    "validation epoch. With --checkpoint-dir, an interrupted run resumes when the same command is run "
                    "again. Options left out keep the defaults of sbi_inn.fit.FitConfig (cinn) or "
                    "sbi_inn.inn.INNConfig (inn).")
    p.add_argument("data", metavar="DATA.h5", help="simulation file written by `sbi-inn simulate`")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.sbi", help="where to save the posterior")
    p.add_argument("--method", choices=("cinn", "inn"), default="cinn",
                   help="cinn: conditional INN; inn: bidirectional INN (default: cinn)")
    p.add_argument("--minutes", type=_positive(float), metavar="M", help="wall-clock training budget in minutes")
    p.add_argument("--epochs", type=_positive(int), metavar="E",
                   help="maximum number of epochs; the learning rate decays over them")
    p.add_argument("--batch-size", type=_positive(int), metavar="B", help="samples per gradient step")
    p.add_argument("--lr", type=_positive(float), metavar="LR", help="initial learning rate")
    p.add_argument("--blocks", type=_positive(int), metavar="N", help="number of coupling blocks")
    p.add_argument("--hidden", type=_positive(int), metavar="H", help="width of the coupling subnetworks")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, shuffling and the split (default: 0)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="write a checkpoint every epoch; resume from it")
    _add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    _add_threads(p)
    p.set_defaults(func=_run_train)


def _fit_config(args: argparse.Namespace):
    """The ``--method``'s config (``FitConfig`` or ``INNConfig``) with the flow and training options that were given
    (``--blocks``, ``--hidden``, ``--epochs``, ``--batch-size``, ``--lr``, ``--minutes``); the others keep its
    defaults. ``--lr`` also caps the final learning rate, so a small ``--lr`` never decays upwards."""
    import dataclasses

    from sbi_inn.config import DEFAULT_TRAIN, FitConfig
    from sbi_inn.inn import INNConfig

    flow = {k: v for k, v in {"num_blocks": args.blocks, "hidden": args.hidden}.items() if v is not None}
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "max_time": None if args.minutes is None else 60.0 * args.minutes}
    train = {k: v for k, v in train.items() if v is not None}
    if args.method == "cinn":  # overrides of default_flow(D, n) and default_train(n), resolved once D, n are known
        if args.lr is not None:
            train["lr_final"] = min(DEFAULT_TRAIN.lr_final, args.lr)
        return FitConfig(flow=flow or None, train=train or None)
    base = INNConfig()
    if args.lr is not None:
        train["lr_final"] = min(base.train.lr_final, args.lr)
    return dataclasses.replace(base, flow=dataclasses.replace(base.flow, **flow),
                               train=dataclasses.replace(base.train, **train))


def _run_train(args: argparse.Namespace) -> int:
    import math
    import time

    from sbi_inn.fit import fit_posterior

    if not Path(args.data).is_file():
        raise FileNotFoundError(f"no such simulation file: {args.data!r}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    config = _fit_config(args)
    device = _device(args.device)
    t0 = time.perf_counter()
    posterior = fit_posterior(data=args.data, method=args.method, device=device, seed=args.seed, config=config,
                              show_progress=not args.quiet, checkpoint_dir=args.checkpoint_dir)
    seconds = time.perf_counter() - t0
    path = posterior.save(args.output)
    if not args.quiet:
        history = posterior.history
        vals = [h["val_loss"] for h in history if math.isfinite(h.get("val_loss", math.nan))]
        train_seconds = sum(h.get("seconds", 0.0) for h in history)
        loss = (f"validation loss {vals[-1]:.4g} at the last epoch, best {min(vals):.4g} (saved)" if vals
                else f"training loss {history[-1]['train_loss']:.4g}" if history else "no epochs run")
        epochs = f"{len(history)} epoch{'' if len(history) == 1 else 's'}"
        print(f"trained a {args.method} posterior on {device}: {epochs}, {train_seconds:.1f} s of training "
              f"({seconds:.1f} s this run); {loss}")
        print(f"saved to {path}")
    return 0


# -- sbi-inn sample -----------------------------------------------------------------------------------------------
def _add_sample(subcommands) -> None:
    p = subcommands.add_parser(
        "sample", help="draw posterior samples for observations",
        description="Draw N posterior samples for each observation in OBS with a trained posterior and write "
                    "them to OUT, chosen by its suffix: .npy (array (N, B, D)), .h5 (dataset `samples` (N, B, D) "
                    "with attribute `param_names`) or .csv (long format: an `observation` column, then one "
                    "column per parameter).")
    p.add_argument("model", metavar="MODEL.sbi", help="posterior written by `sbi-inn train`")
    p.add_argument("--obs", required=True, metavar="OBS",
                   help="observations: an HDF5 simulation file (its y), a .npy array (B, M) or (M,) (sets: "
                        "(B, K, M) with all-NaN rows as padding), or a .csv with one observation per row (an "
                        "optional header line is skipped)")
    p.add_argument("-n", "--num-samples", type=_positive(int), required=True, metavar="N",
                   help="samples per observation")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file: .npy, .h5 or .csv")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="all",
                   help="HDF5 OBS only: use this split of the file (fractions 0.8/0.1/0.1; default: all rows)")
    p.add_argument("--rows", metavar="A:B", help="use only rows A to B-1 (after --split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    _add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    _add_threads(p)
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    import time

    from sbi_inn.observations import SAMPLE_SUFFIXES, read_observations, shape_text, write_samples

    out = Path(args.output)
    if out.suffix.lower() not in SAMPLE_SUFFIXES:
        raise ValueError(f"-o must end in {', '.join(SAMPLE_SUFFIXES)} (the suffix picks the format), got "
                         f"{args.output!r}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    posterior = _load_model(args.model, args.device)
    with _in_options():
        y, sizes = read_observations(args.obs, obs_shape=posterior.obs_shape, is_set_valued=posterior.is_set_valued,
                                     split=args.split, rows=args.rows)
    t0 = time.perf_counter()
    samples = posterior.sample_batched((args.num_samples,), y, sizes=sizes, seed=args.seed,
                                       show_progress=not args.quiet).cpu()
    seconds = time.perf_counter() - t0
    attrs = {"model": str(args.model), "observations": str(args.obs), "split": args.split, "rows": args.rows or "",
             "seed": args.seed}
    write_samples(out, samples, param_names=posterior.param_names, attrs=attrs, overwrite=True)
    if not args.quiet:
        print(f"drew {args.num_samples} samples for each of {samples.shape[1]} observations in {seconds:.2f} s; "
              f"wrote {shape_text(tuple(samples.shape))} ({', '.join(posterior.param_names)}) to {out}")
    return 0


# -- sbi-inn diagnose ---------------------------------------------------------------------------------------------
def _add_diagnose(subcommands) -> None:
    p = subcommands.add_parser(
        "diagnose", help="calibration, SBC, MAP and re-simulation diagnostics on test simulations",
        description="Draw posterior samples for test observations of an HDF5 simulation file and compare them "
                    "with the file's ground-truth parameters: calibration error and curves, SBC ranks with "
                    "uniformity p-values, posterior z-scores and contraction, MAP error and, when the simulator "
                    "can be rebuilt (from the file or --simulator), the re-simulation error. Writes metrics.json, "
                    "metrics.csv, metrics.md, calibration.png, sbc.png and corner.png to the report folder (an "
                    "earlier report's files only with --force) and prints the table.")
    p.add_argument("model", metavar="MODEL.sbi", help="posterior written by `sbi-inn train`")
    p.add_argument("--data", required=True, metavar="TEST.h5",
                   help="test simulations (not the training file: its metrics would be optimistic)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder (created)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an earlier report in DIR")
    p.add_argument("--num-obs", type=_positive(int), default=200, metavar="B",
                   help="test observations used, the first B of the split (default: 200)")
    p.add_argument("--num-samples", type=_positive(int), default=1000, metavar="N",
                   help="posterior samples per observation, at least 2 (default: 1000)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="all",
                   help="rows of the file to use (fractions 0.8/0.1/0.1; default: all)")
    p.add_argument("--point", choices=("auto", "mean_shift", "median", "mean"), default="auto",
                   help="point estimate for the MAP error; auto: mean_shift up to 100 observations, else median")
    p.add_argument("--simulator", metavar="NAME", help="simulator for re-simulation (default: the file's)")
    p.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="simulator configuration for --simulator (default: the file's when the names agree)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and re-simulations (default: 0)")
    _add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no status lines (the table is printed)")
    _add_threads(p)
    p.set_defaults(func=_run_diagnose)


def _rebuild_simulator(args, meta: dict, notes: list[str]):
    """The simulator for re-simulation, or ``None`` (with a note saying why)."""
    from sbi_inn.registry import load_simulator

    name = args.simulator or meta.get("simulator")
    config = dict(meta.get("simulator_config") or {}) if name == meta.get("simulator") else {}
    config.update(_parse_config(args.config))
    if args.simulator is None and args.config:
        raise ValueError("--config needs --simulator")
    try:
        return load_simulator(name, **config)
    except (KeyError, TypeError, ValueError) as err:
        if args.simulator is not None:
            raise
        notes.append(f"re-simulation skipped: the file's simulator {name!r} cannot be rebuilt "
                     f"({' '.join(str(err.args[0] if err.args else err).split())}); pass --simulator NAME --config ...")
        return None


def _run_diagnose(args: argparse.Namespace) -> int:
    from sbi_inn.data import load_hdf5
    from sbi_inn.diagnostics import report, to_markdown
    from sbi_inn.diagnostics.report import FILES
    from sbi_inn.observations import read_test_simulations

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.num_samples < 2:
        raise ValueError(f"--num-samples must be at least 2 (calibration needs several draws), got {args.num_samples}")
    out = Path(args.output)
    existing = [name for name in FILES if (out / name).exists()]
    if existing and not args.force:  # checked before the work, not only when writing
        raise ValueError(f"{out} already holds a report ({', '.join(existing)}); pass --force to overwrite it")
    posterior = _load_model(args.model, args.device)
    x, y, sizes, meta = read_test_simulations(args.data, param_dim=posterior.param_dim, obs_shape=posterior.obs_shape,
                                              is_set_valued=posterior.is_set_valued, split=args.split,
                                              rows=f":{args.num_obs}")
    names = posterior.param_names
    notes: list[str] = []
    if list(meta["param_names"]) != list(names):
        notes.append(f"parameter names differ: file {meta['param_names']}, model {names}")
    trained_on = (posterior.metadata.get("data") or {}).get("path")
    if trained_on and Path(trained_on).resolve() == Path(args.data).resolve():
        notes.append(f"{args.data} is the file the model was trained on: the metrics are optimistic")
    sim = None
    if posterior.is_set_valued:
        notes.append("re-simulation skipped: set-valued observations")
    else:
        sim = _rebuild_simulator(args, meta, notes)
    if x.shape[0] < args.num_obs:
        notes.append(f"only {x.shape[0]} observations in the split (asked for {args.num_obs})")
    if not args.quiet:
        print(f"sampling {args.num_samples} posterior draws for each of {x.shape[0]} test observations, then "
              "computing calibration, SBC, z-scores, contraction, MAP and re-simulation errors and plotting")
    info = {"model": str(args.model), "data": str(args.data), "split": args.split,
            "method": (posterior.model.config() or {}).get("type"),
            "simulator": None if sim is None else {"name": sim.name, "config": sim.config()}}
    result = report(posterior, x, y, sizes=sizes, simulate=None if sim is None else sim.simulate,
                    prior_samples=load_hdf5(args.data, max_rows=20_000)["x"], num_samples=args.num_samples,
                    point=args.point, seed=args.seed, show_progress=not args.quiet,
                    param_units=getattr(sim, "param_units", None), source=f"{args.data} (split {args.split})",
                    info=info, notes=notes)
    result.write(out, overwrite=args.force)
    print(to_markdown(result.table, digits=3))
    for note in result.notes:
        print(f"note: {note}")
    if not args.quiet:
        print(f"report written to {out}: {', '.join(FILES)}")
    return 0


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
        with _torch_threads(getattr(args, "threads", None)):
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
