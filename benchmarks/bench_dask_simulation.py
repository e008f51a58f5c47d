"""Simulation throughput of ``simulate_to_hdf5`` in one process and on a Dask LocalCluster of 1 and 2 workers.

The simulator is the registered drift-diffusion model (``ddm``, ``simulators.set_valued.DriftDiffusion``): a
CPU-bound Euler-Maruyama loop in torch (about 500 simulations/s on one core, ``results/simulators.json``), the kind
of slow simulator Dask is for. Each mode writes the same file (checked with ``sbi_inn.data.content_hash``); the
timed run excludes starting the cluster and a warm-up chunk (the workers import torch then), which are reported
apart. Workers are processes with one thread each (``OMP_NUM_THREADS=1``), and this process runs torch on one
thread, so the single-process row is the one-core baseline.

    python benchmarks/bench_dask_simulation.py                 # n=2000, chunks of 100 (a few minutes)
    python benchmarks/bench_dask_simulation.py --repeats 3     # the median of 3 timed runs per mode
    python benchmarks/bench_dask_simulation.py --quick         # n=500
    python benchmarks/bench_dask_simulation.py --force         # replace an existing results file

Writes ``benchmarks/results/dask_simulation.json``: machine (cpu count, load average before and after), seeds,
settings, and per mode the wall times, simulations/s and the cluster start-up time; scaling =
rate(2 workers) / rate(1 worker), efficiency = scaling / 2. On a machine shared with other jobs the scaling says
little: with Linux's scheduler autogroup (recorded as ``sched_autogroup``) all processes of one session share one
CPU share, so a second worker only splits it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "dask_simulation.json"


def local_cluster(workers: int):
    """A ``distributed.Client`` on a LocalCluster of ``workers`` single-threaded processes (also for 1 worker,
    where ``sbi_inn.distributed.client_for`` would run in this process instead)."""
    import logging

    from sbi_inn.distributed import require_distributed

    distributed = require_distributed("benchmarks/bench_dask_simulation.py")
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR,
                                       scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"})
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(workers, timeout=120)
    return cluster, client


def run_mode(workers: int | None, sim, args, directory: Path) -> dict:
    """Time ``args.repeats`` runs of ``simulate_to_hdf5`` (``workers=None``: in this process)."""
    from sbi_inn.data import content_hash, simulate_to_hdf5

    name = "single process" if workers is None else f"dask, {workers} worker{'s' * (workers > 1)}"
    cluster = client = None
    startup = None
    try:
        if workers is not None:
            t0 = time.perf_counter()
            cluster, client = local_cluster(workers)
            # warm-up: one small chunk per worker makes every worker import torch and the simulator
            simulate_to_hdf5(sim, None, workers * 10, directory / f"warmup-{workers}.h5", seed=args.seed + 1,
                             chunk_size=10, client=client, show_progress=False)
            startup = time.perf_counter() - t0
        walls, hashes = [], set()
        for r in range(args.repeats):
            path = directory / f"{'single' if workers is None else workers}-{r}.h5"
            t0 = time.perf_counter()
            out = simulate_to_hdf5(sim, None, args.num_simulations, path, seed=args.seed,
                                   chunk_size=args.chunk_size, client=client, show_progress=not args.quiet)
            walls.append(time.perf_counter() - t0)
            assert out["num_new"] == args.num_simulations
            hashes.add(content_hash(path))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    wall = statistics.median(walls)
    return {"mode": name, "workers": workers, "wall_s": walls, "median_wall_s": wall,
            "simulations_per_second": args.num_simulations / wall, "startup_s": startup,
            "content_hashes": sorted(hashes)}


def _autogroup() -> str | None:
    """Linux's scheduler autogroup setting ("1": all processes of one session, this benchmark's workers included,
    share one CPU share against other sessions, so on a busy machine more workers get no more CPU)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulator", default="ddm", help="registered simulator (default: ddm, CPU-bound)")
    parser.add_argument("-n", "--num-simulations", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per mode; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="n=500")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON output (default: {RESULTS})")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_simulations = 500
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to replace it")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from _common import machine_info

    from sbi_inn._version import __version__
    from simulators import get_simulator

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    sim = get_simulator(args.simulator)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for workers in (None, 1, 2):
            rows.append(run_mode(workers, sim, args, Path(d)))
            r = rows[-1]
            print(f"{r['mode']:<16} {r['simulations_per_second']:>9.1f} sims/s  (median of {args.repeats}: "
                  f"{r['median_wall_s']:.2f} s; start-up {r['startup_s'] or 0:.1f} s)", flush=True)
    identical = len({h for r in rows for h in r["content_hashes"]}) == 1
    rate = {r["workers"]: r["simulations_per_second"] for r in rows}
    scaling = rate[2] / rate[1]
    result = {"benchmark": "dask_simulation", "sbi_inn": __version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
                          "torch_threads_client": torch.get_num_threads(), "threads_per_worker": 1,
                          "sched_autogroup": _autogroup()},
              "settings": {"simulator": args.simulator, "simulator_config": sim.config(),
                           "num_simulations": args.num_simulations, "chunk_size": args.chunk_size,
                           "repeats": args.repeats, "seed": args.seed, "warmup_seed": args.seed + 1},
              "results": rows, "files_identical": identical,
              "scaling_2_over_1_workers": scaling, "efficiency_2_workers": scaling / 2,
              "dask_1_worker_over_single_process": rate[1] / rate[None]}
    print(f"\n{'mode':<16} {'sims/s':>9} {'median s':>9} {'start-up s':>11}")
    for r in rows:
        print(f"{r['mode']:<16} {r['simulations_per_second']:>9.1f} {r['median_wall_s']:>9.2f} "
              f"{(r['startup_s'] or 0):>11.1f}")
    print(f"scaling 2/1 workers: {scaling:.2f}x (efficiency {scaling / 2:.0%}); 1 worker / single process: "
          f"{rate[1] / rate[None]:.2f}; files identical: {identical}; cpus {os.cpu_count()}, load before "
          f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    if not identical:
        raise SystemExit("the modes wrote different files")
    return result


if __name__ == "__main__":
    main()
