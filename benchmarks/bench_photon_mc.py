"""Speed and noise of the tissue-spectra simulator in its Monte Carlo mode (simulators/photon_mc.py).

Measures, on the CPU, for the default configuration with ``method="monte_carlo"`` (8 bands, one layer on a
semi-infinite base, 1000 photons per wavelength at the brightest, up to 16x more at dimmer ones): spectra per
second, photons per second and photon steps
(scattering events plus boundary hits) per second for ``--spectra`` prior draws simulated in one call, and the
relative Monte Carlo noise of each normalised band (standard deviation over ``--repeats`` seeds, camera noise off)
for ``--noise-draws`` prior draws. Prints a summary and writes ``benchmarks/results/photon_mc.json`` with the
machine, the torch threads and the load average (the machine may be shared: a load above the core count slows the
run).

Usage:
    python benchmarks/bench_photon_mc.py             # 16 spectra, noise from 3 draws x 4 seeds
    python benchmarks/bench_photon_mc.py --quick     # a smoke test: 2 spectra, 200 photons
    python benchmarks/bench_photon_mc.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

import simulators.tissue_spectra as tissue_spectra
from sbi_inn._version import __version__
from simulators import get_simulator
from simulators.photon_mc import photon_mc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "photon_mc.json"


class Recorder:
    """Stands in for ``photon_mc`` inside the simulator and keeps each result (cost and unfinished weight)."""

    def __init__(self):
        self.results = []

    def __call__(self, *args, **kwargs):
        res = photon_mc(*args, **kwargs)
        self.results.append(res)
        return res


def throughput(sim, spectra: int, seed: int) -> dict:
    x = sim.sample_prior(spectra, generator=torch.Generator().manual_seed(seed))
    rec = Recorder()
    tissue_spectra.photon_mc, original = rec, tissue_spectra.photon_mc
    try:
        t = time.perf_counter()
        y = sim.simulate(x, generator=torch.Generator().manual_seed(seed + 1))
        seconds = time.perf_counter() - t
    finally:
        tissue_spectra.photon_mc = original
    res = rec.results[-1]
    photons = int(torch.as_tensor(res.photons).sum())  # launched: dim wavelengths get more (MC_BOOST)
    rel_unfinished = (res.unfinished / res.reflectance.clamp_min(1e-12)).reshape(spectra, -1).amax(1)
    return {"spectra": spectra, "seconds": seconds, "spectra_per_second": spectra / seconds,
            "photons_per_wavelength_at_the_brightest": sim.photons, "photons": photons,
            "photons_per_spectrum": photons / spectra, "photons_per_second": photons / seconds,
            "photon_steps": res.photon_steps, "photon_steps_per_second": res.photon_steps / seconds,
            "photon_steps_per_photon": res.photon_steps / photons, "loop_iterations": res.steps,
            "photons_unfinished": int(res.alive.sum()),
            "unfinished_over_reflectance_max_per_spectrum": [float(v) for v in rel_unfinished],
            "v_hb": [float(v) for v in x[:, 1]], "finite": bool(torch.isfinite(y).all())}


def mc_noise(config: dict, draws: int, repeats: int, seed: int) -> dict:
    sim = get_simulator("tissue_spectra", **{**config, "noise": 0.0})
    x = sim.sample_prior(draws, generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter()
    ys = torch.stack([sim.simulate(x, generator=torch.Generator().manual_seed(seed + 1 + r)) for r in range(repeats)])
    seconds = time.perf_counter() - t
    rel = (ys.std(0) / ys.mean(0)).double()  # (draws, bands): relative MC noise of each normalised band
    return {"draws": draws, "repeats": repeats, "seconds": seconds, "bands": sim.obs_names,
            "relative_std_mean_over_draws": [float(v) for v in rel.mean(0)],
            "relative_std_max_over_draws": [float(v) for v in rel.amax(0)],
            "relative_std_per_draw": [[float(v) for v in row] for row in rel],
            "x": [[float(v) for v in row] for row in x]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 spectra of 200 photons per wavelength")
    parser.add_argument("--spectra", type=int, default=16, help="prior draws simulated in one call (default 16)")
    parser.add_argument("--photons", type=int, default=None, help="photons per wavelength (default: simulator's)")
    parser.add_argument("--noise-draws", type=int, default=3, help="prior draws for the noise estimate")
    parser.add_argument("--repeats", type=int, default=4, help="seeds per draw for the noise estimate")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON output (default: {RESULTS})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: 1; more threads slow down on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.spectra, args.photons, args.noise_draws, args.repeats = 2, args.photons or 200, 1, 2
    config = {"method": "monte_carlo"}
    if args.photons is not None:
        config["photons"] = args.photons
    sim = get_simulator("tissue_spectra", **config)
    load_before = os.getloadavg()
    result = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "platform": platform.platform(), "processor": platform.processor(),
                          "device": "cpu"},
              "sbi_inn": __version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "quick": args.quick, "simulator_config": sim.config(), "wavelengths": len(sim.wavelengths),
              "photons_per_wavelength": sim.photons, "load_average_before": list(load_before)}
    print(f"tissue_spectra(method='monte_carlo'): {len(sim.wavelengths)} wavelengths x {sim.photons} photons "
          f"per spectrum, {torch.get_num_threads()} torch thread(s), load average {load_before[0]:.2f} "
          f"on {os.cpu_count()} cores")
    r = throughput(sim, args.spectra, seed=0)
    result["throughput"] = r
    print(f"{r['spectra']} spectra in {r['seconds']:.1f} s: {r['spectra_per_second']:.3f} spectra/s, "
          f"{r['photons_per_spectrum']:,.0f} photons per spectrum, {r['photons_per_second']:,.0f} photons/s, "
          f"{r['photon_steps_per_second']:,.0f} photon steps/s "
          f"({r['photon_steps_per_photon']:.0f} steps per photon, {r['loop_iterations']} loop iterations); "
          f"{r['photons_unfinished']} photons unfinished, at most "
          f"{max(r['unfinished_over_reflectance_max_per_spectrum']):.2e} of a reflectance")
    n = mc_noise(config, args.noise_draws, args.repeats, seed=100)
    result["mc_noise"] = n
    print(f"relative Monte Carlo noise per band ({n['draws']} draws x {n['repeats']} seeds, camera noise off):")
    for name, mean, worst in zip(n["bands"], n["relative_std_mean_over_draws"], n["relative_std_max_over_draws"]):
        print(f"  {name:<12} mean {100 * mean:5.2f} %   max {100 * worst:5.2f} %")
    result["load_average_after"] = list(os.getloadavg())
    write_json(args.output, result, prefix=f"load average after {result['load_average_after'][0]:.2f}; ")
    return result


if __name__ == "__main__":
    main()
