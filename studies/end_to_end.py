"""The main job: one end-to-end run of sbi_inn, scored against the exact posterior.

The problem is the 4-DoF arm of thesis sec. 4.2.2 (``simulators/inverse_kinematics.py``: a rail position and three
joint angles, observed through the arm's end point) with Gaussian observation noise of standard deviation 0.01, so
that the posterior ``p(x | y)`` is a proper density with an exact sampler: draw ``x`` from the prior and accept it with
probability ``exp(-||y - s(x)||^2 / (2 * 0.01^2))``, the likelihood over its maximum
(``sbi_inn.reference.likelihood_rejection``). The thesis' arm is noise-free; with noise 0.01 the posterior is a thin,
curved band around the noise-free solution set, 1 % of the arm's reach wide.

Steps: simulate to HDF5 -> train a conditional INN (thesis ch. 3) from the file -> posterior samples for held-out
observations -> diagnostics -> plots and a JSON summary. Printed at the end:

* the **C2ST** between cINN samples and exact posterior samples (a classifier's cross-validated accuracy at telling
  them apart: 0.50 = indistinguishable, 1.00 = completely different), averaged over a few test observations;
* the **calibration error** (median over confidence levels and parameters of ``|alpha_inl - alpha|``, thesis sec.
  4.2.2) beside its noise floor: what a perfectly calibrated posterior scores with the same number of test
  observations and samples (from seeded draws of exactly calibrated samples, so below it is chance);
* the **re-simulation error** ``||s(x) - y||`` of the samples (noise-free arm ``s``) beside the observation noise and
  beside the re-simulation error of the exact posterior's samples, which is what a perfect posterior scores.

Reproducibility: training runs a fixed number of epochs (``--epochs``; learning rate decaying over them, the weights
of the best validation epoch kept), never a wall-clock budget, and every random choice derives from ``--seed``, so
the same seed gives the same numbers on any machine up to floating point (thread counts and CPU/GPU kernels round
differently). Timings are reported but are not part of any number above.

Outputs (``--out``, default ``outputs/end_to_end/``): ``inverse_kinematics.h5`` (the simulations),
``inverse_kinematics.sbi`` (the saved posterior), ``corner.png`` (cINN beside the exact posterior for one
observation), ``arm.png`` (both as arm configurations), ``calibration.png`` and ``summary.json``. A run refuses to
start when any of these results exist, unless ``--force``. The simulation file is the exception: it is reused when it
holds exactly the simulations asked for (same simulator configuration, seed and count; ``simulate_to_hdf5`` checks
the recorded settings) and resumed when an earlier run was interrupted, since its contents are then bit for bit what
a fresh simulation would write; a file with other settings is refused, and replaced with ``--force``.

A few minutes on 2 CPU cores (measured runs: ``benchmarks/results/history.md``), on one torch thread by default
(``--threads``): the networks are small, and on a 2-core machine shared with other work two threads were several
times slower. ``--quick`` is a smoke run of well under a minute with loose numbers (4000 simulations, 40 epochs, one
C2ST observation with a classifier trained 200 instead of 1000 epochs).

Usage:
    python studies/end_to_end.py [--out outputs/end_to_end] [--num-simulations 30000] [--epochs 80]
                                 [--num-test 1000] [--num-reference 5] [--seed 0] [--threads 1] [--device auto]
                                 [--quick] [--force] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from sbi_inn import (
    __version__,
    diagnostics,
    fit_posterior,
    hdf5_info,
    load_posterior,
    plots,
    reference,
    simulate_to_hdf5,
)
from sbi_inn.cli.options import torch_threads
from simulators import get_simulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_common import prepare_output  # noqa: E402

NOISE = 0.01           # observation noise of the arm's end point (length units; the arm reaches 2)
SAMPLES = 1000         # posterior samples per test observation for calibration and re-simulation error
C2ST_SAMPLES = 2000    # cINN and exact samples per observation for the C2ST
RESULTS = ("inverse_kinematics.sbi", "corner.png", "arm.png", "calibration.png", "summary.json")
STREAMS = ("test", "sampling", "reference", "c2st", "floor", "plots")


def seed_streams(seed: int) -> dict[str, int]:
    """One independent integer seed per named random stream, all from ``seed`` (simulation and training take
    ``seed`` itself, which ``simulate_to_hdf5`` and ``fit_posterior`` record)."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: int(c.generate_state(1, dtype=np.uint32)[0]) for name, c in zip(STREAMS, children)}


def calibration_floor(num_obs: int, num_samples: int, dim: int, seed: int, replicates: int = 20) -> dict:
    """Calibration error of an exactly calibrated posterior for ``num_obs`` test observations and ``num_samples``
    samples each: samples and truths drawn from one distribution, ``replicates`` times. Mean and 90 % quantile."""
    gen = torch.Generator().manual_seed(seed)
    errors = torch.tensor([diagnostics.calibration_error(torch.randn(num_samples, num_obs, dim, generator=gen),
                                                         torch.randn(num_obs, dim, generator=gen))
                           for _ in range(replicates)])
    return {"mean": float(errors.mean()), "q90": float(errors.quantile(0.9)), "replicates": replicates}


def simulate(sim, n: int, path: Path, seed: int, force: bool, show: bool) -> dict:
    """Fill ``path`` with ``n`` simulations (reused or resumed when it matches; see the module docstring)."""
    resume = True
    if path.exists():
        try:
            requested = hdf5_info(path)["num_requested"]
        except (OSError, KeyError, ValueError) as err:
            requested = f"unreadable ({err})"
        if requested != n:
            if not force:
                raise SystemExit(f"{path} holds a run of {requested} simulations, this run asks for {n}; pass "
                                 "--force to replace it, or choose another --out")
            resume = False
    try:
        return simulate_to_hdf5(sim, sim.prior, n, path, seed=seed, resume=resume, show_progress=show)
    except ValueError as err:
        if not force:
            raise SystemExit(f"{path} was written with other settings ({err}); pass --force to replace it, or "
                             "choose another --out") from err
        return simulate_to_hdf5(sim, sim.prior, n, path, seed=seed, resume=False, show_progress=show)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/end_to_end", help="output folder (default: %(default)s)")
    parser.add_argument("--num-simulations", type=int, default=30_000, help="training simulations (%(default)s)")
    parser.add_argument("--epochs", type=int, default=80, help="training epochs, a fixed number (%(default)s)")
    parser.add_argument("--num-test", type=int, default=1000,
                        help="held-out observations for calibration and re-simulation error (%(default)s)")
    parser.add_argument("--num-reference", type=int, default=5,
                        help="of those, how many are scored by C2ST against the exact posterior (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds everything (%(default)s)")
    parser.add_argument("--device", default="auto", help="training and sampling device (%(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (%(default)s; see the docstring)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4000 simulations, 40 epochs, 50 test "
                        "observations, one C2ST observation with 500 samples and a classifier trained 200 epochs")
    parser.add_argument("--force", action="store_true", help="overwrite the results of an earlier run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    c2st_samples, c2st_options = C2ST_SAMPLES, {}
    if args.quick:
        args.num_simulations, args.epochs, args.num_test, args.num_reference = 4000, 40, 50, 1
        c2st_samples, c2st_options = 500, {"max_iter": 200}
    if (args.seed < 0 or args.num_simulations < 100 or args.epochs < 1 or args.threads < 1
            or not 1 <= args.num_reference <= args.num_test):
        parser.error("need --seed >= 0, --num-simulations >= 100, --epochs >= 1, --threads >= 1 and "
                     "1 <= --num-reference <= --num-test")
    out = Path(args.out)
    prepare_output(out, RESULTS, args.force)
    with torch_threads(args.threads), threadpool_limits(args.threads):  # BLAS threads too (the C2ST classifier)
        return run(args, out, c2st_samples, c2st_options)


def run(args, out: Path, c2st_samples: int, c2st_options: dict) -> dict:
    show = not args.quiet
    seeds = seed_streams(args.seed)
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    # 1. simulate to HDF5
    sim = get_simulator("inverse_kinematics", noise=NOISE)
    data_path = out / "inverse_kinematics.h5"
    print(f"[1/5] simulating {args.num_simulations} arm poses (observation noise {NOISE}) -> {data_path}")
    t0 = time.perf_counter()
    sim_info = simulate(sim, args.num_simulations, data_path, args.seed, args.force, show)
    simulate_seconds = time.perf_counter() - t0

    # 2. train a conditional INN from the file, a fixed number of epochs (no early stopping, no time budget)
    print(f"[2/5] training a conditional INN for {args.epochs} epochs")
    config = {"train": {"epochs": args.epochs, "patience": None, "lr_schedule": "exponential"}}
    t0 = time.perf_counter()
    posterior = fit_posterior(data=data_path, method="cinn", config=config, seed=args.seed, device=args.device,
                              show_progress=show)
    train_seconds = time.perf_counter() - t0
    model_path = Path(posterior.save(out / "inverse_kinematics.sbi", overwrite=True))  # --force was checked at start
    posterior = load_posterior(model_path, device=args.device)
    history = posterior.history
    best = min(history, key=lambda r: r.get("val_loss", math.inf))

    # 3. held-out observations (their own seed: never seen in training) and posterior samples
    print(f"[3/5] {SAMPLES} posterior samples for each of {args.num_test} held-out observations")
    gen = torch.Generator().manual_seed(seeds["test"])
    x_test = sim.sample_prior(args.num_test, generator=gen)
    y_test = sim.simulate(x_test, generator=gen)
    t0 = time.perf_counter()
    samples = posterior.sample_batched((max(SAMPLES, c2st_samples),), y_test, seed=seeds["sampling"]).cpu()
    sample_seconds = time.perf_counter() - t0

    # 4. diagnostics
    k = args.num_reference
    print(f"[4/5] diagnostics: exact posterior samples for {k} observation(s) (rejection sampling), C2ST, "
          "calibration, re-simulation error")
    exact, acceptance = [], []
    t0 = time.perf_counter()
    for i in range(k):
        res = reference.likelihood_rejection(sim.forward_kinematics, sim.prior, y_test[i], c2st_samples,
                                             noise_std=NOISE, seed=seeds["reference"] + i, show_progress=show)
        exact.append(res.samples)
        acceptance.append(res.acceptance_rate)
    exact = torch.stack(exact, 1)                                                   # (c2st_samples, k, 4)
    reference_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    c2st = [diagnostics.c2st(exact[:, i], samples[:c2st_samples, i], seed=seeds["c2st"], **c2st_options)
            for i in range(k)]
    c2st_mean = float(np.mean(c2st))
    c2st_seconds = time.perf_counter() - t0

    calib = diagnostics.calibration_summary(samples[:SAMPLES], x_test)
    floor = calibration_floor(args.num_test, SAMPLES, sim.prior.event_shape[0], seeds["floor"])
    alphas, inliers = diagnostics.calibration_curve(samples[:SAMPLES], x_test)

    resim = diagnostics.resimulation_error(sim.forward_kinematics, samples[:SAMPLES], y_test)     # (SAMPLES, B)
    resim_ref_cinn = diagnostics.resimulation_error(sim.forward_kinematics, samples[:c2st_samples, :k], y_test[:k])
    resim_ref_exact = diagnostics.resimulation_error(sim.forward_kinematics, exact, y_test[:k])
    gen_plots = torch.Generator().manual_seed(seeds["plots"])
    prior_draws = sim.sample_prior(SAMPLES, generator=gen_plots)
    resim_prior = diagnostics.resimulation_error(sim.forward_kinematics,
                                                 prior_draws[:, None].expand(-1, args.num_test, -1), y_test)

    # 5. plots and summary
    print("[5/5] plots and summary")
    names = [f"{n} [{u}]" for n, u in zip(sim.param_names, sim.param_units)]
    corner_path, arm_path, calibration_path = out / "corner.png", out / "arm.png", out / "calibration.png"
    plots.corner_plot({"cINN": samples[:c2st_samples, 0], "exact posterior (rejection sampling)": exact[:, 0]},
                      truth=x_test[0], prior_samples=sim.sample_prior(5000, generator=gen_plots), param_names=names,
                      path=corner_path)
    plots.arm_plot({"cINN": sim.joint_positions(samples[:300, 0]),
                    "exact posterior": sim.joint_positions(exact[:300, 0])}, y_test[0], path=arm_path)
    plots.calibration_plot(alphas, inliers - alphas[:, None], sim.param_names, path=calibration_path)

    headline = (f"C2ST against the exact posterior: {c2st_mean:.2f} (0.50 = indistinguishable, 1.00 = completely "
                f"different)")
    summary = {
        "headline": headline,
        "problem": {"simulator": sim.name, "simulator_config": sim.config(), "thesis": "sec. 4.2.2 with noise"},
        "settings": {"num_simulations": args.num_simulations, "epochs": args.epochs, "seed": args.seed,
                     "num_test": args.num_test, "num_reference": k, "samples_per_observation": SAMPLES,
                     "c2st_samples": c2st_samples, "c2st_options": c2st_options, "quick": args.quick,
                     "device": str(posterior.device), "torch_threads": args.threads},
        "c2st": {"mean": c2st_mean, "per_observation": c2st,
                 "meaning": "cross-validated accuracy of a classifier telling cINN from exact posterior samples: "
                            "0.5 = indistinguishable, 1.0 = completely different"},
        "reference": {"kind": "exact rejection sampling from the prior, accepted with the likelihood over its "
                              "maximum (sbi_inn.reference.likelihood_rejection)", "acceptance_rate": acceptance},
        "calibration_error": {"median": calib["median"], "mean": calib["mean"], "signed_mean": calib["signed_mean"],
                              "per_parameter": dict(zip(sim.param_names, calib["median_per_parameter"].tolist())),
                              "floor_for_perfect_calibration": floor},
        "resimulation_error": {"mean": float(resim.mean()), "median": float(resim.median()),
                               "observation_noise": NOISE,
                               "reference_observations": {"cinn_mean": float(resim_ref_cinn.mean()),
                                                          "exact_posterior_mean": float(resim_ref_exact.mean())},
                               "prior_samples_mean": float(resim_prior.mean())},
        "training": {"epochs_run": len(history), "best_epoch": int(best["epoch"]),
                     "best_val_loss": float(best.get("val_loss", math.nan)),
                     "final_train_loss": float(history[-1]["train_loss"])},
        "data": {"num_rows": sim_info["num_rows"], "num_invalid": sim_info["num_invalid"],
                 "num_new_simulations": sim_info["num_new"]},
        "seconds": {"simulation": round(simulate_seconds, 1), "training": round(train_seconds, 1),
                    "sampling": round(sample_seconds, 2), "reference": round(reference_seconds, 1),
                    "c2st": round(c2st_seconds, 1),
                    "total": None},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "sbi_inn": __version__,
                    "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_start": [round(v, 2) for v in load_start],
                    "load_average_end": [round(v, 2) for v in os.getloadavg()]},
        "outputs": {"data": str(data_path), "posterior": str(model_path), "corner": str(corner_path),
                    "arm": str(arm_path), "calibration": str(calibration_path), "summary": str(out / "summary.json")},
    }
    summary["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    per_obs = ", ".join(f"{c:.2f}" for c in c2st)
    print(f"\n{headline}")
    print(f"  {c2st_samples} cINN against {c2st_samples} exact samples for each of {k} test observation(s): "
          f"{per_obs}")
    print(f"calibration error: {100 * calib['median']:.2f} % (0 = perfect; an exactly calibrated posterior scores "
          f"{100 * floor['mean']:.2f} % on average with {args.num_test} test observations, 90 % of the time below "
          f"{100 * floor['q90']:.2f} %)")
    print(f"re-simulation error |s(x) - y|: mean {resim.mean():.4f}, median {resim.median():.4f} over "
          f"{args.num_test} test observations (observation noise {NOISE}); on the {k} C2ST observation(s) cINN "
          f"{resim_ref_cinn.mean():.4f} against {resim_ref_exact.mean():.4f} for the exact posterior; prior draws "
          f"{resim_prior.mean():.2f}")
    print(f"simulated in {simulate_seconds:.0f} s, trained {len(history)} epochs in {train_seconds:.0f} s "
          f"(best validation epoch {best['epoch']}), {max(SAMPLES, c2st_samples)} samples for each of "
          f"{args.num_test} observations in {sample_seconds:.2f} s; {summary['seconds']['total']:.0f} s in all")
    print(f"outputs in {out.resolve()}: " + ", ".join(Path(p).name for p in summary["outputs"].values()))
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
