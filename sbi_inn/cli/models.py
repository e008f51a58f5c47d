"""``sbi-inn train``, ``sample`` and ``diagnose``: an HDF5 simulation file to a posterior file, a posterior and
observations to samples, a posterior and test simulations to the diagnostics report."""

from __future__ import annotations

import argparse
from pathlib import Path

from sbi_inn.cli.options import (
    _add_device,
    _add_threads,
    _check_output,
    _dask_client,
    _device,
    _in_options,
    _load_model,
    _parse_config,
    _positive,
    add_dask_options,
)


# -- sbi-inn train ------------------------------------------------------------------------------------------------
def _add_train(subcommands) -> None:
    p = subcommands.add_parser(
        "train", help="train a posterior on an HDF5 simulation file",
        description="Train a conditional INN (cinn, maximum likelihood) or a bidirectional INN (inn, MMD losses) "
                    "on the simulations of DATA.h5, holding out 10% for validation, and save the posterior. "
                    "Training stops at --epochs, at the --minutes budget, or when the validation loss has stopped "
                    "improving (early stopping), whichever comes first; the saved weights are those of the best "
                    "validation epoch. With --checkpoint-dir, an interrupted run resumes when the same command is run "
                    "again. Options left out keep the defaults of sbi_inn.FitConfig (cinn) or sbi_inn.INNConfig "
                    "(inn). An existing MODEL.sbi is replaced only with --force, and never the data file.")
    p.add_argument("data", metavar="DATA.h5", help="simulation file written by `sbi-inn simulate`")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.sbi", help="where to save the posterior")
    p.add_argument("--force", action="store_true", help="replace an existing MODEL.sbi")
    p.add_argument("--method", choices=("cinn", "inn"), default="cinn",
                   help="cinn: conditional INN; inn: bidirectional INN (default: cinn)")
    p.add_argument("--minutes", type=_positive(float), metavar="M", help="wall-clock training budget in minutes")
    p.add_argument("--epochs", type=_positive(int), metavar="E",
                   help="maximum number of epochs (the INN's learning rate decays over them; the cINN's is halved "
                        "whenever the validation loss stalls)")
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
    _check_output(args.output, [args.data, args.checkpoint_dir], args.force)  # before training, not after
    config = _fit_config(args)
    device = _device(args.device)
    t0 = time.perf_counter()
    posterior = fit_posterior(data=args.data, method=args.method, device=device, seed=args.seed, config=config,
                              show_progress=not args.quiet, checkpoint_dir=args.checkpoint_dir)
    seconds = time.perf_counter() - t0
    path = posterior.save(args.output, overwrite=args.force)
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
                    "column per parameter). With --observations instead of --obs, the observations are read and "
                    "inferred chunk by chunk, locally or on Dask (--workers, --scheduler), and OUT is an HDF5 file "
                    "of per-observation summaries, maps (H, W, D) for an image, or of raw samples (--raw-samples); "
                    "re-running the same command resumes an interrupted run (sbi_inn.batch).")
    p.add_argument("model", metavar="MODEL.sbi", help="posterior written by `sbi-inn train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--obs", metavar="OBS",
                        help="observations: an HDF5 simulation file (its y), a .npy array (B, M) or (M,) (sets: "
                             "(B, K, M) with all-NaN rows as padding), or a .csv with one observation per row (an "
                             "optional header line is skipped)")
    source.add_argument("--observations", metavar="IMAGE.h5",
                        help="batch inference, chunk by chunk and resumable: an observation image (sbi_inn.images; "
                             "maps (H, W, D)) or a simulation file (rows (B, D)); OUT is an HDF5 file of posterior "
                             "summaries (mean, std, median, point, width68, --quantiles), or of raw samples with "
                             "--raw-samples. Running the same command again resumes an interrupted run")
    p.add_argument("-n", "--num-samples", type=_positive(int), metavar="N",
                   help="samples per observation (required with --obs; default with --observations: 256)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file: .npy, .h5 or .csv (--observations: .h5)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="--obs HDF5 only: use this split of the file (fractions 0.8/0.1/0.1; default: all rows)")
    p.add_argument("--rows", metavar="A:B", help="--obs only: use only rows A to B-1 (after --split)")
    p.add_argument("--quantiles", type=float, nargs="+", metavar="Q",
                   help="--observations: also write these quantile levels in (0, 1), dataset quantiles (Q, H, W, D)")
    p.add_argument("--chunk-rows", type=_positive(int), metavar="R",
                   help="--observations: observations per chunk, the unit of seeding and resuming (default: 1024)")
    p.add_argument("--point", choices=("median", "mean_shift"),
                   help="--observations: the point estimate, per-parameter median or mean-shift mode (default: "
                        "median)")
    p.add_argument("--on-nan", choices=("raise", "mask"),
                   help="--observations: refuse NaN pixels (raise, the default) or skip them, masked, NaN results")
    p.add_argument("--raw-samples", action="store_true",
                   help="--observations: write the raw samples (N, B, D) instead of summaries")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    _add_device(p)
    add_dask_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    _add_threads(p)
    p.set_defaults(func=_run_sample)


_BATCH_OPTIONS = {"quantiles": "--quantiles", "chunk_rows": "--chunk-rows", "point": "--point", "on_nan": "--on-nan",
                  "raw_samples": "--raw-samples", "workers": "--workers", "scheduler": "--scheduler"}


def _run_sample(args: argparse.Namespace) -> int:
    import time

    from sbi_inn.observations import SAMPLE_SUFFIXES, read_observations, shape_text, write_samples

    if args.observations is not None:
        return _run_batch(args)
    given = [flag for key, flag in _BATCH_OPTIONS.items() if getattr(args, key, None) not in (None, False)
             and not (key == "workers" and args.workers == 1)]
    if given:
        raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --observations, not --obs")
    if args.num_samples is None:
        raise ValueError("-n/--num-samples is required with --obs")
    args.split = args.split or "all"
    out = Path(args.output)
    if out.suffix.lower() not in SAMPLE_SUFFIXES:
        raise ValueError(f"-o must end in {', '.join(SAMPLE_SUFFIXES)} (the suffix picks the format), got "
                         f"{args.output!r}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    _check_output(args.output, [args.model, args.obs], args.force)
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
    write_samples(out, samples, param_names=posterior.param_names, attrs=attrs, overwrite=args.force)
    if not args.quiet:
        print(f"drew {args.num_samples} samples for each of {samples.shape[1]} observations in {seconds:.2f} s; "
              f"wrote {shape_text(tuple(samples.shape))} ({', '.join(posterior.param_names)}) to {out}")
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    """``sbi-inn sample --observations``: :func:`sbi_inn.batch.posterior_maps` (or ``sample_to_hdf5``)."""
    from sbi_inn.batch import posterior_maps, sample_to_hdf5

    given = [flag for flag, value in (("--split", args.split), ("--rows", args.rows)) if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --obs; --observations "
                         "reads every observation of the file")
    out = Path(args.output)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"-o must be an HDF5 file (.h5 or .hdf5) with --observations, got {args.output!r}")
    if out.is_dir():
        raise IsADirectoryError(f"-o {args.output!r} is a directory; give a file name")
    for given_path in (args.model, args.observations):
        if Path(given_path).exists() and out.exists() and out.resolve() == Path(given_path).resolve():
            raise ValueError(f"-o {args.output!r} is one of this command's inputs; it is never written over")
    if args.raw_samples and (args.quantiles or args.point):
        raise ValueError("--quantiles and --point describe summaries; leave them out with --raw-samples")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    common = dict(num_samples=args.num_samples or 256, seed=args.seed, chunk_rows=args.chunk_rows or 1024,
                  on_nan=args.on_nan or "raise", overwrite=args.force, device=_device(args.device),
                  show_progress=not args.quiet)
    with _dask_client(args) as client:
        if args.raw_samples:
            result = sample_to_hdf5(args.model, args.observations, out, client=client, **common)
        else:
            result = posterior_maps(args.model, args.observations, out, quantiles=tuple(args.quantiles or ()),
                                    point=args.point or "median", client=client, **common)
    if not args.quiet:
        shape = result["shape"]
        what = f"{shape[0]} x {shape[1]} pixels" if len(shape) == 2 else f"{shape[0]} observations"
        masked = f", {result['num_masked']} masked (NaN)" if result["num_masked"] else ""
        new = (f"{result['num_new_chunks']} of {result['num_chunks']} chunks computed in "
               f"{result['wall_time_s']:.2f} s" if result["num_new_chunks"] else
               f"all {result['num_chunks']} chunks were already done")
        written = [n for n in result["datasets"] if n not in ("done", "mask")]
        print(f"{what}{masked}, {common['num_samples']} samples each: {new}; {', '.join(written)} in {out}")
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

