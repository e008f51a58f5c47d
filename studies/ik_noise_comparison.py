"""Inverse kinematics with observation noise: INN vs cINN vs rejection ABC vs MCMC (thesis 4.2.2, Table 4.1).

With Gaussian noise on the end point (``noise = sigma_y``, default 0.01) the arm has a proper likelihood, so emcee
gives a reference posterior to measure the others against. The two amortised methods (the bidirectional INN of
thesis ch. 4 and the conditional INN of ch. 3) are trained with ``fit_posterior`` on the same ``N`` simulations
for a fixed number of epochs (56 and 12, what a 3-minute budget each gave on one core; ``--minutes`` plans them to a
budget instead); rejection ABC (threshold ``epsilon`` = a few times the noise) and MCMC are run per
observation. MCMC walkers start at prior draws accepted by a small rejection-ABC run (``--mcmc-init abc``; raw prior
draws leave some walkers stranded far from the posterior ridge). Everything is seeded.

Outputs (``--out``, default ``studies/results/ik_noise_comparison``):

* ``table.md`` / ``table.csv``: rows INN, cINN, ABC, MCMC; C2ST and MMD against MCMC, re-simulation error,
  calibration error and MAP error (amortised methods over ``--num-test`` observations, ABC and MCMC over the
  ``--num-ref`` observations they were run on), wall time and simulations / likelihood evaluations. ``table.md``
  also holds every method on the same ``--num-ref`` observations.
* ``results.json``: all numbers, settings, timings and MCMC/ABC details (autocorrelation times, acceptance).
* ``corner_obs{0,1,2}.png``: the four posteriors overlaid, truth lines, prior shaded; ``arm_obs0.png``: sampled arms
  of each method for observation 0.

Usage:
    python studies/ik_noise_comparison.py --quick                 # smoke run, well under a minute
    python studies/ik_noise_comparison.py                         # the committed results
    python studies/ik_noise_comparison.py --num-simulations 100000 --minutes 5 --num-ref 10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sbi_inn import diagnostics, fit_posterior, plots, reference, simulate_to_hdf5
from simulators import get_simulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_common import refuse_existing_file, to_json_types, variant_tag  # noqa: E402

METHODS = ("INN", "cINN", "ABC", "MCMC")
COLUMNS = {  # table column -> what it means (written under the table)
    "c2st_vs_mcmc": "classifier two-sample accuracy against the MCMC samples (0.5 = indistinguishable), mean over "
                    "the reference observations",
    "mmd_vs_mcmc": "squared MMD (IMQ kernel) against the MCMC samples, same observations",
    "resim_error_mean": "mean distance ||s(x) - y*|| of re-simulated posterior samples to the observation",
    "resim_error_median": "median of the same distances",
    "calibration_error": "median |alpha_inl - alpha| over 99 levels and the 4 parameters",
    "map_error": "RMSE of the mean-shift MAP estimate against the true parameters",
    "test_obs": "observations the re-simulation, calibration and MAP columns are computed over",
    "upfront_s": "simulation + training seconds, paid once (amortised methods)",
    "per_obs_s": "seconds per new observation (amortised: sampling only)",
    "total_s": "seconds to obtain the posteriors of the reference observations (upfront included)",
    "simulations": "simulator calls (amortised: training set, once; ABC: summed over the reference observations; "
                   "MCMC: the rejection-ABC runs that place its walkers)",
    "likelihood_evals": "likelihood evaluations (MCMC, summed over the reference observations)",
}


RESULTS = Path(__file__).resolve().parent / "results" / "ik_noise_comparison"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for tables and plots (default: studies/results/"
                   "ik_noise_comparison for the default run, its variants/<tag>/ for any other)")
    p.add_argument("--force", action="store_true", help="write over existing results")
    p.add_argument("--work", default="outputs/ik_noise_comparison", help="folder for the simulations and models")
    p.add_argument("--noise", type=float, default=0.01, help="std of the observation noise (> 0)")
    p.add_argument("--num-simulations", type=int, default=50_000, help="training simulations (shared)")
    p.add_argument("--epochs-cinn", type=int, default=56, help="training epochs of the cINN (early stopping may end "
                   "it sooner)")
    p.add_argument("--epochs-inn", type=int, default=12, help="training epochs of the INN")
    p.add_argument("--minutes", type=float, default=None,
                   help="plan each method's epochs to this wall-clock budget instead (results then depend on the "
                        "machine)")
    p.add_argument("--num-test", type=int, default=200, help="test observations for the amortised methods")
    p.add_argument("--num-ref", type=int, default=6, help="observations with ABC and MCMC references")
    p.add_argument("--num-samples", type=int, default=2000, help="posterior samples per observation")
    p.add_argument("--abc-epsilon", type=float, default=2.5, help="ABC threshold in units of the noise")
    p.add_argument("--mcmc-walkers", type=int, default=64, help="emcee walkers (initialised from the prior)")
    p.add_argument("--mcmc-max-steps", type=int, default=60_000, help="cap on MCMC steps per walker")
    p.add_argument("--mcmc-init", choices=("abc", "prior"), default="abc",
                   help="walkers start at prior draws accepted by rejection ABC (default) or at raw prior draws "
                        "(some then stay stranded in the tails and contaminate the reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small networks train fastest on one thread on a shared CPU)")
    p.add_argument("--quick", action="store_true", help="smoke run in well under a minute")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.quick:
        args.num_simulations, args.epochs_cinn, args.epochs_inn, args.num_test, args.num_ref = 3000, 3, 2, 40, 3
        args.num_samples, args.mcmc_walkers, args.mcmc_max_steps = 500, 32, 1500
    if not args.noise > 0:
        p.error("--noise must be > 0 (MCMC needs a likelihood)")
    if args.out is None:
        tag = variant_tag(p, args, ("out", "force", "quiet", "threads", "work"))
        args.out = str(RESULTS / "variants" / tag) if tag else str(RESULTS)
    refuse_existing_file(p, Path(args.out) / "results.json", args.force)
    if args.num_ref < 3:
        p.error("--num-ref must be at least 3 (three corner plots)")
    return args


# -- amortised methods ----------------------------------------------------------------------------------------------
def amortised_configs(args) -> dict:
    """Training settings of the cINN and the INN: the same flow size and optimiser; a fixed number of epochs each
    (early stopping may end the cINN's sooner), or with ``--minutes`` a wall-clock budget each
    (``TrainConfig.max_time`` plans the epochs from the first one).

    Dicts of ``FitConfig`` (cINN) and ``INNConfig`` (INN) fields, as ``fit_posterior(config=...)`` takes them.
    """
    small = args.quick
    flow = {"num_blocks": 4 if small else 6, "hidden": 64 if small else 128, "num_layers": 2, "activation": "relu",
            "clamp": 2.0}  # complete, so the two methods' different default flows do not leak in
    budget = None if args.minutes is None else 60.0 * args.minutes
    train = {"batch_size": 256, "lr": 1e-3, "lr_final": 1e-5, "patience": 30, "max_time": budget}
    return {"cINN": {"flow": flow, "train": {**train, "epochs": args.epochs_cinn}},
            "INN": {"flow": dict(flow), "train": {**train, "epochs": args.epochs_inn}}}


def train_amortised(args, sim, data: Path, sim_seconds: float) -> dict:
    runs = {}
    for name, config in amortised_configs(args).items():
        method = "inn" if name == "INN" else "cinn"
        t0 = time.perf_counter()
        posterior = fit_posterior(data=data, method=method, config=config, seed=args.seed,
                                  show_progress=not args.quiet)
        train_s = time.perf_counter() - t0
        path = posterior.save(Path(args.work) / f"{method}.sbi", overwrite=True)
        history = posterior.history
        vals = [h["val_loss"] for h in history if "val_loss" in h]
        runs[name] = {"posterior": posterior, "train_s": train_s, "epochs": len(history),
                      "planned_epochs": int(history[-1]["planned_epochs"]),
                      "best_val_loss": min(vals) if vals else None,
                      "upfront_s": sim_seconds + train_s, "model": str(path)}
        print(f"  {name}: {len(history)} epochs in {train_s:.0f} s, best validation loss "
              f"{runs[name]['best_val_loss']:.4g}")
    return runs


# -- references -----------------------------------------------------------------------------------------------------
def run_mcmc(args, sim, y_ref: torch.Tensor) -> dict:
    """emcee per observation; walkers start at prior draws (``--mcmc-init prior``) or at prior draws accepted by
    rejection ABC (``abc``, the default: every walker starts near the posterior ridge, in the modes in proportion to
    their mass, so none is stranded far out where the stretch move cannot bring it back)."""
    samples, details = [], []
    walkers = args.mcmc_walkers + args.mcmc_walkers % 2
    for i, y in enumerate(y_ref):
        initial, init_s, init_sims = None, 0.0, 0
        if args.mcmc_init == "abc":
            start = reference.abc_rejection(sim.simulate, sim.prior, y, walkers, epsilon=args.abc_epsilon * args.noise,
                                            seed=args.seed + 1000 + i, max_simulations=10**9)
            initial, init_s, init_sims = start.samples, start.wall_time, start.num_simulations
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = reference.mcmc(sim.log_likelihood, sim.prior, y, args.num_samples, num_walkers=walkers,
                                 max_steps=args.mcmc_max_steps, seed=args.seed + i, initial=initial)
        notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        for note in notes:
            print(f"  WARNING (MCMC, observation {i}): {note}")
        samples.append(res.samples.float())
        details.append({"wall_time_s": res.wall_time + init_s, "init_seconds": init_s,
                        "init_simulations": init_sims, "likelihood_evaluations": res.num_likelihood_evaluations,
                        "steps": res.num_steps, "walkers": res.num_walkers, "burn_in": res.burn_in, "thin": res.thin,
                        "tau": res.tau.tolist(), "acceptance_fraction": res.acceptance_fraction, "warnings": notes})
        print(f"  MCMC observation {i}: {res.num_steps} steps x {res.num_walkers} walkers, tau max "
              f"{float(res.tau.max()):.0f}, {res.wall_time + init_s:.1f} s" + (
                  f" (incl. {init_s:.1f} s, {init_sims} simulations of ABC to start the walkers)" if init_sims else ""))
    return {"samples": torch.stack(samples, 1), "details": details}


def run_abc(args, sim, y_ref: torch.Tensor) -> dict:
    eps = args.abc_epsilon * args.noise
    samples, details = [], []
    for i, y in enumerate(y_ref):
        res = reference.abc_rejection(sim.simulate, sim.prior, y, args.num_samples, epsilon=eps,
                                      seed=args.seed + i, max_simulations=10**9)
        samples.append(res.samples.float())
        details.append({"wall_time_s": res.wall_time, "simulations": res.num_simulations, "epsilon": eps,
                        "acceptance_rate": res.acceptance_rate})
        print(f"  ABC observation {i}: {res.num_simulations} simulations (acceptance {res.acceptance_rate:.2e}), "
              f"{res.wall_time:.1f} s")
    return {"samples": torch.stack(samples, 1), "details": details}


# -- the table ------------------------------------------------------------------------------------------------------
def comparison_table(args, sim, amortised, samples_ref, samples_test, x_ref, y_ref, x_test, y_test, timings):
    """The headline table plus every method on the reference observations (two DataFrames)."""
    gen = torch.Generator().manual_seed(args.seed + 1)

    def simulate(x):
        return sim.simulate(x, generator=gen)

    c2st_opts = {"max_iter": 200, "early_stopping": True} if args.quick else {}
    others = {k: v for k, v in samples_ref.items() if k != "MCMC"}
    same = pd.concat([  # C2ST/MMD of the reference against itself would say nothing
        diagnostics.compare(others, y_ref, x_ref, reference=samples_ref["MCMC"], simulate=simulate, seed=args.seed,
                            c2st_options=c2st_opts, num_bootstrap=200),
        diagnostics.compare({"MCMC": samples_ref["MCMC"]}, y_ref, x_ref, simulate=simulate, seed=args.seed,
                            num_bootstrap=200)])
    same.index.name = "method"
    large = diagnostics.compare({k: samples_test[k] for k in amortised}, y_test, x_test, simulate=simulate,
                                seed=args.seed, num_bootstrap=200)

    rows = {}
    for name in METHODS:
        src = large if name in amortised else same
        row = {"c2st_vs_mcmc": same.loc[name, "c2st"], "c2st_vs_mcmc_se": same.loc[name, "c2st_se"],
               "mmd_vs_mcmc": same.loc[name, "mmd"], "mmd_vs_mcmc_se": same.loc[name, "mmd_se"]}
        for col in ("resim_error_mean", "resim_error_median", "calibration_error", "map_error"):
            row[col], row[f"{col}_se"] = src.loc[name, col], src.loc[name, f"{col}_se"]
        row["test_obs"] = float(len(y_test) if name in amortised else len(y_ref))
        row.update({k: timings[name][k] for k in ("upfront_s", "per_obs_s", "total_s", "simulations",
                                                   "likelihood_evals")})
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    same = same.assign(test_obs=float(len(y_ref)))
    return table, same


def training_text(args) -> str:
    if args.minutes is not None:
        return f"{args.minutes:g} min training budget per amortised method"
    return f"{args.epochs_cinn} epochs of the cINN (early stopping may end it sooner), {args.epochs_inn} of the INN"


def write_outputs(args, out: Path, table, same, results) -> None:
    diagnostics.to_csv(table, out / "table.csv")
    legend = "\n".join(f"- `{k}`: {v}" for k, v in COLUMNS.items())
    text = [f"# Inverse kinematics, noise {args.noise}: INN vs cINN vs ABC vs MCMC", "",
            f"{args.num_simulations} training simulations; {training_text(args)}; {args.num_samples} posterior "
            f"samples per observation; ABC threshold "
            f"{args.abc_epsilon:g} x noise; MCMC: emcee, {args.mcmc_walkers} walkers started at "
            f"{'prior draws accepted by rejection ABC' if args.mcmc_init == 'abc' else 'prior draws'}. Amortised "
            f"methods: re-simulation, calibration and MAP columns over {args.num_test} test observations; ABC and "
            f"MCMC over the {args.num_ref} reference observations (calibration from {args.num_ref} observations is "
            "very noisy). C2ST/MMD on the reference observations. `±`: bootstrap standard error over observations.",
            "", diagnostics.to_markdown(table), "", legend, "", _mcmc_note(results["mcmc"]), "",
            f"## All methods on the same {args.num_ref} reference observations", "",
            diagnostics.to_markdown(same.drop(columns=["map_resim_error", "map_resim_error_se"], errors="ignore")),
            "", f"Command: `python studies/ik_noise_comparison.py {' '.join(results['argv'])}`", ""]
    (out / "table.md").write_text("\n".join(text))
    (out / "results.json").write_text(json.dumps(to_json_types(results), indent=2) + "\n")


def _mcmc_note(details: list[dict]) -> str:
    short = [i for i, d in enumerate(details) if any("autocorrelation" in w for w in d["warnings"])]
    taus = ", ".join(f"{max(d['tau']):.0f}" for d in details)
    text = f"MCMC: largest autocorrelation time per observation {taus} steps; chains of " + \
        ", ".join(str(d["steps"]) for d in details) + " steps."
    if short:
        text += (f" **Warning:** the chains of observations {short} are shorter than 50 autocorrelation times "
                 "(emcee's rule of thumb); their reference samples may be unreliable (raise --mcmc-max-steps).")
    return text


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    sim = get_simulator("inverse_kinematics", noise=args.noise)

    # 1. training simulations (one file, shared by both amortised methods)
    data = work / f"ik_noise{args.noise:g}_n{args.num_simulations}_seed{args.seed}.h5"
    print(f"[1/5] {args.num_simulations} simulations -> {data}")
    info = simulate_to_hdf5(sim, sim.prior, args.num_simulations, data, seed=args.seed, show_progress=not args.quiet)
    sim_seconds = info["wall_time_s"]
    if info["num_new"] < args.num_simulations:  # (partly) reused from an earlier run: time the simulations again
        t0 = time.perf_counter()
        sim.simulate(sim.sample_prior(args.num_simulations, generator=torch.Generator().manual_seed(args.seed)))
        sim_seconds = time.perf_counter() - t0

    # 2. train the INN and the cINN on them
    print(f"[2/5] training the INN and the cINN ({training_text(args)})")
    amortised = train_amortised(args, sim, data, sim_seconds)

    # 3. test observations: the first num_ref also get ABC and MCMC references
    gen = torch.Generator().manual_seed(args.seed + 10_000)
    x_test = sim.sample_prior(args.num_test, generator=gen)
    y_test = sim.simulate(x_test, generator=gen)
    x_ref, y_ref = x_test[:args.num_ref], y_test[:args.num_ref]
    print(f"[3/5] sampling the amortised posteriors for {args.num_test} test observations")
    samples_test, timings = {}, {}
    for name, run in amortised.items():
        t0 = time.perf_counter()
        samples_test[name] = run["posterior"].sample_batched((args.num_samples,), y_test, seed=args.seed).cpu()
        sample_s = time.perf_counter() - t0
        per_obs = sample_s / args.num_test
        timings[name] = {"upfront_s": run["upfront_s"], "per_obs_s": per_obs,
                         "total_s": run["upfront_s"] + per_obs * args.num_ref,
                         "simulations": float(args.num_simulations), "likelihood_evals": math.nan}
        run["sampling_s"] = sample_s

    print(f"[4/5] references for {args.num_ref} observations: rejection ABC and MCMC")
    abc = run_abc(args, sim, y_ref)
    mcmc = run_mcmc(args, sim, y_ref)
    for name, ref in (("ABC", abc), ("MCMC", mcmc)):
        walls = [d["wall_time_s"] for d in ref["details"]]
        sims = float(sum(d.get("simulations", d.get("init_simulations", 0)) for d in ref["details"]))
        evals = float(sum(d.get("likelihood_evaluations", 0) for d in ref["details"]))
        timings[name] = {"upfront_s": 0.0, "per_obs_s": float(np.mean(walls)), "total_s": float(sum(walls)),
                         "simulations": sims if sims else math.nan, "likelihood_evals": evals if evals else math.nan}

    print("[5/5] comparison table and plots")
    samples_ref = {"INN": samples_test["INN"][:, :args.num_ref], "cINN": samples_test["cINN"][:, :args.num_ref],
                   "ABC": abc["samples"], "MCMC": mcmc["samples"]}
    table, same = comparison_table(args, sim, amortised, samples_ref, samples_test, x_ref, y_ref, x_test, y_test,
                                   timings)
    prior_draws = sim.sample_prior(5000, generator=gen)
    for i in range(3):
        plots.corner_plot({k: v[:, i] for k, v in samples_ref.items()}, truth=x_ref[i], prior_samples=prior_draws,
                          param_names=sim.param_names, units=sim.param_units, path=out / f"corner_obs{i}.png")
    plots.arm_plot({k: sim.joint_positions(v[:300, 0]) for k, v in samples_ref.items()}, y_ref[0],
                   path=out / "arm_obs0.png", title="observation 0: sampled arms per method")

    results = {
        "argv": list(sys.argv[1:] if argv is None else argv), "settings": vars(args),
        "machine": {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "simulation": {"path": str(data), "seconds": sim_seconds, "rows": info["num_rows"]},
        "amortised": {k: {kk: vv for kk, vv in v.items() if kk != "posterior"} for k, v in amortised.items()},
        "abc": abc["details"], "mcmc": mcmc["details"],
        "table": table.reset_index().to_dict(orient="records"),
        "same_observations": same.reset_index().to_dict(orient="records"),
        "observations": {"x_ref": x_ref.tolist(), "y_ref": y_ref.tolist()},
        "total_seconds": time.perf_counter() - t_start,
    }
    write_outputs(args, out, table, same, results)
    print()
    print(diagnostics.to_markdown(table))
    print(f"\nwritten to {out.resolve()}: table.md, table.csv, results.json, corner_obs0-2.png, arm_obs0.png "
          f"({results['total_seconds']:.0f} s in total)")
    return results


if __name__ == "__main__":
    main()
