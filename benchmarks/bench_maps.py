"""Posterior maps of multispectral images: pixels per second at 256 posterior samples per pixel, with peak memory.

Each measurement runs ``sbi_inn.batch.posterior_maps`` over a synthetic tissue image
(``simulators/tissue_image.py``, 8 bands per pixel) in a **fresh subprocess** with a given number of torch threads,
timing the whole call (reading the image, sampling, the per-pixel mean / median / point estimate / 68 % width and
two quantiles, writing the maps file) and reading the subprocess's peak resident set (``ru_maxrss``, which
includes the ~300 MiB of an imported torch). Beside it, the same process times the bare sampling rate of the
posterior (``sample_batched`` of 256 samples for 4096 pixels, best of 3), so the engine's overhead over sampling
shows. The posterior is a cINN with the package's default architecture for ``TissueSpectra`` (the one
``studies/tissue_image_maps.py`` trains; ``--posterior`` takes a saved one, otherwise one is trained for a single
short epoch here: the speed of sampling depends on the architecture, not on the weights).

Images: 256 x 256 at 1 and 2 threads, and 1024 x 1024 (one megapixel) at the faster of the two when the 256 x 256
rate predicts it finishes within ``--max-seconds`` (default 900); otherwise its time is **extrapolated** from the
measured 256 x 256 rate (the engine streams fixed-size chunks, so time is linear in the pixel count) and marked
as such. The targets of issue 16: one megapixel at 256 samples per pixel in under 10 minutes on 2 CPU cores, and
under 10 s on one modern GPU (none here).

The machine may be shared: the load average is recorded before and after every measurement; a load above the
core count slows every number down. With more than one thread each measurement runs twice, with OpenMP's default
wait policy and with ``OMP_WAIT_POLICY=PASSIVE``: on an oversubscribed machine threads that spin at every
barrier (the default) wait for each other's time slices, which made two threads 6-60x slower than one here.
Results: a printed table and ``benchmarks/results/maps.json`` (machine: CPU model, ``os.cpu_count()``, load;
seeds and settings).

Usage:
    python benchmarks/bench_maps.py                          # the committed results
    python benchmarks/bench_maps.py --quick                  # smoke run: 64 x 64, 32 samples, no megapixel
    python benchmarks/bench_maps.py --posterior studies/results/tissue_image_maps/tissue_spectra.sbi
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "maps.json"
TARGET_SECONDS_1MP = 600.0    # issue 16: one megapixel at 256 samples per pixel within 10 minutes on 2 CPU cores
MEGAPIXEL = 1024 * 1024


def machine() -> dict:
    return {**machine_info(), "load_average": [round(v, 2) for v in os.getloadavg()]}


# -- the worker: one measurement in a fresh process -------------------------------------------------------------
def worker(args) -> dict:
    """Time ``posterior_maps`` on ``args.image`` with ``args.threads`` torch threads; print one JSON line."""
    torch.set_num_threads(args.threads)
    import h5py

    from sbi_inn import load_posterior
    from sbi_inn.batch import posterior_maps
    from sbi_inn.images import read_pixels

    posterior = load_posterior(args.posterior, device=args.device)
    with h5py.File(args.image, "r") as f:
        width = f["y"].shape[1]
        probe = torch.from_numpy(read_pixels(f, 0, min(4096, f["y"].shape[0] * width), width))
    bare = []
    for rep in range(3):
        t = time.perf_counter()
        posterior.sample_batched((args.num_samples,), probe, seed=rep)
        bare.append(time.perf_counter() - t)
    load_before = os.getloadavg()
    options = {} if args.chunk_rows is None else {"chunk_rows": args.chunk_rows}
    t = time.perf_counter()
    posterior_maps(args.posterior, args.image, args.output, num_samples=args.num_samples, seed=args.seed,
                   quantiles=(0.16, 0.84), overwrite=True, show_progress=False, device=args.device, **options)
    seconds = time.perf_counter() - t
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with h5py.File(args.image, "r") as f:
        pixels = int(f["y"].shape[0] * f["y"].shape[1])
    return {"pixels": pixels, "threads": args.threads, "num_samples": args.num_samples, "seconds": seconds,
            "pixels_per_second": pixels / seconds, "samples_per_second": pixels * args.num_samples / seconds,
            "bare_sampling_samples_per_second": probe.shape[0] * args.num_samples / min(bare),
            "peak_rss_mib": rss_kib / 1024, "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def measure(posterior: Path, image: Path, work: Path, threads: int, num_samples: int, seed: int,
            device: str, chunk_rows: int | None, timeout: float, wait_policy: str = "default") -> dict | None:
    """One measurement in a fresh subprocess (its own peak memory), the worker's JSON as a dict; ``None`` when it
    ran past ``timeout`` seconds (killed)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--posterior", str(posterior), "--image",
           str(image), "--output", str(work / f"maps_{image.stem}_{threads}t.h5"), "--threads", str(threads),
           "--num-samples", str(num_samples), "--seed", str(seed), "--device", device]
    if chunk_rows is not None:
        cmd += ["--chunk-rows", str(chunk_rows)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def posterior_for(args, work: Path) -> tuple[Path, str]:
    """The posterior to time: ``--posterior``, or a default-architecture cINN trained one short epoch here."""
    if args.posterior:
        return Path(args.posterior), f"given: {args.posterior}"
    path = work / "tissue_spectra_default.sbi"
    if not path.exists():
        from sbi_inn import fit_posterior
        from simulators.tissue_spectra import TissueSpectra

        sim = TissueSpectra()
        posterior = fit_posterior(sim, sim.prior, num_simulations=2000, seed=args.seed,
                                  config={"train": {"epochs": 1, "patience": None}}, show_progress=False)
        posterior.save(path)
    return path, "default architecture, trained 1 epoch of 2000 simulations here"


def image_for(size: int, work: Path, seed: int) -> Path:
    from simulators.tissue_image import make_tissue_image

    path = work / f"tissue_{size}x{size}_seed{seed}.h5"
    if not path.exists():
        make_tissue_image(path, size, size, seed=seed, show_progress=False)
    return path


def _key(r: dict) -> str:
    return f"{r['threads']}_threads" + ("" if r["omp_wait_policy"] == "default" else f"_{r['omp_wait_policy']}")


def megapixel_summary(runs: list[dict], timed_out: list[dict], num_samples: int) -> dict:
    """Seconds for one megapixel per thread setting: measured on the 1024 x 1024 image where that ran (a killed
    run counts as at least its timeout), else extrapolated from the small image's rate; and whether that meets the
    10-minute target (``None`` unless ``num_samples`` is 256, the target's)."""
    out = {}
    for r in runs:
        if r["image"] != "1024x1024" and _key(r) not in out:
            out[_key(r)] = {"seconds": MEGAPIXEL / r["pixels_per_second"], "measured": False,
                            "extrapolated_from": r["image"]}
    for r in runs:
        if r["image"] == "1024x1024":
            out[_key(r)] = {"seconds": r["seconds"], "measured": True, "extrapolated_seconds":
                            out.get(_key(r), {}).get("seconds")}
    for t in timed_out:
        if t["image"] == "1024x1024":
            out[_key(t)] = {"seconds": None, "at_least_seconds": t["timeout_s"], "measured": True,
                            "killed_after_timeout": True, "extrapolated_seconds": out.get(_key(t), {}).get("seconds")}
    for m in out.values():
        seconds = m["seconds"] if m["seconds"] is not None else m["at_least_seconds"]
        met = seconds < TARGET_SECONDS_1MP and m["seconds"] is not None
        m["meets_10_minute_target"] = met if num_samples == 256 else None
    return out


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posterior", default=None, help="a saved TissueSpectra posterior (default: train one)")
    parser.add_argument("--num-samples", type=int, default=256, help="posterior samples per pixel (%(default)s)")
    parser.add_argument("--size", type=int, default=256, help="side of the measured small image (%(default)s)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (%(default)s)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="run the 1024 x 1024 image when predicted to take at most this long (%(default)s)")
    parser.add_argument("--wait-policies", nargs="+", default=["default", "PASSIVE"],
                        choices=["default", "PASSIVE", "ACTIVE"],
                        help="OMP_WAIT_POLICY values tried with more than one thread (%(default)s; see the docstring)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="a measurement running longer is killed and recorded as such (%(default)s s)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="pixels per engine chunk (engine default)")
    parser.add_argument("--seed", type=int, default=0, help="image, training and sampling seed (%(default)s)")
    parser.add_argument("--device", default="cpu", help="sampling device (%(default)s)")
    parser.add_argument("--work", default="outputs/bench_maps", help="images, posterior, maps (%(default)s)")
    parser.add_argument("--results", default=str(RESULTS), help="JSON results file (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 x 64, 32 samples, no megapixel")
    parser.add_argument("--force", action="store_true", help="overwrite an existing results file")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.threads = args.threads[0]
        print(json.dumps(worker(args)))
        return None
    if args.quick:
        args.size, args.num_samples, args.max_seconds = 64, 32, 0.0
    if args.num_samples < 2 or args.size < 8 or min(args.threads) < 1 or args.seed < 0:
        parser.error("need --num-samples >= 2, --size >= 8, --threads >= 1 and --seed >= 0")
    results_path = Path(args.results)
    if results_path.exists() and not args.force:
        raise SystemExit(f"{results_path} exists; pass --force to overwrite it (or --results elsewhere)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info_start = machine()
    posterior, posterior_kind = posterior_for(args, work)
    small = image_for(args.size, work, args.seed)
    runs, timed_out = [], []
    for threads in args.threads:
        for policy in (args.wait_policies if threads > 1 else ["default"]):
            print(f"{args.size} x {args.size}, {threads} thread(s), OMP_WAIT_POLICY {policy}, {args.num_samples} "
                  "samples/pixel ...", flush=True)
            r = measure(posterior, small, work, threads, args.num_samples, args.seed, args.device, args.chunk_rows,
                        args.timeout, policy)
            tag = {"image": f"{args.size}x{args.size}", "threads": threads, "omp_wait_policy": policy}
            if r is None:
                timed_out.append({**tag, "timeout_s": args.timeout})
            else:
                runs.append({**tag, "measured": True, **r})
    if not runs:
        raise SystemExit(f"every measurement ran past --timeout {args.timeout:g} s: {timed_out}")
    best = max(runs, key=lambda r: r["pixels_per_second"])
    predicted = MEGAPIXEL / best["pixels_per_second"]
    if predicted <= args.max_seconds:
        print(f"1024 x 1024, {best['threads']} thread(s) (predicted {predicted:.0f} s) ...", flush=True)
        big = image_for(1024, work, args.seed)
        r = measure(posterior, big, work, best["threads"], args.num_samples, args.seed, args.device,
                    args.chunk_rows, args.timeout, best["omp_wait_policy"])
        tag = {"image": "1024x1024", "threads": best["threads"], "omp_wait_policy": best["omp_wait_policy"]}
        if r is None:
            timed_out.append({**tag, "timeout_s": args.timeout})
        else:
            runs.append({**tag, "measured": True, **r})
    megapixel = megapixel_summary(runs, timed_out, args.num_samples)
    result = {
        "benchmark": "posterior maps (sbi_inn.batch.posterior_maps) of a synthetic 8-band tissue image",
        "started": started, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"num_samples": args.num_samples, "quantiles": [0.16, 0.84], "seed": args.seed,
                     "device": args.device, "chunk_rows": args.chunk_rows, "posterior": posterior_kind,
                     "quick": args.quick, "max_seconds": args.max_seconds},
        "machine": {**info_start, "load_average_end": [round(v, 2) for v in os.getloadavg()]},
        "runs": runs, "timed_out": timed_out, "megapixel_seconds": megapixel, "best_threads": best["threads"],
        "megapixel_predicted_seconds": predicted,
        "target": f"1 megapixel x 256 samples/pixel in < {TARGET_SECONDS_1MP:.0f} s on 2 CPU cores",
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=2))
    print_table(result)
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['machine']['cpu_model']}, {result['machine']['cpu_count']} CPUs, load "
          f"{result['machine']['load_average']} -> {result['machine']['load_average_end']}")
    print("| image | threads | OMP_WAIT_POLICY | s | pixels/s | samples/s (maps) | samples/s (bare sampling) | "
          "peak RSS MiB | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(f"| {r['image']} | {r['threads']} | {r['omp_wait_policy']} | {r['seconds']:.1f} | "
              f"{r['pixels_per_second']:.0f} | "
              f"{r['samples_per_second']:.3g} | {r['bare_sampling_samples_per_second']:.3g} | "
              f"{r['peak_rss_mib']:.0f} | {r['load_average_before'][0]:.1f} |")
    for t in result["timed_out"]:
        print(f"| {t['image']} | {t['threads']} | {t['omp_wait_policy']} | > {t['timeout_s']:.0f} (killed) "
              "| | | | | |")
    for key, m in result["megapixel_seconds"].items():
        if m.get("killed_after_timeout"):
            print(f"1 megapixel, {key.replace('_', ' ')}: measured, killed after {m['at_least_seconds']:.0f} s "
                  f"(extrapolated from the small image: {m['extrapolated_seconds']:.0f} s); misses the target")
            continue
        how = "measured" if m["measured"] else f"extrapolated from {m['extrapolated_from']}"
        verdict = {True: "meets the 10-minute target", False: "misses the 10-minute target",
                   None: "the target is stated at 256 samples/pixel"}[m["meets_10_minute_target"]]
        print(f"1 megapixel at {result['settings']['num_samples']} samples/pixel, {key.replace('_', ' ')}: "
              f"{m['seconds']:.0f} s ({how}); {verdict}")


if __name__ == "__main__":
    main()
