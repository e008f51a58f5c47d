"""Tissue oxygenation from multispectral reflectance: Table 4.2 and Figs. 4.8 / 4.10 on our simulator (thesis 4.2.3).

The simulator is ``simulators.tissue_spectra.TissueSpectra`` (one semi-infinite layer, 8 normalised camera bands,
5 % log-normal noise; parameters ``sO2, v_hb, a_mie, b_mie, g, d``). Every method gets the same simulation budget:
the thesis' 15 000 spectra and a larger one (``--large-budget``, default 50 000: what finishes in the
40-minute budget on this shared 2-core CPU alongside the 15 000 runs). Rows of the table (thesis 4.2.3,
"Competitors"):

* ``INN``: the bidirectional INN of thesis ch. 4 with all losses (``INNConfig`` defaults: ``w_y=30, w_z=50,
  w_x=50, w_pad=10, w_rec=10``), trained with ``fit_posterior(method="inn")``;
* ``INN, only L_y, L_z``: forward training only, ``w_x = 0`` (the Fig. 4.2 ablation, as in
  ``studies/gaussian_mixture_inn.py``);
* ``INN, only L_x``: inverse training only, ``w_y = w_z = 0`` (padding and reconstruction terms kept as in the full
  INN); both ablations at the 15 000 budget only;
* ``INN, noise as parameters`` (ours, not in the thesis; diffusion mode only): the bidirectional INN on the
  simulator made deterministic. The camera noise is log-normal, ``y = ybar(x) exp(sigma eps)``, so every training
  pair's noise draws ``eps = (log y - log ybar(x)) / sigma`` (8 numbers, ``noise_draws``) are known; the INN learns
  ``[x, eps] -> [y, z]`` with the prior ``p(x) N(eps; 0, I)`` (``noise_prior``), ``K = 14 - 8 = 6`` latent
  dimensions and no padding (``INNConfig(deterministic=True)``), and its posterior samples of ``[x, eps]`` keep
  ``x`` (the noise marginalised out). The other INN rows train ``x -> y`` with padding, a forward map that is
  deterministic in ``x`` while ``y`` carries 8 dimensions of noise, and come out over-confident. Its settings are
  those of ``studies/inverse_kinematics_inn.py`` (the package's deterministic INN study) with ``L_kl`` weighted 3
  and 240 epochs (72 at the larger budget, about as many steps), chosen on validation observations apart from the
  test set (``studies/tissue_inn_probe.py``; ``INN_NOISE``);
* ``cINN``: the conditional INN of ch. 3 (``fit_posterior`` default, maximum likelihood);
* ``NN``: a point-estimate MLP ``y -> x`` with squared loss (``sbi_inn.regression``), no posterior, so no
  calibration;
* ``NN + dropout``: the same network with MC dropout (p = 0.2) and a learned aleatoric variance per parameter
  (Kendall & Gal 2017), the thesis' "NN (+Dropout)" row;
* ``ABC``: rejection ABC in quantile mode (``q = 0.005``, thesis app. B.4) with as many simulations as the networks
  were trained on: ``q x budget`` accepted samples per observation (75 at 15 000, 250 at 50 000; the thesis used
  256 of 50 000). More samples per observation need ``N / q`` simulations *per observation set* (e.g. 4096
  samples: 819 200 simulations), and the acceptance region then shrinks only as ``q^(1/D)``;
* ``MCMC``: emcee on the exact likelihood (``TissueSpectra.log_likelihood``) for the first ``--num-mcmc``
  test observations (MCMC costs 30-60 s per observation on one loaded CPU thread here: 50 autocorrelation times
  of ~150 steps), walkers started at that observation's ABC samples; the reference posterior.

Metrics (thesis 4.2.3 "Error measures"; ``sbi_inn.diagnostics``), over ``--num-test`` (5 000) held-out observations,
with bootstrap standard errors over observations:

* MAP estimates by mean shift (``diagnostics.mean_shift``, 4 starts) on the first ``--map-samples`` (256) posterior
  samples (NN: its prediction), clipped to the prior box;
* ``map_error_sO2``: RMSE of the sO2 estimate (sO2 in [0, 1]);
* ``map_error_recoverable``: RMSE over the recoverable parameters in units of each parameter's prior standard
  deviation (the parameters have different units: a_mie spans 5-50 cm^-1). A parameter is recoverable when the MCMC
  reference posteriors contract it by at least ``--recoverable-contraction`` (0.2) on average, contraction = 1 -
  posterior variance / prior variance (posterior width vs prior width; the thesis found sO2, v_hb, a_mie);
* ``map_resim_error``: ``||log ybar(x_map) - log y*||_2`` on the first ``--num-resim`` (1 000) observations, the
  noise-free bands re-simulated at the MAP estimate, in log space because the noise is multiplicative (the row
  "simulation noise" puts the true parameters in: ``sigma ||eps||``, about 0.05 sqrt(8) = 0.14);
* ``calibration_error``: the median of ``|alpha_inl - alpha|`` over 99 levels alpha = 0.01..0.99 and all six
  parameters (thesis 4.2.2; ``diagnostics.coverage_indicators``), from ``--num-samples`` (512) samples per
  observation (the thesis drew 4096; 512 keeps sampling 5 000 observations per method within minutes here).
  Even an exact posterior scores above 0 on a finite test set: the table states that floor for 5 000 observations;
* ``train_s`` (simulation + training), ``infer_s`` (sampling + MAP for all test observations; ABC: its simulations
  and distances; MCMC: its chains), ``per_obs_ms`` and ``simulations``.

``--method monte_carlo`` runs everything on the photon Monte Carlo simulator instead (no likelihood: MCMC is
skipped). It costs about ``(2 budgets + ABC + re-simulation) / rate`` seconds; the JSON of every run records the
rate measured on ``--mc-pilot`` spectra and that estimate (at 0.2 spectra/s, 15 000 spectra take 21 h), so it is
not run here.

Outputs (``--out``, default ``studies/results/tissue_oxygenation``; any other setting goes to ``variants/<tag>/``):
``table.md`` (Table 4.2 per budget, the MCMC subset, the recoverability table), ``results.json`` (all numbers,
settings, timings, per-parameter calibration curves), ``fig_4_8_posterior.png`` (INN, cINN, ABC and MCMC overlaid
for one observation, prior shaded), ``fig_4_10_calibration.png`` (calibration curves of all methods per parameter,
15 000 budget) and ``fig_4_10_calibration_large.png`` (larger budget). Existing results are refused without
``--force``.

Usage:
    python studies/tissue_oxygenation.py --quick          # smoke run, well under a minute
    python studies/tissue_oxygenation.py                  # the committed results
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch.distributions import Normal, Uniform

from sbi_inn import diagnostics, fit_posterior, plots, reference
from sbi_inn.priors import IndependentPrior, support_bounds
from sbi_inn.regression import fit_regressor
from simulators import get_simulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_common import refuse_existing_file, to_json_types, variant_tag  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tissue_oxygenation"
THESIS_BUDGET = 15_000
ABC_QUANTILE = 0.005  # thesis 4.2.3 / app. B.4
MAP_STARTS = 4  # mean-shift starts per observation (the sample mean and 3 samples)
# thesis B.5.3: 3 invertible blocks, 4 fully connected layers per subnet, leaky ReLU, lr 2e-3 -> 2e-5, batch 200.
# Here 4 blocks of 3 layers (2 hidden) and batch 500 (MMD over larger batches), chosen for sampling speed on a CPU.
INN_FLOW = {"num_blocks": 4, "hidden": 128, "num_layers": 2, "activation": "leaky_relu", "clamp": 1.0}
INN_VARIANTS = {"INN": {}, "INN, only L_y, L_z": {"w_x": 0.0}, "INN, only L_x": {"w_y": 0.0, "w_z": 0.0}}
INN_NOISE_NAME = "INN, noise as parameters"
# the deterministic-INN settings of studies/inverse_kinematics_inn.py, L_kl weighted 3 (module docstring)
INN_NOISE = {"deterministic": True, "w_y": 100.0, "w_z": 50.0, "w_x": 50.0, "w_kl": 3.0, "widths": [0.2, 0.5, 1.2],
             "flow": {"num_blocks": 6, "hidden": 256, "num_layers": 2, "activation": "silu", "clamp": 1.0}}
NN_VARIANTS = {"NN": {}, "NN + dropout": {"dropout": 0.2, "heteroscedastic": True}}
COLUMNS = {
    "map_error_sO2": "RMSE of the mean-shift MAP estimate of sO2 (prior [0, 1])",
    "map_error_recoverable": "RMSE of the MAP estimate over the recoverable parameters, in prior standard deviations",
    "map_resim_error": "||log ybar(x_map) - log y*||, noise-free bands at the MAP estimate (first num_resim obs.)",
    "calibration_error": "median |alpha_inl - alpha| over 99 levels and the 6 parameters, in %",
    "train_s": "simulation + training seconds (amortised methods, paid once)",
    "infer_s": "seconds for the posteriors (samples + MAP) of all the row's test observations",
    "per_obs_ms": "milliseconds per observation (inference only)",
    "simulations": "simulator calls (MCMC: likelihood evaluations; its walkers start at ABC samples)",
    "test_obs": "observations the row's MAP and calibration columns are computed over",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="results folder (default: studies/results/tissue_oxygenation for the "
                   "default run, its variants/<tag>/ for any other)")
    p.add_argument("--force", action="store_true", help="write over existing results")
    p.add_argument("--method", choices=("diffusion", "monte_carlo"), default="diffusion",
                   help="photon transport of the simulator (monte_carlo: ~0.2 spectra/s, see the docstring)")
    p.add_argument("--large-budget", type=int, default=50_000, help="the larger simulation budget (0: none)")
    p.add_argument("--num-test", type=int, default=5000, help="held-out test observations")
    p.add_argument("--num-resim", type=int, default=1000, help="test observations for the re-simulation error")
    p.add_argument("--num-mcmc", type=int, default=6, help="test observations with an MCMC reference (0: none)")
    p.add_argument("--num-samples", type=int, default=512, help="posterior samples per test observation")
    p.add_argument("--map-samples", type=int, default=256, help="of which the mean-shift MAP uses the first ...")
    p.add_argument("--epochs-inn", type=int, default=30, help="INN epochs at 15 000 simulations")
    p.add_argument("--epochs-inn-large", type=int, default=8, help="INN epochs at the larger budget")
    p.add_argument("--epochs-inn-noise", type=int, default=240, help="epochs of the INN with the noise as parameters "
                   "at 15 000 simulations")
    p.add_argument("--epochs-inn-noise-large", type=int, default=72, help="... at the larger budget")
    p.add_argument("--epochs-cinn", type=int, default=100, help="cINN epochs at 15 000 (early stopping may end it)")
    p.add_argument("--epochs-cinn-large", type=int, default=30, help="cINN epochs at the larger budget")
    p.add_argument("--epochs-nn", type=int, default=60, help="NN epochs at 15 000 (early stopping may end it)")
    p.add_argument("--epochs-nn-large", type=int, default=20, help="NN epochs at the larger budget")
    p.add_argument("--mcmc-walkers", type=int, default=32)
    p.add_argument("--mcmc-max-steps", type=int, default=8000, help="cap on MCMC steps per walker")
    p.add_argument("--recoverable-contraction", type=float, default=0.2,
                   help="mean posterior contraction (1 - var_post / var_prior) above which a parameter counts as "
                        "recoverable")
    p.add_argument("--mc-pilot", type=int, default=3, help="Monte Carlo spectra timed for the cost estimate (0: none)")
    p.add_argument("--num-bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    p.add_argument("--quick", action="store_true", help="smoke run in well under a minute")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.quick:
        args.large_budget, args.num_test, args.num_resim, args.num_mcmc = 4000, 200, 50, 2
        args.num_samples, args.map_samples, args.mcmc_max_steps, args.mc_pilot = 128, 64, 300, 0
        args.mcmc_walkers = 16
        args.epochs_inn = args.epochs_inn_large = args.epochs_cinn = args.epochs_cinn_large = 2
        args.epochs_inn_noise = args.epochs_inn_noise_large = 2
        args.epochs_nn = args.epochs_nn_large = 3
        args.num_bootstrap = 20
    budgets = [2000 if args.quick else THESIS_BUDGET] + ([args.large_budget] if args.large_budget else [])
    args.budgets = sorted(set(budgets))
    for name in ("num_test", "num_samples", "map_samples", "num_resim", "num_bootstrap", "mcmc_walkers"):
        if getattr(args, name) < 2:
            p.error(f"--{name.replace('_', '-')} must be at least 2")
    if args.num_resim > args.num_test or args.num_mcmc > args.num_test:
        p.error("--num-resim and --num-mcmc must not exceed --num-test")
    if args.map_samples > args.num_samples:
        p.error("--map-samples must not exceed --num-samples")
    if any(int(round(b * ABC_QUANTILE)) < 2 for b in args.budgets):
        p.error(f"every budget must give ABC at least 2 samples at q = {ABC_QUANTILE} (budget >= {2 / ABC_QUANTILE:g})")
    if args.method == "monte_carlo":
        args.num_mcmc = 0  # no likelihood
    if args.num_mcmc and args.mcmc_walkers > int(round(args.budgets[-1] * ABC_QUANTILE)):
        p.error(f"--mcmc-walkers must not exceed the ABC samples of the largest budget "
                f"({int(round(args.budgets[-1] * ABC_QUANTILE))}), where the walkers start")
    if args.out is None:
        tag = variant_tag(p, args, ("out", "force", "quiet", "threads", "budgets"))
        args.out = str(RESULTS / "variants" / tag) if tag else str(RESULTS)
    refuse_existing_file(p, Path(args.out) / "results.json", args.force)
    return args


# -- methods ---------------------------------------------------------------------------------------------------------
def inn_config(args, budget: int, weights: dict) -> dict:
    epochs = args.epochs_inn if budget == args.budgets[0] else args.epochs_inn_large
    train = {"epochs": epochs, "batch_size": 500, "lr": 2e-3, "lr_final": 2e-5, "patience": None}
    return {**weights, "flow": dict(INN_FLOW), "train": train}


def inn_noise_config(args, budget: int) -> dict:
    epochs = args.epochs_inn_noise if budget == args.budgets[0] else args.epochs_inn_noise_large
    train = {"epochs": epochs, "batch_size": 500, "lr": 3e-3, "lr_final": 1e-5, "patience": None}
    return {**INN_NOISE, "train": train}


def noise_draws(sim, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The camera-noise draws ``eps`` ``(n, M)`` behind observations ``y = ybar(x) exp(sigma eps)`` ``(n, M)`` of
    parameters ``x`` ``(n, D)`` (``TissueSpectra``'s log-normal noise, diffusion mode: ``ybar`` is exact)."""
    ybar = sim.band_intensities(x).to(torch.float64)
    return ((torch.log(y.to(torch.float64)) - torch.log(ybar)) / sim.noise).to(x.dtype)


def noise_prior(sim) -> IndependentPrior:
    """The prior of ``[x, eps]``: the simulator's box for ``x``, independent standard normals for ``eps``."""
    low, high = support_bounds(sim.prior)
    return IndependentPrior([Uniform(float(a), float(b)) for a, b in zip(low, high)]
                            + [Normal(0.0, 1.0)] * sim.obs_dim)


def cinn_config(args, budget: int) -> dict:
    epochs = args.epochs_cinn if budget == args.budgets[0] else args.epochs_cinn_large
    # the schedule and box map its tables were made with
    return {"train": {"epochs": epochs, "lr_schedule": "exponential"}, "interval_map": "logit"}


def nn_config(args, budget: int, extra: dict) -> dict:
    epochs = args.epochs_nn if budget == args.budgets[0] else args.epochs_nn_large
    # thesis B.5.3: 8 fully connected ReLU layers, lr 1e-2 -> 1e-5, batch 100, dropout 0.2; here 4 hidden layers and
    # Adam from 1e-3 (1e-2 diverged in a short trial with the Gaussian NLL)
    return {"hidden": 128, "num_layers": 4, "epochs": epochs, "batch_size": 128, "lr": 1e-3, "lr_final": 1e-5,
            "patience": 10, **extra}


def clip_to_prior(x: torch.Tensor, prior) -> torch.Tensor:
    """``x`` clipped into the prior box (MAP estimates and NN outputs the simulator must accept)."""
    low, high = support_bounds(prior)
    return torch.maximum(torch.minimum(x, high.to(x)), low.to(x))


def posterior_estimates(args, samples: torch.Tensor, prior) -> torch.Tensor:
    """Mean-shift MAP ``(B, D)`` from the first ``--map-samples`` of the samples ``(n, B, D)``."""
    return clip_to_prior(diagnostics.mean_shift(samples[:args.map_samples], num_starts=MAP_STARTS), prior)


def run_amortised(args, sim, budget: int, x_train, y_train, sim_s: float, y_test, gen_seed: int) -> dict:
    """Train every network at ``budget`` and draw its test-set posteriors; name -> dict with samples / MAP."""
    runs = {}
    names = list(INN_VARIANTS) if budget == args.budgets[0] else ["INN"]
    for name in names:
        t0 = time.perf_counter()
        post = fit_posterior(data=(x_train, y_train), prior=sim.prior, method="inn", seed=args.seed,
                             config=inn_config(args, budget, INN_VARIANTS[name]), show_progress=not args.quiet)
        runs[name] = {"model": post, "train_s": sim_s + time.perf_counter() - t0, "epochs": len(post.history)}
    if args.method == "diffusion":  # the Monte Carlo mode's photon noise cannot be recovered from (x, y)
        t0 = time.perf_counter()
        x_aug = torch.cat([x_train, noise_draws(sim, x_train, y_train)], 1)
        post = fit_posterior(data=(x_aug, y_train), prior=noise_prior(sim), method="inn", seed=args.seed,
                             config=inn_noise_config(args, budget), show_progress=not args.quiet)
        runs[INN_NOISE_NAME] = {"model": post, "train_s": sim_s + time.perf_counter() - t0,
                                "epochs": len(post.history), "keep": sim.param_dim}
    t0 = time.perf_counter()
    post = fit_posterior(data=(x_train, y_train), prior=sim.prior, method="cinn", seed=args.seed,
                         config=cinn_config(args, budget), show_progress=not args.quiet)
    runs["cINN"] = {"model": post, "train_s": sim_s + time.perf_counter() - t0, "epochs": len(post.history)}
    for name, extra in NN_VARIANTS.items():
        t0 = time.perf_counter()
        reg = fit_regressor(x_train, y_train, config=nn_config(args, budget, extra), seed=args.seed,
                            show_progress=not args.quiet)
        runs[name] = {"model": reg, "train_s": sim_s + time.perf_counter() - t0, "epochs": len(reg.history)}
    for name, run in runs.items():
        t0 = time.perf_counter()
        if name == "NN":
            run["samples"] = None
            run["map"] = clip_to_prior(run["model"].predict(y_test), sim.prior)
        else:
            if name.startswith("NN"):
                s = clip_to_prior(run["model"].sample_batched((args.num_samples,), y_test, seed=gen_seed), sim.prior)
            else:
                s = run["model"].sample_batched((args.num_samples,), y_test, seed=gen_seed).cpu()
                s = s[..., :run["keep"]] if "keep" in run else s  # [x, eps] -> x
            run["samples"] = s
            run["map"] = posterior_estimates(args, s, sim.prior)
        run["infer_s"] = time.perf_counter() - t0
        run["simulations"] = budget
        print(f"  {name} @ {budget}: {run['epochs']} epochs, train {run['train_s']:.0f} s, inference "
              f"{run['infer_s']:.0f} s", flush=True)
    return runs


def run_abc(args, sim, budget: int, y_test) -> dict:
    n = int(round(budget * ABC_QUANTILE))
    res = reference.abc_rejection_batch(sim.simulate, sim.prior, y_test, n, quantile=ABC_QUANTILE,
                                        seed=args.seed + 1 + budget, show_progress=not args.quiet)
    t0 = time.perf_counter()
    x_map = posterior_estimates(args, res.samples, sim.prior)
    print(f"  ABC @ {budget}: {n} of {res.num_simulations} simulations per observation, {res.wall_time:.0f} s",
          flush=True)
    return {"samples": res.samples, "map": x_map, "infer_s": res.wall_time + time.perf_counter() - t0,
            "train_s": 0.0, "simulations": res.num_simulations, "accepted": n}


def run_mcmc(args, sim, y_ref, initial_pool) -> dict:
    """emcee per observation, walkers started at that observation's closest ABC samples."""
    samples, details = [], []
    t_all = time.perf_counter()
    for i, y in enumerate(y_ref):
        init = initial_pool[: args.mcmc_walkers, i].double()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = reference.mcmc(sim.log_likelihood, sim.prior, y.double(), args.num_samples,
                                 num_walkers=args.mcmc_walkers, initial=init, seed=args.seed + i,
                                 max_steps=args.mcmc_max_steps)
        notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        samples.append(res.samples.float())
        details.append({"wall_time_s": res.wall_time, "steps": res.num_steps, "tau_max": float(res.tau.max()),
                        "acceptance_fraction": res.acceptance_fraction,
                        "likelihood_evaluations": res.num_likelihood_evaluations, "warnings": notes})
        print(f"  MCMC observation {i}: {res.num_steps} steps, tau max {float(res.tau.max()):.0f}, "
              f"{res.wall_time:.0f} s" + (" (short chain: see warnings)" if notes else ""), flush=True)
    s = torch.stack(samples, 1)
    return {"samples": s, "map": posterior_estimates(args, s, sim.prior), "infer_s": time.perf_counter() - t_all,
            "train_s": 0.0, "simulations": sum(d["likelihood_evaluations"] for d in details), "details": details}


# -- metrics ---------------------------------------------------------------------------------------------------------
def log_bands(sim, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Log of the noise-free normalised bands ``(n, M)`` (Monte Carlo mode: seeded photon noise)."""
    return torch.log(sim.band_intensities(x, generator=torch.Generator().manual_seed(seed + 3)))


def prior_std(prior) -> torch.Tensor:
    return prior.variance.sqrt()


def metrics_row(args, sim, run: dict, x_true, y_obs, recoverable: list[int], resim: int) -> dict:
    """The Table 4.2 columns of one method on ``B`` observations (bootstrap standard errors over observations)."""
    nb, seed = args.num_bootstrap, args.seed
    sd = prior_std(sim.prior)
    x_map = run["map"]
    b = x_true.shape[0]
    row = {}
    sq0 = (x_map[:, 0] - x_true[:, 0]).square()
    row["map_error_sO2"], row["map_error_sO2_se"] = diagnostics.bootstrap(
        lambda v: v.mean().sqrt(), sq0, num_resamples=nb, seed=seed)
    sq = ((x_map - x_true) / sd)[:, recoverable].square().sum(-1)
    row["map_error_recoverable"], row["map_error_recoverable_se"] = diagnostics.bootstrap(
        lambda v: v.mean().sqrt(), sq, num_resamples=nb, seed=seed)
    k = min(resim, b)
    err = diagnostics.map_resimulation_error(lambda x: log_bands(sim, x, seed), x_map[:k], torch.log(y_obs[:k]))
    row["map_resim_error"], row["map_resim_error_se"] = diagnostics.bootstrap(
        lambda v: v.mean(), err, num_resamples=nb, seed=seed)
    alphas = diagnostics.default_alphas()
    if run.get("samples") is not None:
        inl = diagnostics.coverage_indicators(run["samples"], x_true, alphas).to(torch.float64)    # (B, A, D)
        ce, ce_se = diagnostics.bootstrap(lambda v: (v.mean(0) - alphas[:, None]).abs().quantile(0.5), inl,
                                          num_resamples=nb, seed=seed, axes=[0])
        row["calibration_error"], row["calibration_error_se"] = 100 * ce, 100 * ce_se
        run["curve"] = (inl.mean(0) - alphas[:, None])                                              # (A, D)
    else:
        row["calibration_error"], row["calibration_error_se"] = math.nan, math.nan
    row["train_s"] = float(run["train_s"])
    row["infer_s"] = float(run["infer_s"])
    row["per_obs_ms"] = 1000 * float(run["infer_s"]) / b
    row["simulations"] = float(run["simulations"])
    row["test_obs"] = float(b)
    return row


def noise_row(args, sim, x_true, y_obs, resim: int) -> dict:
    """Re-simulation error of the true parameters: the noise floor of the MAP re-simulation column."""
    k = min(resim, x_true.shape[0])
    err = diagnostics.map_resimulation_error(lambda x: log_bands(sim, x, args.seed), x_true[:k],
                                             torch.log(y_obs[:k]))
    v, se = diagnostics.bootstrap(lambda t: t.mean(), err, num_resamples=args.num_bootstrap, seed=args.seed)
    return {"map_resim_error": v, "map_resim_error_se": se}


def calibration_floor(num_obs: int, dim: int, reps: int, seed: int) -> dict:
    """Calibration error of an exact posterior on ``num_obs`` observations: probability integral transforms uniform
    (independent across parameters, an approximation), ``reps`` replicates; mean and 90 % quantile in %."""
    g = torch.Generator().manual_seed(seed)
    alphas = diagnostics.default_alphas()
    vals = []
    for _ in range(reps):
        u = torch.rand(num_obs, 1, dim, generator=g, dtype=torch.float64)
        inside = ((u - 0.5).abs() <= alphas[None, :, None] / 2).to(torch.float64).mean(0)            # (A, D)
        vals.append(float((inside - alphas[:, None]).abs().quantile(0.5)))
    v = torch.tensor(vals)
    return {"mean": 100 * float(v.mean()), "q90": 100 * float(v.quantile(0.9)), "replicates": reps}


def recoverability(sim, mcmc_samples, fallback_samples, threshold: float) -> dict:
    """Mean posterior contraction per parameter (MCMC reference where run, else the fallback samples)."""
    source = "MCMC" if mcmc_samples is not None else "cINN"
    s = mcmc_samples if mcmc_samples is not None else fallback_samples
    c = diagnostics.posterior_contraction(s, sim.prior).mean(0)
    post_sd = s.std(0).mean(0)
    rec = [j for j in range(len(c)) if float(c[j]) >= threshold]
    if 0 not in rec:
        rec = [0] + rec  # sO2 is the parameter of interest; keep it in "all" even if it were poorly determined
    return {"source": source, "threshold": threshold, "contraction": c.tolist(),
            "posterior_std": post_sd.tolist(), "prior_std": prior_std(sim.prior).tolist(),
            "recoverable": [sim.param_names[j] for j in rec], "indices": rec}


def monte_carlo_cost(args, budgets) -> dict:
    """Spectra/s of the photon Monte Carlo measured on ``--mc-pilot`` prior draws, and what this study would cost."""
    if args.mc_pilot < 1:
        return {"measured": False}
    mc = get_simulator("tissue_spectra", method="monte_carlo")
    x = mc.sample_prior(args.mc_pilot, generator=torch.Generator().manual_seed(args.seed + 7))
    t0 = time.perf_counter()
    mc.simulate(x, generator=torch.Generator().manual_seed(args.seed + 8))
    rate = args.mc_pilot / (time.perf_counter() - t0)
    total = sum(budgets) * 2 + args.num_resim * 9      # training + as many for ABC; re-simulations of the 9 methods
    return {"measured": True, "pilot_spectra": args.mc_pilot, "spectra_per_s": rate,
            "seconds_per_15000": THESIS_BUDGET / rate, "study_spectra": total, "study_hours": total / rate / 3600}


# -- outputs ---------------------------------------------------------------------------------------------------------
def compact_png(path: Path) -> None:
    """Rewrite a PNG with a 256-colour palette (the 6 x 6 corner plot is ~1.6 MB in RGBA, ~0.5 MB so)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256)
    small.save(path, optimize=True)


def table_frame(rows: dict) -> pd.DataFrame:
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "method"
    return df


def write_table(args, out: Path, tables: dict, same: pd.DataFrame | None, rec: dict, floor: dict, mc: dict,
                argv) -> str:
    legend = "\n".join(f"- `{k}`: {v}" for k, v in COLUMNS.items())
    names = ", ".join(rec["recoverable"])
    lines = [f"# Tissue oxygenation (thesis 4.2.3, Table 4.2) on TissueSpectra ({args.method})", "",
             f"Test set: {args.num_test} held-out observations (re-simulation error on the first {args.num_resim}); "
             f"{args.num_samples} posterior samples per observation (MAP: mean shift on the first "
             f"{args.map_samples}); ABC q = {ABC_QUANTILE}; `±`: bootstrap standard error over observations "
             f"({args.num_bootstrap} replicates). Recoverable parameters ({rec['source']} contraction >= "
             f"{rec['threshold']}): {names}.", "",
             f"An exactly calibrated posterior scores {floor['mean']:.2f} % calibration error on average on "
             f"{args.num_test} observations (90 % of the time below {floor['q90']:.2f} %): the floor to compare "
             "with.", ""]
    for budget, df in tables.items():
        lines += [f"## {budget} training simulations", "", diagnostics.to_markdown(df), ""]
    if same is not None:
        lines += [f"## All methods on the {args.num_mcmc} MCMC observations ({args.budgets[0]} simulations)", "",
                  "Calibration from so few observations is very noisy; the MAP columns compare with the reference.",
                  "", diagnostics.to_markdown(same), ""]
    contraction = " | ".join(f"{n}: {c:.2f}" for n, c in zip(rec["names"], rec["contraction"]))
    lines += ["## Recoverability", "",
              f"Mean posterior contraction 1 - var_post / var_prior ({rec['source']}): {contraction}.", "", legend, ""]
    if mc.get("measured"):
        lines += [f"Monte Carlo mode: {mc['spectra_per_s']:.3g} spectra/s measured on {mc['pilot_spectra']} "
                  f"spectra, i.e. {mc['seconds_per_15000'] / 3600:.1f} h for 15 000 training spectra and about "
                  f"{mc['study_hours']:.0f} h for this study (not run).", ""]
    lines += [f"Command: `python studies/tissue_oxygenation.py {' '.join(argv)}`", ""]
    text = "\n".join(lines)
    (out / "table.md").write_text(text)
    return text


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    sim = get_simulator("tissue_spectra", method=args.method)

    print(f"[1/6] {args.num_test} test observations", flush=True)
    gen = torch.Generator().manual_seed(args.seed + 10_000)
    x_test = sim.sample_prior(args.num_test, generator=gen)
    y_test = sim.simulate(x_test, generator=gen)
    ref = slice(0, args.num_mcmc)

    mc = monte_carlo_cost(args, args.budgets)
    if mc.get("measured"):
        print(f"  Monte Carlo: {mc['spectra_per_s']:.3g} spectra/s; this study would take {mc['study_hours']:.0f} h "
              "in that mode", flush=True)

    runs: dict[int, dict] = {}
    for i, budget in enumerate(args.budgets):
        print(f"[{2 + i}/6] {budget} training simulations: networks and ABC", flush=True)
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed + budget)
        x_train = sim.sample_prior(budget, generator=g)
        y_train = sim.simulate(x_train, generator=g)
        sim_s = time.perf_counter() - t0
        runs[budget] = run_amortised(args, sim, budget, x_train, y_train, sim_s, y_test, args.seed + 20_000)
        runs[budget]["ABC"] = run_abc(args, sim, budget, y_test)

    mcmc = None
    if args.num_mcmc:
        print(f"[4/6] MCMC on {args.num_mcmc} test observations", flush=True)
        mcmc = run_mcmc(args, sim, y_test[ref], runs[args.budgets[-1]]["ABC"]["samples"][:, ref])

    print("[5/6] metrics", flush=True)
    small = args.budgets[0]
    rec = recoverability(sim, None if mcmc is None else mcmc["samples"], runs[small]["cINN"]["samples"][:, :200],
                         args.recoverable_contraction)
    rec["names"] = sim.param_names
    tables, curves = {}, {}
    for budget, methods in runs.items():
        rows = {name: metrics_row(args, sim, run, x_test, y_test, rec["indices"], args.num_resim)
                for name, run in methods.items()}
        if mcmc is not None and budget == small:
            rows["MCMC"] = metrics_row(args, sim, mcmc, x_test[ref], y_test[ref], rec["indices"], args.num_resim)
        rows["simulation noise"] = noise_row(args, sim, x_test, y_test, args.num_resim)
        tables[budget] = table_frame(rows)
        curves[budget] = {name: run["curve"] for name, run in methods.items() if "curve" in run}
    same = None
    if mcmc is not None:
        same_rows = {}
        for name, run in runs[small].items():
            sub = {**run, "map": run["map"][ref], "samples": None if run["samples"] is None else run["samples"][:, ref],
                   "infer_s": run["infer_s"] * args.num_mcmc / args.num_test}
            same_rows[name] = metrics_row(args, sim, sub, x_test[ref], y_test[ref], rec["indices"], args.num_resim)
        same_rows["MCMC"] = metrics_row(args, sim, mcmc, x_test[ref], y_test[ref], rec["indices"], args.num_resim)
        same = table_frame(same_rows).drop(columns=["train_s", "simulations"])
    floor = calibration_floor(args.num_test, sim.param_dim, 50 if args.quick else 200, args.seed)

    print("[6/6] figures and tables", flush=True)
    alphas = diagnostics.default_alphas()
    plots.calibration_plot(alphas, curves[small], param_names=sim.param_names, path=out / "fig_4_10_calibration.png")
    if len(args.budgets) > 1:
        plots.calibration_plot(alphas, curves[args.budgets[-1]], param_names=sim.param_names,
                               path=out / "fig_4_10_calibration_large.png")
    i_fig = 0
    y_fig = y_test[i_fig]
    fig_samples = {name: runs[small][name]["model"].sample((8 * args.num_samples,), y_fig, seed=args.seed).cpu()
                   for name in ("INN", "cINN")}
    fig_samples["ABC"] = runs[small]["ABC"]["samples"][:, i_fig]
    if mcmc is not None:
        fig_samples["MCMC"] = mcmc["samples"][:, i_fig]
    prior_draws = sim.sample_prior(20_000, generator=torch.Generator().manual_seed(args.seed + 5))
    plots.corner_plot(fig_samples, truth=x_test[i_fig], prior_samples=prior_draws, param_names=sim.param_names,
                      units=sim.param_units, path=out / "fig_4_8_posterior.png")
    compact_png(out / "fig_4_8_posterior.png")

    results = {
        "argv": argv, "settings": {k: v for k, v in vars(args).items()},
        "simulator": sim.config(),
        "machine": {"torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "load_average": list(__import__("os").getloadavg())},
        "inn_variants": INN_VARIANTS, "inn_flow": INN_FLOW, "nn_variants": NN_VARIANTS,
        "configs": {str(b): {"INN": inn_config(args, b, {}), INN_NOISE_NAME: inn_noise_config(args, b),
                             "cINN": cinn_config(args, b),
                             "NN": nn_config(args, b, {})} for b in args.budgets},
        "epochs": {str(b): {n: r.get("epochs") for n, r in m.items()} for b, m in runs.items()},
        "abc": {str(b): {"accepted_per_obs": m["ABC"]["accepted"], "simulations": m["ABC"]["simulations"]}
                for b, m in runs.items()},
        "mcmc": None if mcmc is None else mcmc["details"],
        "recoverability": rec, "calibration_floor": floor, "monte_carlo_cost": mc,
        "tables": {str(b): df.reset_index().to_dict(orient="records") for b, df in tables.items()},
        "mcmc_subset_table": None if same is None else same.reset_index().to_dict(orient="records"),
        "calibration_curves": {str(b): {n: c.tolist() for n, c in cs.items()} for b, cs in curves.items()},
        "figure_observation": {"index": i_fig, "x": x_test[i_fig].tolist(), "y": y_fig.tolist()},
        "total_seconds": time.perf_counter() - t_start,
    }
    text = write_table(args, out, tables, same, rec, floor, mc, argv)
    (out / "results.json").write_text(json.dumps(to_json_types(results), indent=2) + "\n")
    print()
    print(text)
    print(f"written to {out.resolve()} ({results['total_seconds']:.0f} s in total)")
    return results


if __name__ == "__main__":
    main()
