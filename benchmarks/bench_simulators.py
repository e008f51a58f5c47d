"""Throughput of the registered simulators and of the HDF5 data pipeline.

Measures simulations per second for every registered simulator that imports (n = 100 000; set-valued: 10 000),
HDF5 write throughput of ``simulate_to_hdf5`` (inverse kinematics, 1e6 rows in chunks of 10 000) and the read
throughput of ``HDF5Dataset`` through a shuffling ``DataLoader`` (batch size 256). Prints a table and writes
``benchmarks/results/simulators.json``.

Usage:
    python benchmarks/bench_simulators.py            # full sizes
    python benchmarks/bench_simulators.py --quick    # 10x smaller, for a smoke test
    python benchmarks/bench_simulators.py --threads 4
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from sbi_inn import HDF5Dataset, simulate_to_hdf5
from sbi_inn._version import __version__
from simulators import get_simulator, list_simulators

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "simulators.json"


def bench_simulator(name: str, n: int, repeats: int) -> dict:
    sim = get_simulator(name)
    n = n // 10 if sim.is_set_valued else n
    gen = torch.Generator().manual_seed(0)
    x = sim.sample_prior(n, generator=gen)
    sim.simulate(x[: min(n, 100)], generator=gen)  # warm-up
    best, spent = float("inf"), 0.0
    for _ in range(repeats):  # best of `repeats`, but a slow simulator is timed once
        t = time.perf_counter()
        sim.simulate(x, generator=gen)
        best = min(best, time.perf_counter() - t)
        spent += best
        if spent > 5.0:
            break
    return {"simulator": name, "n": n, "set_valued": bool(sim.is_set_valued), "seconds": best,
            "simulations_per_second": n / best}


def bench_hdf5(rows: int, chunk_size: int, read_batches: int, directory: str) -> dict:
    sim = get_simulator("inverse_kinematics")
    path = os.path.join(directory, "ik.h5")
    t = time.perf_counter()
    simulate_to_hdf5(sim, sim.prior, rows, path, chunk_size=chunk_size, show_progress=False)
    write_s = time.perf_counter() - t
    # simulation alone, to separate the cost of writing
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for start in range(0, rows, chunk_size):
        sim.simulate(sim.sample_prior(min(chunk_size, rows - start), generator=gen), generator=gen)
    sim_s = time.perf_counter() - t
    raw_mb = rows * (sim.param_dim + sim.obs_dim) * 4 / 1e6
    out = {"rows": rows, "chunk_size": chunk_size, "write_seconds": write_s, "write_rows_per_second": rows / write_s,
           "write_mb_per_second": raw_mb / write_s, "simulate_only_seconds": sim_s, "raw_mb": raw_mb,
           "storage_only_rows_per_second": rows / max(write_s - sim_s, 1e-9),
           "file_mb": os.path.getsize(path) / 1e6, "read": []}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(HDF5Dataset(path, "train"), batch_size=256, shuffle=True,
                                             num_workers=workers)
        batches = iter(loader)
        next(batches)  # worker start-up is not counted
        t, n = time.perf_counter(), 0
        for i, (xb, _) in enumerate(batches):
            n += len(xb)
            if i + 1 == read_batches:
                break
        dt = time.perf_counter() - t
        out["read"].append({"num_workers": workers, "batch_size": 256, "batches": i + 1, "rows_per_second": n / dt})
        del batches
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller problem sizes")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON output (default: {RESULTS})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: 1; more threads slow down on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = 10 if args.quick else 1
    result = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "platform": platform.platform(), "processor": platform.processor()},
              "sbi_inn": __version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "quick": args.quick, "simulators": [], "skipped": {}}

    print(f"{'simulator':<20} {'n':>8} {'sims/s':>12}")
    for name in list_simulators():
        try:
            r = bench_simulator(name, 100_000 // scale, repeats=1 if args.quick else 3)
        except Exception as err:  # simulators still being written are skipped with a note
            result["skipped"][name] = f"{type(err).__name__}: {err}"
            print(f"{name:<20} skipped ({type(err).__name__}: {err})")
            continue
        result["simulators"].append(r)
        print(f"{name:<20} {r['n']:>8} {r['simulations_per_second']:>12,.0f}")

    with tempfile.TemporaryDirectory() as d:
        h = bench_hdf5(1_000_000 // scale, 10_000, read_batches=200 // scale * 2, directory=d)
    result["hdf5"] = h
    print(f"\nHDF5 write (inverse_kinematics, {h['rows']} rows, chunks of {h['chunk_size']}): "
          f"{h['write_rows_per_second']:,.0f} rows/s, {h['write_mb_per_second']:.1f} MB/s of raw float32 "
          f"({h['write_seconds']:.2f} s, of which simulating {h['simulate_only_seconds']:.2f} s; "
          f"file {h['file_mb']:.1f} MB for {h['raw_mb']:.1f} MB raw; storage alone "
          f"{h['storage_only_rows_per_second']:,.0f} rows/s)")
    for r in h["read"]:
        print(f"HDF5Dataset read, DataLoader(batch_size=256, shuffle=True, num_workers={r['num_workers']}): "
              f"{r['rows_per_second']:,.0f} rows/s")
    write_json(args.output, result, prefix="\n")
    return result


if __name__ == "__main__":
    main()
