"""Batch-inference throughput of ``sbi_inn.batch.posterior_maps`` in one process and on a Dask LocalCluster of 1 and
2 workers (issue 18).

A default-sized cINN for the Gaussian-mixture simulator (architecture from the defaults, weights as initialised and
standardisation fitted to simulations: throughput does not depend on training) is saved to a file, which the
workers load (the safe format; the model is never pickled); the observations are ``--num-obs`` rows of a simulation
file. Each mode writes the same maps (checked dataset by dataset); the timed run excludes starting the cluster and
a warm-up run (the workers import torch and load the model then), which are reported apart. Workers are processes
with one thread each; this process samples on one thread, so the single-process row is the one-core baseline.

    python benchmarks/bench_dask_inference.py            # 20 000 observations x 100 samples (a few minutes)
    python benchmarks/bench_dask_inference.py --quick    # 2 000 observations

Writes ``benchmarks/results/dask_inference.json`` (machine and load, settings, per mode the wall time,
observations/s and start-up time; scaling = rate(2 workers) / rate(1 worker)). As for ``bench_dask_simulation.py``,
on a machine shared with other jobs the scaling says little.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json  # noqa: E402
from bench_dask_simulation import local_cluster  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dask_inference.json"


def make_inputs(directory: Path, num_obs: int, seed: int) -> tuple[Path, Path]:
    """A saved default-architecture cINN and a simulation file of ``num_obs`` Gaussian-mixture observations."""
    from sbi_inn.cinn import ConditionalINN
    from sbi_inn.config import default_flow
    from sbi_inn.data import simulate_to_hdf5
    from sbi_inn.posterior import Posterior
    from simulators import get_simulator

    sim = get_simulator("gaussian_mixture")
    obs = directory / "obs.h5"
    simulate_to_hdf5(sim, None, num_obs, obs, seed=seed, show_progress=False)
    with h5py.File(obs, "r") as f:
        x, y = torch.from_numpy(f["x"][:5000]), torch.from_numpy(f["y"][:5000])
    torch.manual_seed(seed)
    model = ConditionalINN(x.shape[1], (y.shape[1],), flow=default_flow(x.shape[1]))
    model.fit_standardization(x, y)
    path = directory / "model.sbi"
    Posterior(model, param_names=sim.param_names, obs_shape=(y.shape[1],), is_set_valued=False).save(path)
    return path, obs


def datasets(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f[k]).tobytes() for k in ("mean", "std", "median", "width68")}


def run_mode(workers: int | None, model: Path, obs: Path, args, directory: Path) -> dict:
    from sbi_inn.batch import posterior_maps

    name = "single process" if workers is None else f"dask, {workers} worker{'s' * (workers > 1)}"
    cluster = client = None
    startup = None
    common = {"num_samples": args.num_samples, "seed": args.seed, "chunk_rows": args.chunk_rows,
              "show_progress": False, "device": "cpu"}
    try:
        if workers is not None:
            t0 = time.perf_counter()
            cluster, client = local_cluster(workers)
            posterior_maps(model, obs, directory / f"warmup-{workers}.h5", client=client, **common)
            startup = time.perf_counter() - t0
        out = directory / f"maps-{'single' if workers is None else workers}.h5"
        t0 = time.perf_counter()
        posterior_maps(model, obs, out, client=client, **common)
        wall = time.perf_counter() - t0
    finally:
        if client is not None:
            client.close()
            cluster.close()
    print(f"{name:18} {wall:8.1f} s  {args.num_obs / wall:10,.0f} observations/s"
          + (f"  (start-up and warm-up {startup:.1f} s)" if startup is not None else ""), flush=True)
    return {"mode": name, "workers": workers, "wall_seconds": wall, "observations_per_second": args.num_obs / wall,
            "startup_seconds": startup, "output": out}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-obs", type=int, default=20_000)
    ap.add_argument("--num-samples", type=int, default=100)
    ap.add_argument("--chunk-rows", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 000 observations")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--force", action="store_true", help="replace an existing results file")
    args = ap.parse_args(argv)
    if args.quick:
        args.num_obs = 2000
    if args.out.exists() and not args.force:
        raise SystemExit(f"{args.out} exists; pass --force to replace it")
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers' thread count
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_dask_inference_") as tmp:
        directory = Path(tmp)
        model, obs = make_inputs(directory, args.num_obs, args.seed)
        rows = [run_mode(w, model, obs, args, directory) for w in (None, 1, 2)]
        reference = datasets(rows[0]["output"])
        identical = all(datasets(r["output"]) == reference for r in rows[1:])
    for r in rows:
        del r["output"]
    rate = {r["workers"]: r["observations_per_second"] for r in rows}
    result = {"benchmark": "bench_dask_inference",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "settings": {"simulator": "gaussian_mixture", "num_obs": args.num_obs, "num_samples": args.num_samples,
                           "chunk_rows": args.chunk_rows, "seed": args.seed, "threads_per_process": 1},
              "rows": rows, "scaling_2_over_1": rate[2] / rate[1], "outputs_identical": identical}
    print(f"scaling 2 workers / 1 worker: {rate[2] / rate[1]:.2f}; maps identical in all modes: {identical}; "
          f"load {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
