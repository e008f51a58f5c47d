"""Posterior maps of a synthetic multispectral tissue image (thesis sec. 4.2.3, Fig. 4.9).

One command: train (or load, ``--posterior``) a conditional INN on ``TissueSpectra`` simulations (8 bands, one
layer, 5 % log-normal camera noise), make a synthetic ``--size`` x ``--size`` tissue image with known parameter maps
(``simulators/tissue_image.py``: smooth background, two arteries, two veins, a hypoxic region; every pixel simulated
with the simulator's noise model), run the batch engine's ``posterior_maps`` over every pixel (``--num-samples``
posterior samples each, 256 by default) and score the maps against the ground truth:

* per parameter, over all pixels: the median absolute error of the posterior median, mean and point estimate
  (also relative to the prior width), the median 68 % interval width, and the **coverage** of the central 68 %
  interval ``[q16, q84]``: the fraction of pixels whose truth lies inside it (0.68 for a calibrated posterior;
  neighbouring pixels share their parameters, so this is not 512^2 independent trials);
* for ``sO2``, the same split by region (background, hypoxic region, arteries, veins; from ``tissue_layout``);
* as a yardstick, the median absolute error of always answering the prior mean;
* a **control** for calibration: the same scores on a ``--control-size`` x ``--control-size`` image whose pixels
  are independent prior draws (``make_prior_image``). Calibration holds on average over the prior, so there the
  68 % coverage of a calibrated posterior is 0.68 (within about +-0.015 for 4096 pixels); on the structured image
  it need not be, since its parameters are one fixed set concentrated in part of the prior box (the coverage of a
  Bayesian interval at fixed parameters is not its credibility), least of all for the parameters the bands do not
  determine.

What to expect from the simulator (its module docstring): ``sO2`` is well determined by the 8 bands; one layer on a
semi-infinite base shows ``v_hb`` and ``a_mie`` only through their ratio, so their maps are wide; ``g`` and ``d``
are not recoverable (``d`` of the only layer has no effect at all), so their posteriors are about the prior.

Outputs (``--out``, default ``studies/results/tissue_image_maps``): ``tissue_spectra.sbi`` (the trained posterior,
unless ``--posterior``), ``tissue_image.h5`` (image and truth), ``maps.h5`` (the engine's per-pixel maps),
``prior_image.h5`` and ``prior_maps.h5`` (the control),
``tissue_image_maps.png`` (ground truth, posterior median, 68 % width and absolute error of ``sO2`` and ``v_hb``)
and ``tissue_image_maps.json`` (every number above, settings, wall times, machine and load). A run refuses to start
when any of these exist, unless ``--force``. Training runs a fixed number of epochs on fresh simulations each epoch
and every random choice derives from ``--seed`` (image: ``seed``; training: ``seed``; maps: ``seed``), so a seed
gives the same numbers on any machine up to floating point; wall times are reported, never used.

Usage:
    python studies/tissue_image_maps.py                     # the committed results (512 x 512, 256 samples/pixel)
    python studies/tissue_image_maps.py --quick             # smoke run: a 16 x 16 image, a seconds-long training
    python studies/tissue_image_maps.py --posterior model.sbi --size 1024 --out outputs/tissue_1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sbi_inn import __version__, fit_posterior, load_posterior
from sbi_inn.batch import posterior_maps
from sbi_inn.cli.options import torch_threads
from sbi_inn.images import read_observation_image
from sbi_inn.priors import support_bounds
from simulators.tissue_image import make_prior_image, make_tissue_image, tissue_layout
from simulators.tissue_spectra import TissueSpectra

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_common import prepare_output, to_json_types  # noqa: E402

FIGURE_PARAMS = ("sO2", "v_hb")
INTERVAL = (0.16, 0.84)       # the central 68 % interval whose coverage is scored
RESULTS = ("tissue_spectra.sbi", "tissue_image.h5", "maps.h5", "prior_image.h5", "prior_maps.h5",
           "tissue_image_maps.png", "tissue_image_maps.json")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="studies/results/tissue_image_maps", help="output folder (%(default)s)")
    parser.add_argument("--posterior", default=None, help="a saved posterior to use instead of training one")
    parser.add_argument("--size", type=int, default=512, help="image height and width in pixels (%(default)s)")
    parser.add_argument("--control-size", type=int, default=64,
                        help="side of the control image of prior draws (%(default)s)")
    parser.add_argument("--num-samples", type=int, default=256, help="posterior samples per pixel (%(default)s)")
    parser.add_argument("--num-simulations", type=int, default=50_000,
                        help="training simulations per epoch, fresh every epoch (%(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs, a fixed number (%(default)s)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="pixels per engine chunk (engine default)")
    parser.add_argument("--seed", type=int, default=0, help="seeds image, training and sampling (%(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (%(default)s)")
    parser.add_argument("--device", default="auto", help="training and sampling device (%(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 16 x 16 image, 1000 simulations x 2 epochs, 64 samples per pixel")
    parser.add_argument("--force", action="store_true", help="overwrite the results of an earlier run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.num_simulations, args.epochs, args.num_samples, args.control_size = 16, 1000, 2, 64, 16
    if (args.seed < 0 or args.size < 8 or args.control_size < 8 or args.num_samples < 8
            or args.num_simulations < 100 or args.epochs < 1 or args.threads < 1
            or (args.chunk_rows is not None and args.chunk_rows < 1)):
        parser.error("need --seed >= 0, --size >= 8, --control-size >= 8, --num-samples >= 8, --num-simulations "
                     ">= 100, --epochs >= 1, --threads >= 1 and --chunk-rows >= 1")
    if args.posterior is not None and not Path(args.posterior).is_file():
        parser.error(f"--posterior {args.posterior!r}: no such file")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    names = [n for n in RESULTS if not (args.posterior and n == "tissue_spectra.sbi")]
    prepare_output(out, names, args.force)
    with torch_threads(args.threads):
        return run(args, out)


def train(sim: TissueSpectra, args, path: Path) -> Path:
    """Fit the cINN for a fixed number of epochs on fresh simulations; save it to ``path``."""
    # the schedule and box map its recorded results were made with
    config = {"train": {"epochs": args.epochs, "patience": None, "lr_schedule": "exponential"},
              "interval_map": "logit"}
    posterior = fit_posterior(sim, sim.prior, num_simulations=args.num_simulations, seed=args.seed,
                              config=config, data_config={"fresh_simulations": True}, device=args.device,
                              show_progress=not args.quiet)
    return posterior.save(path, overwrite=True)  # --force was checked before any work


def training_summary(posterior) -> dict:
    """How the posterior was trained, from its own record (so a ``--posterior`` reads the same as one made here)."""
    meta, history = posterior.metadata, posterior.history
    best = min(history, key=lambda r: r.get("val_loss", np.inf))
    return {"method": meta.get("method"), "seed": meta.get("seed"), "epochs_run": len(history),
            "best_epoch": int(best["epoch"]), "best_val_loss": float(best.get("val_loss", np.nan)),
            "final_train_loss": float(history[-1]["train_loss"]), "train_seconds": meta.get("train_seconds"),
            "train_config": _jsonable(meta.get("train_config")), "data_config": _jsonable(meta.get("data_config")),
            "flow_config": _jsonable(meta.get("flow_config"))}


def read_maps(path: Path, names: tuple[str, ...] = ("median", "mean", "point", "width68")) -> dict[str, np.ndarray]:
    """The engine's map datasets ``(H, W, D)`` and its quantiles ``(Q, H, W, D)`` with their levels, as numpy."""
    import h5py

    with h5py.File(path, "r") as f:
        maps = {name: f[name][()] for name in names}
        maps["quantiles"] = f["quantiles"][()]
        levels = f["quantiles"].attrs["levels"]
        levels = json.loads(levels) if isinstance(levels, (str, bytes)) else levels  # stored as JSON text
        maps["levels"] = np.asarray(levels, dtype=np.float64)
    return maps


def score(maps: dict[str, np.ndarray], truth: np.ndarray, sim: TissueSpectra, layout=None) -> dict:
    """Per-parameter errors, widths and 68 % coverage over all pixels; sO2 by region (module docstring) when given
    the image's ``layout``."""
    lo, hi = (b.double().numpy() for b in support_bounds(sim.prior))
    q = maps["quantiles"]
    i16, i84 = (int(np.argmin(np.abs(maps["levels"] - v))) for v in INTERVAL)
    inside = (q[i16] <= truth) & (truth <= q[i84])                                          # (H, W, D)
    per = {}
    for j, name in enumerate(sim.param_names):
        width = hi[j] - lo[j]
        err = {k: np.abs(maps[k][..., j] - truth[..., j]) for k in ("median", "mean", "point")}
        prior_mean_err = np.abs((lo[j] + hi[j]) / 2 - truth[..., j])
        per[name] = {
            "median_abs_error": float(np.median(err["median"])),
            "median_abs_error_of_mean": float(np.median(err["mean"])),
            "median_abs_error_of_point_estimate": float(np.median(err["point"])),
            "median_abs_error_relative_to_prior_width": float(np.median(err["median"]) / width),
            "median_abs_error_of_prior_mean": float(np.median(prior_mean_err)),
            "median_width68": float(np.median(maps["width68"][..., j])),
            "coverage68": float(inside[..., j].mean()),
        }
    if layout is None:
        return {"per_parameter": per}
    j = sim.param_names.index("sO2")
    err = np.abs(maps["median"][..., j] - truth[..., j])
    vessel = np.maximum(layout.artery.numpy(), layout.vein.numpy())
    regions = {"background": (vessel < 0.05) & (layout.hypoxia.numpy() < 0.05),
               "hypoxic": (layout.hypoxia.numpy() > 0.8) & (vessel < 0.05),
               "arteries": (layout.artery.numpy() > 0.8), "veins": (layout.vein.numpy() > 0.8)}
    by_region = {name: {"pixels": int(m.sum()),
                        "median_abs_error": float(np.median(err[m])) if m.any() else None,
                        "truth_mean": float(truth[..., j][m].mean()) if m.any() else None,
                        "estimate_mean": float(maps["median"][..., j][m].mean()) if m.any() else None,
                        "coverage68": float(inside[..., j][m].mean()) if m.any() else None}
                 for name, m in regions.items()}
    return {"per_parameter": per, "sO2_by_region": by_region,
            "region_masks": "background: vessel weight < 0.05 and hypoxia < 0.05; hypoxic: hypoxia > 0.8 off the "
                            "vessels; arteries / veins: that vessel kind's weight > 0.8 (tissue_layout)"}


def figure(maps: dict[str, np.ndarray], truth: np.ndarray, sim: TissueSpectra, path: Path) -> None:
    """Ground truth, posterior median, 68 % width and absolute error for each of ``FIGURE_PARAMS``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = (b.double().numpy() for b in support_bounds(sim.prior))
    fig, axes = plt.subplots(len(FIGURE_PARAMS), 4, figsize=(17, 4.2 * len(FIGURE_PARAMS)), squeeze=False)
    for row, name in enumerate(FIGURE_PARAMS):
        j = sim.param_names.index(name)
        vmin, vmax = float(truth[..., j].min()), float(truth[..., j].max())
        err = np.abs(maps["median"][..., j] - truth[..., j])
        panels = [(truth[..., j], f"{name}: ground truth", "viridis", (vmin, vmax)),
                  (maps["median"][..., j], f"{name}: posterior median", "viridis", (vmin, vmax)),
                  (maps["width68"][..., j], f"{name}: 68 % interval width (q84 - q16)", "magma",
                   (0.0, float(np.quantile(maps["width68"][..., j], 0.99)))),
                  (err, f"{name}: |median - truth| (median {np.median(err):.3g})", "magma",
                   (0.0, float(np.quantile(err, 0.99))))]
        for ax, (img, title, cmap, (a, b)) in zip(axes[row], panels):
            im = ax.imshow(img, cmap=cmap, vmin=a, vmax=b, interpolation="nearest")
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        axes[row, 0].set_ylabel(f"prior [{lo[j]:g}, {hi[j]:g}]")
    fig.suptitle(f"Posterior maps of a synthetic {truth.shape[0]} x {truth.shape[1]} tissue image "
                 "(cINN, 8 bands, 5 % noise; thesis Fig. 4.9)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args, out: Path) -> dict:
    show = not args.quiet
    t_start, load_start = time.perf_counter(), os.getloadavg()
    sim = TissueSpectra()
    seconds = {}

    print(f"[1/4] synthetic {args.size} x {args.size} tissue image -> {out / 'tissue_image.h5'}")
    t0 = time.perf_counter()
    image_path = make_tissue_image(out / "tissue_image.h5", args.size, args.size, seed=args.seed, simulator=sim,
                                   overwrite=True, show_progress=show)
    seconds["image"] = time.perf_counter() - t0

    if args.posterior:
        print(f"[2/4] using the posterior {args.posterior}")
        model_path = Path(args.posterior)
    else:
        print(f"[2/4] training a cINN: {args.epochs} epochs of {args.num_simulations} fresh simulations")
        t0 = time.perf_counter()
        model_path = train(sim, args, out / "tissue_spectra.sbi")
        seconds["training"] = time.perf_counter() - t0
    posterior = load_posterior(model_path, device="cpu")
    if list(posterior.param_names) != sim.param_names or tuple(posterior.obs_shape) != (sim.obs_dim,):
        raise SystemExit(f"{model_path}: a posterior over {posterior.param_names} from observations "
                         f"{tuple(posterior.obs_shape)}; this study needs {sim.param_names} from ({sim.obs_dim},)")
    training = training_summary(posterior)

    print(f"[3/4] posterior maps: {args.num_samples} samples for each of {args.size ** 2} pixels")
    options = {} if args.chunk_rows is None else {"chunk_rows": args.chunk_rows}
    t0 = time.perf_counter()
    engine = posterior_maps(str(model_path), image_path, out / "maps.h5", num_samples=args.num_samples,
                            seed=args.seed, quantiles=INTERVAL, overwrite=True, show_progress=show,
                            device=args.device, **options)
    seconds["maps"] = time.perf_counter() - t0

    print(f"[4/4] control: {args.control_size} x {args.control_size} pixels of prior draws; scores and figure")
    t0 = time.perf_counter()
    control_path = make_prior_image(out / "prior_image.h5", args.control_size, args.control_size, seed=args.seed,
                                    simulator=sim, overwrite=True, show_progress=show)
    posterior_maps(str(model_path), control_path, out / "prior_maps.h5", num_samples=args.num_samples,
                   seed=args.seed, quantiles=INTERVAL, overwrite=True, show_progress=show, device=args.device,
                   **options)
    control = score(read_maps(out / "prior_maps.h5"), read_observation_image(control_path).truth, sim)
    seconds["control"] = time.perf_counter() - t0
    image = read_observation_image(image_path)
    maps = read_maps(out / "maps.h5")
    layout = tissue_layout(args.size, args.size, seed=args.seed)
    scores = score(maps, image.truth, sim, layout)
    figure(maps, image.truth, sim, out / "tissue_image_maps.png")
    seconds["total"] = time.perf_counter() - t_start
    so2 = scores["per_parameter"]["sO2"]
    headline = (f"sO2 map: median absolute error {so2['median_abs_error']:.4f} (prior mean: "
                f"{so2['median_abs_error_of_prior_mean']:.3f}), 68 % interval coverage {so2['coverage68']:.3f} "
                f"(0.68 on prior draws if calibrated; there {control['per_parameter']['sO2']['coverage68']:.3f}), "
                f"median 68 % width {so2['median_width68']:.4f}")
    summary = {
        "headline": headline,
        "problem": {"simulator": sim.name, "simulator_config": sim.config(), "thesis": "sec. 4.2.3, Fig. 4.9",
                    "image": {"height": args.size, "width": args.size, "seed": args.seed,
                              "layout": layout.description}},
        "settings": {"num_samples": args.num_samples, "seed": args.seed, "quick": args.quick,
                     "num_simulations_per_epoch": None if args.posterior else args.num_simulations,
                     "epochs": None if args.posterior else args.epochs, "posterior": str(model_path),
                     "trained_here": not args.posterior, "control_size": args.control_size,
                     "torch_threads": args.threads, "device": args.device,
                     "interval": list(INTERVAL), "chunk_rows": args.chunk_rows},
        "scores": scores,
        "control_prior_draws": {"pixels": args.control_size ** 2, **control,
                                "meaning": "the same scores on independent prior draws, where a calibrated "
                                           "posterior's coverage68 is 0.68"},
        "training": training,
        "engine": _jsonable(engine),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "pixels_per_second": args.size ** 2 / seconds["maps"],
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "sbi_inn": __version__,
                    "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_start": [round(v, 2) for v in load_start],
                    "load_average_end": [round(v, 2) for v in os.getloadavg()]},
        "outputs": {"image": str(image_path), "posterior": str(model_path), "maps": str(out / "maps.h5"),
                    "control_image": str(control_path), "control_maps": str(out / "prior_maps.h5"),
                    "figure": str(out / "tissue_image_maps.png"), "summary": str(out / "tissue_image_maps.json")},
    }
    (out / "tissue_image_maps.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{headline}")
    for name, s in scores["per_parameter"].items():
        rel = 100 * s["median_abs_error_relative_to_prior_width"]
        c = control["per_parameter"][name]
        print(f"  {name:6s} median |error| {s['median_abs_error']:.4g} ({rel:.1f} % of the prior width; prior "
              f"mean {s['median_abs_error_of_prior_mean']:.4g}), coverage68 {s['coverage68']:.3f}, median width68 "
              f"{s['median_width68']:.4g}; prior draws: coverage68 {c['coverage68']:.3f}, median |error| "
              f"{c['median_abs_error']:.4g}")
    for name, r in scores["sO2_by_region"].items():
        if r["pixels"]:
            print(f"  sO2 {name:10s} {r['pixels']:7d} px: truth {r['truth_mean']:.3f}, estimate "
                  f"{r['estimate_mean']:.3f}, median |error| {r['median_abs_error']:.4f}, coverage68 "
                  f"{r['coverage68']:.3f}")
    print(f"maps of {args.size ** 2} pixels x {args.num_samples} samples in {seconds['maps']:.1f} s "
          f"({summary['pixels_per_second']:.0f} pixels/s); {seconds['total']:.0f} s in all; outputs in {out}")
    return summary


def _jsonable(value):
    """``value`` with numpy scalars and arrays, paths and tuples turned into JSON types (other objects as text)."""
    return to_json_types(value, nonfinite_as_none=False, other_as_text=True)


if __name__ == "__main__":
    sys.exit(main() and 0)
