"""Data-parallel training (``sbi_inn.ddp``) against one process: step and epoch time, and held-out loss at equal epochs.

On one simulation file (the Gaussian mixture by default, 10 000 simulations) the cINN is trained for a fixed number
of epochs at a fixed global batch three ways: one process without DDP (``fit_posterior``), one DDP process and two
DDP processes (gloo, one CPU thread each, started with ``torch.multiprocessing.spawn``), for each seed; the
single-process and one-process DDP fits alternate in one process so that they meet the same machine load. Reported:
the median epoch time over the epochs after the first (training plus validation), that divided by the batches per
epoch (ms per global batch), and the held-out loss: the NLL per dimension ``-log q(x | y) / D`` on fresh test
simulations (another seed), which is what the training loss estimates. Prints a table and writes
``benchmarks/results/ddp.json`` with the machine (``os.cpu_count()``, ``os.getloadavg()`` before and after), the
settings and the seeds.

Usage:
    python benchmarks/bench_ddp.py                    # 10 000 simulations, 5 epochs, seeds 0 1 2
    python benchmarks/bench_ddp.py --quick            # a smoke run (2 000 simulations, 2 epochs, seed 0; no JSON)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from _common import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "ddp.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(args) -> dict:
    return {"train": {"epochs": args.epochs, "batch_size": args.batch_size, "patience": None}}


def _fit(args, path: str, seed: int, distributed: bool):
    from sbi_inn import fit_posterior

    return fit_posterior(data=path, config=_config(args), seed=seed, show_progress=False, distributed=distributed)


def _worker(rank: int, world: int, port: int, args, path: str, out: str) -> None:
    """One DDP rank: every seed in turn; rank 0 saves each posterior for the parent to evaluate."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from sbi_inn.ddp import process_group

    with process_group("gloo", timeout=600) as group:
        for seed in args.seeds:
            if world == 1:  # the single-process fit in the same process, interleaved: the machine is shared
                _fit(args, path, seed, distributed=False).save(f"{out}/single_seed{seed}.sbi")
            post = _fit(args, path, seed, distributed=True)
            if group.is_main:
                post.save(f"{out}/ddp{world}_seed{seed}.sbi")


def _summary(post, test_x, test_y, num_train: int, batch_size: int) -> dict:
    history = post.history
    later = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    batches = max(1, num_train // batch_size)
    with torch.no_grad():
        nll = float(-post.log_prob(test_x, test_y).mean()) / test_x.shape[1]
    return {"epoch_seconds": statistics.median(later), "ms_per_global_batch": 1e3 * statistics.median(later) / batches,
            "first_epoch_seconds": history[0]["seconds"], "epochs": len(history), "batches_per_epoch": batches,
            "train_loss_last": history[-1]["train_loss"], "val_loss_last": history[-1]["val_loss"],
            "test_nll_per_dim": nll}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--simulator", default="gaussian_mixture")
    ap.add_argument("--num-simulations", type=int, default=10_000)
    ap.add_argument("--num-test", type=int, default=5_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256, help="global batch (per rank: batch / world size)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", help=f"JSON file to write (default: {RESULTS.relative_to(RESULTS.parents[2])}; "
                                     "--quick writes nothing unless given)")
    args = ap.parse_args()
    if args.quick:
        args.num_simulations, args.num_test, args.epochs, args.seeds = 2_000, 1_000, 2, [0]
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    torch.set_num_threads(1)

    from sbi_inn import load_posterior, simulate_to_hdf5
    from sbi_inn._version import __version__
    from sbi_inn.simulation import Simulation, simulate_memory
    from simulators import get_simulator

    load_before = os.getloadavg()
    sim = get_simulator(args.simulator)
    t_start = time.perf_counter()
    results = {"single": {}, "ddp1": {}, "ddp2": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/sims.h5"
        simulate_to_hdf5(sim, sim.prior, args.num_simulations, path, seed=1000, show_progress=False)
        test = simulate_memory(Simulation(sim, sim.prior), args.num_test, chunk_size=args.num_test,
                               seeds=lambda i: (2000 + i, 3000 + i), show_progress=False)
        test_x, test_y = test.x[test.valid], test.y[test.valid]
        loads = {}
        for world in (1, 2):
            t, load = time.perf_counter(), os.getloadavg()[0]
            mp.spawn(_worker, args=(world, _free_port(), args, path, tmp), nprocs=world, join=True)
            loads[world] = [load, os.getloadavg()[0]]
            for name in (["single"] if world == 1 else []) + [f"ddp{world}"]:
                for seed in args.seeds:
                    post = load_posterior(f"{tmp}/{name}_seed{seed}.sbi", device="cpu")
                    num_train = post.metadata["data"]["num_train"]
                    results[name][seed] = _summary(post, test_x, test_y, num_train, args.batch_size)
                    print(f"{name}, seed {seed}: {results[name][seed]}", flush=True)
            print(f"  ({time.perf_counter() - t:.0f} s with process start-up; 1-min load {loads[world]})", flush=True)

    rows, table = [], {}
    for name, label in (("single", "1 process, no DDP"), ("ddp1", "DDP, 1 gloo process"),
                        ("ddp2", "DDP, 2 gloo processes")):
        per_seed = list(results[name].values())
        nll = [r["test_nll_per_dim"] for r in per_seed]
        table[name] = {"label": label,
                       "ms_per_global_batch": statistics.median(r["ms_per_global_batch"] for r in per_seed),
                       "epoch_seconds": statistics.median(r["epoch_seconds"] for r in per_seed),
                       "test_nll_per_dim_mean": statistics.fmean(nll),
                       "test_nll_per_dim_sd": statistics.stdev(nll) if len(nll) > 1 else math.nan,
                       "test_nll_per_dim": nll}
        rows.append(table[name])
    base = table["single"]["epoch_seconds"]
    print(f"\n{args.simulator}, {args.num_simulations} simulations, {num_train} training rows, global batch "
          f"{args.batch_size}, {args.epochs} epochs, seeds {args.seeds}; {os.cpu_count()} CPUs, load "
          f"{load_before[0]:.1f} before")
    print(f"{'':24} {'ms/global batch':>16} {'epoch s':>8} {'speed-up':>8} {'test NLL/dim (mean +- sd)':>26}")
    for r in rows:
        print(f"{r['label']:24} {r['ms_per_global_batch']:16.2f} {r['epoch_seconds']:8.2f} "
              f"{base / r['epoch_seconds']:8.2f} {r['test_nll_per_dim_mean']:17.4f} +- {r['test_nll_per_dim_sd']:.4f}")

    record = {
        "benchmark": "bench_ddp", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sbi_inn_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": {**machine_info(), "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
                    "load1_before_after": {"1 process (single and DDP 1)": loads[1], "DDP 2 processes": loads[2]},
                    "shared": "the machine runs other jobs at the same time", "threads_per_process": 1},
        "settings": {"simulator": args.simulator, "num_simulations": args.num_simulations, "num_train": num_train,
                     "num_test": int(test_x.shape[0]), "epochs": args.epochs, "global_batch_size": args.batch_size,
                     "seeds": args.seeds, "simulation_seed": 1000, "test_seeds": "chunk i: (2000 + i, 3000 + i)",
                     "config": _config(args), "backend": "gloo"},
        "summary": table, "per_seed": results, "wall_seconds": time.perf_counter() - t_start,
    }
    if args.quick and args.output is None:
        return
    out = Path(args.output or RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
