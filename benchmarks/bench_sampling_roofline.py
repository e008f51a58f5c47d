"""Posterior sampling against this machine's roofline: achieved GFLOP/s and GB/s, and which limit binds.

In one run, on the same thread counts, this script measures

1. the matrix-multiply peak: the best GFLOP/s of a large float32 ``torch.mm`` (4096 x 4096 by default);
2. the memory bandwidth: the best GB/s of a copy and of a triad ``a = b + 3 c`` over arrays far larger than the
   last-level cache (256 MiB each; an L2-sized copy is reported beside it, for scale);
3. the sampling throughput of a default-sized cINN posterior (``FlowConfig()``: 6 affine coupling blocks, subnets of
   3 hidden layers of 128, an MLP summary; ``D = 2`` parameters and 4-D observations, the sizes of
   ``simulators.gaussian_mixture``) with random weights (the speed does not depend on training): ``Posterior.sample``
   for 1 000, 10 000 and 100 000 samples of one observation and ``Posterior.sample_batched`` for 10, 100 and 1 000
   observations x 100 samples;

and, from an analytic count of the work of one inverse pass (:func:`count_pass`), the achieved GFLOP/s and GB/s, the
arithmetic intensity, the roofline limit ``min(peak, intensity x bandwidth)``, which of the two binds and the
fraction of it achieved; and one inverse pass through FrEIA (the path sampling took before
``CouplingFlow.sample_inverse``) against the fast path, timed in alternation. The matrix-product part of the count
is checked against ``torch.utils.flop_counter.FlopCounterMode`` on a real sampling call (they must agree exactly).

The machine may be shared: every time is the best of ``--repeats`` runs, the load average is recorded before and
after, and the fraction of the wall time the process actually ran on a CPU is reported (``cpu_share``; below 1 the
process waited for a core). ``--before`` merges the throughput table of an earlier run of this script (for example
on the code before a change: ``PYTHONPATH=<old checkout> python benchmarks/bench_sampling_roofline.py -o old.json``)
and reports the speed-up per case.

Usage:
    python benchmarks/bench_sampling_roofline.py                     # writes benchmarks/results/sampling_roofline.json
    python benchmarks/bench_sampling_roofline.py --quick -o /tmp/r.json
    python benchmarks/bench_sampling_roofline.py --threads 1 2 --repeats 7 --before old.json --force
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import sbi_inn
from sbi_inn.cinn import ConditionalINN
from sbi_inn.flows import FlowConfig
from sbi_inn.posterior import SAMPLE_CHUNK_ROWS, Posterior, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sampling_roofline.json"
PARAM_DIM, OBS_DIM = 2, 4  # simulators.gaussian_mixture: x in R^2, y a one-hot label of 4
SINGLE_SIZES = (1_000, 10_000, 100_000)  # samples of one observation
BATCHED_OBS = (10, 100, 1_000)  # observations x BATCHED_SAMPLES
BATCHED_SAMPLES = 100
FLOAT = 4  # bytes


# -- the model ------------------------------------------------------------------------------------------------------
def build_posterior(seed: int, device: torch.device) -> Posterior:
    """A default-sized cINN posterior with random weights: the zero-initialised last subnet layers get N(0, 0.05^2)
    weights so that every coupling acts (a fresh flow would be a rotation)."""
    torch.manual_seed(seed)
    model = ConditionalINN(PARAM_DIM, (OBS_DIM,), flow=FlowConfig())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("out.weight") or name.endswith("out.bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return Posterior(model, param_names=[f"x{i}" for i in range(PARAM_DIM)], obs_shape=(OBS_DIM,)).to(device)


@dataclass(frozen=True)
class PassCount:
    """Work of sampling, per sample and per observation: FLOPs (matrix products separately) and bytes."""

    matmul_flops_per_sample: int
    elementwise_flops_per_sample: int
    bytes_per_sample: int
    matmul_flops_per_observation: int
    weight_bytes: int

    def flops(self, n: int, B: int) -> int:
        """All FLOPs of ``n`` samples for each of ``B`` observations."""
        return (self.matmul_flops_per_sample + self.elementwise_flops_per_sample) * n * B \
            + self.matmul_flops_per_observation * B

    def matmul_flops(self, n: int, B: int) -> int:
        return self.matmul_flops_per_sample * n * B + self.matmul_flops_per_observation * B

    def bytes(self, n: int, B: int, chunk_rows: int) -> int:
        """Bytes moved for ``n x B`` samples in passes of ``chunk_rows`` rows (weights read once per pass)."""
        rows = n * B
        passes = -(-rows // min(rows, chunk_rows))
        return self.bytes_per_sample * rows + self.weight_bytes * passes


def count_pass(posterior: Posterior) -> PassCount:
    """Analytic count of one inverse pass of a cINN with affine couplings and a ``D > 1`` parameter space.

    FLOPs: a Linear ``in -> out`` costs ``2 in out`` per row (multiply-adds), its bias ``out``; every elementwise
    operation counts one FLOP per element (a ``tanh`` or ``exp`` too). Per coupling block and row: two subnets, the
    soft clamp ``alpha tanh(s / alpha)`` (3 per log-scale), ``exp(-s)`` (2), ``(u - t) * exp(-s)`` (2); per mixing
    rotation ``2 D^2``; per sample the standardisation (2 D) and the support map (12 D). Per observation: the summary
    network and each subnet's condition projection ``W_c c + b``.

    Bytes: the traffic of the operations as executed, unfused, with nothing reused from cache between operations:
    every Linear reads its input and writes its output, every elementwise operation reads its operands and writes its
    result (an in-place activation reads and writes its tensor), the latent noise is written and the sample written;
    the weights are read once per pass. This is an upper bound on the traffic to memory (activations of a pass of
    4096 rows are a few MiB, partly cache-resident), so the memory limit computed from it is a lower bound.
    """
    model = posterior.model
    cfg, D, C = model.flow_config, model.param_dim, model.summary_dim
    if D < 2 or cfg.coupling != "affine":
        raise ValueError("count_pass counts affine coupling flows of D >= 2 parameters")
    h, L = cfg.hidden, cfg.num_layers
    d1, d2 = D // 2, D - D // 2
    mm = elem = traffic = 0  # per sample
    for d_in, d_out in ((d2, d1), (d1, d2)):  # net2: u2 -> (s, t) of x1; net1: v1 -> (s, t) of x2
        widths = [d_in] + [h] * L + [2 * d_out]
        mm += sum(2 * a * b for a, b in zip(widths, widths[1:]))
        elem += h * L + (h * (L - 1) + 2 * d_out) + h  # activations, biases, the condition term added to layer 1
        traffic += FLOAT * (sum(a + b for a, b in zip(widths, widths[1:])) + 2 * h * L)  # linears, activations
        elem += 7 * d_out  # clamp (div, tanh, mul), exp(-s) (neg, exp), (u - t) * e (sub, mul)
        traffic += FLOAT * d_out * (5 * 2 + 2 * 3)  # the same 7 ops: 5 read 1 and write 1, 2 read 2
    mm, elem, traffic = mm * cfg.num_blocks, elem * cfg.num_blocks, traffic * cfg.num_blocks
    mm += 2 * D * D * cfg.num_blocks  # the fixed rotations
    traffic += FLOAT * (2 * D * cfg.num_blocks + 2 * D * cfg.num_blocks)  # rotations (read, write), cat (read, write)
    elem += 14 * D  # standardisation (2) and support map (12) per coordinate
    traffic += FLOAT * (D + 2 * 2 * D + 12 * 2 * D + D)  # latent written; standardisation, support map; sample out
    summary = [m for m in model.summary.modules() if isinstance(m, torch.nn.Linear)]
    per_obs = sum(2 * m.in_features * m.out_features for m in summary)
    per_obs += 2 * 2 * C * h * cfg.num_blocks  # the condition projection of both subnets of every block
    weights = sum(p.numel() for p in model.flow.parameters()) * FLOAT
    return PassCount(mm, elem, traffic, per_obs, weights)


def check_flop_count(posterior: Posterior, count: PassCount, n: int = 50, B: int = 3) -> dict:
    """Count the matrix-product FLOPs of ``sample_batched((n,), Y (B, M))`` with FlopCounterMode; compare."""
    Y = torch.eye(OBS_DIM, device=posterior.device)[torch.arange(B) % OBS_DIM]
    with FlopCounterMode(display=False) as counter:
        posterior.sample_batched((n,), Y, seed=0)
    measured, analytic = int(counter.get_total_flops()), count.matmul_flops(n, B)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"n": n, "observations": B, "flop_counter_matmul_flops": measured, "analytic_matmul_flops": analytic,
            "by_op": by_op, "agree": measured == analytic}


# -- machine limits -------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """``(best wall seconds, least CPU seconds of the process)`` over ``repeats`` calls of ``fn``, each minimum
    taken separately. On a shared machine the CPU time (all threads summed) leaves out the time spent waiting for
    a core, so it measures the work, where the wall time also measures the load."""
    fn()  # warm-up
    _sync(device)
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return best, cpu


def matmul_peak(device: torch.device, size: int, repeats: int, threads: int) -> dict:
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    out = torch.empty(size, size, device=device)
    t, cpu = best_time(lambda: torch.mm(a, b, out=out), repeats, device)
    flops = 2 * size**3
    return {"size": size, "seconds": t, "gflops": flops / t / 1e9, "cpu_seconds": cpu,
            "gflops_per_busy_thread": flops / (cpu / threads) / 1e9 if device.type == "cpu" else None}


def bandwidth(device: torch.device, mib: int, repeats: int, threads: int) -> dict:
    """Copy (``2 x`` the array's bytes: read + write) and triad ``a = b + 3 c`` (``3 x``) GB/s; ``*_busy`` per
    second of CPU time of the ``threads`` (see :func:`best_time`)."""
    n = mib * 2**20 // FLOAT
    a, b, c = (torch.rand(n, device=device) for _ in range(3))
    t_copy, c_copy = best_time(lambda: a.copy_(b), repeats, device)
    t_triad, c_triad = best_time(lambda: torch.add(b, c, alpha=3.0, out=a), repeats, device)
    copy_bytes, triad_bytes = 2 * n * FLOAT, 3 * n * FLOAT
    out = {"array_mib": mib, "copy_gbs": copy_bytes / t_copy / 1e9, "triad_gbs": triad_bytes / t_triad / 1e9}
    out["gbs"] = max(out["copy_gbs"], out["triad_gbs"])
    if device.type == "cpu":
        out["gbs_per_busy_thread"] = max(copy_bytes / (c_copy / threads), triad_bytes / (c_triad / threads)) / 1e9
    return out


# -- sampling -------------------------------------------------------------------------------------------------------
def sampling_cases(quick: bool) -> list[tuple[str, int, int]]:
    """``(kind, n samples per observation, B observations)``."""
    scale = 10 if quick else 1
    single = [("single", n // scale, 1) for n in SINGLE_SIZES]
    batched = [("batched", BATCHED_SAMPLES, max(1, B // scale)) for B in BATCHED_OBS]
    return single + batched


def time_sampling(posterior: Posterior, kind: str, n: int, B: int, repeats: int) -> tuple[float, float]:
    dev = posterior.device
    Y = torch.eye(OBS_DIM, device=dev)[torch.arange(B, device=dev) % OBS_DIM]
    if kind == "single":
        return best_time(lambda: posterior.sample((n,), Y[0], seed=0), repeats, dev)
    return best_time(lambda: posterior.sample_batched((n,), Y, seed=0), repeats, dev)


def roofline(flops: float, nbytes: float, seconds: float, peak_gflops: float, bw_gbs: float) -> dict:
    intensity = flops / nbytes
    memory_limit = intensity * bw_gbs
    limit = min(peak_gflops, memory_limit)
    achieved = flops / seconds / 1e9
    return {"achieved_gflops": achieved, "achieved_gbs": nbytes / seconds / 1e9, "intensity_flop_per_byte": intensity,
            "compute_limit_gflops": peak_gflops, "memory_limit_gflops": memory_limit,
            "binding": "compute" if peak_gflops <= memory_limit else "memory", "limit_gflops": limit,
            "fraction_of_limit": achieved / limit, "fraction_of_matmul_peak": achieved / peak_gflops}


def inverse_ab(posterior: Posterior, rows: int, rounds: int) -> dict | None:
    """One inverse pass of ``rows`` latent rows for one observation, timed in alternation (so both see the same
    load): ``flow.inverse(z, c, jac=False)`` through FrEIA with fresh activations (what sampling ran before
    ``sample_inverse``) against ``flow.sample_inverse(z, c)``; best and median wall and CPU milliseconds."""
    flow, dev = posterior.model.flow, posterior.device
    if not hasattr(flow, "sample_inverse"):  # an older sbi_inn (a --before run)
        return None
    with torch.inference_mode():
        c = posterior.model.condition(torch.eye(OBS_DIM, device=dev)[:1])
        z = torch.randn(rows, PARAM_DIM, generator=torch.Generator().manual_seed(0)).to(dev)
        ways = {"freia_inverse": lambda: flow.inverse(z, c, jac=False),
                "sample_inverse": lambda: flow.sample_inverse(z, c)}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in ways}
        for _ in range(rounds + 1):
            for k, fn in ways.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                _sync(dev)
                times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    out = {"rows": rows, "rounds": rounds}
    for k, ts in times.items():
        wall, cpu = sorted(t for t, _ in ts[1:]), sorted(c for _, c in ts[1:])
        out[k] = {"wall_ms_best": 1e3 * wall[0], "wall_ms_median": 1e3 * wall[len(wall) // 2],
                  "cpu_ms_best": 1e3 * cpu[0], "cpu_ms_median": 1e3 * cpu[len(cpu) // 2]}
    out["speedup_cpu_best"] = out["freia_inverse"]["cpu_ms_best"] / out["sample_inverse"]["cpu_ms_best"]
    out["speedup_wall_median"] = out["freia_inverse"]["wall_ms_median"] / out["sample_inverse"]["wall_ms_median"]
    return out


def machine_info() -> dict:
    """``_common.machine_info()`` plus the commit of the ``sbi_inn`` measured and the GPU's name."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(sbi_inn.__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {**_common.machine_info(), "sbi_inn_path": str(Path(sbi_inn.__file__).parent), "sbi_inn_commit": commit,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run(threads: int, device: torch.device, args) -> dict:
    torch.set_num_threads(threads)
    posterior = build_posterior(args.seed, device)
    count = count_pass(posterior)
    peak = matmul_peak(device, 1024 if args.quick else 4096, args.repeats, threads)
    dram = bandwidth(device, 32 if args.quick else 256, args.repeats, threads)
    cache = bandwidth(device, 1, 5 * args.repeats, threads)
    rows = []
    for kind, n, B in sampling_cases(args.quick):
        repeats = args.repeats if n * B < 10**5 else max(2, args.repeats // 2)  # 10^5 samples take seconds
        seconds, cpu = time_sampling(posterior, kind, n, B, repeats)
        flops, nbytes = count.flops(n, B), count.bytes(n, B, SAMPLE_CHUNK_ROWS)
        row = {"kind": kind, "samples_per_observation": n, "observations": B, "samples": n * B, "seconds": seconds,
               "samples_per_second": n * B / seconds, "flops": flops, "bytes": nbytes}
        row.update(roofline(flops, nbytes, seconds, peak["gflops"], dram["gbs"]))
        if device.type == "cpu":  # the same on the CPU-time basis: limits and sampling both per busy thread-second
            busy = cpu / threads
            row["cpu_share"] = cpu / seconds / threads  # below 1: the threads waited for a core
            row["samples_per_busy_second"] = n * B / busy
            row["busy_basis"] = roofline(flops, nbytes, busy, peak["gflops_per_busy_thread"],
                                         dram["gbs_per_busy_thread"])
        rows.append(row)
        bb = row.get("busy_basis", {})
        print(f"{threads:>3} {kind:<8} {n:>7} x {B:<5} {row['samples_per_second']:>10,.0f} "
              f"{row['achieved_gflops']:>7.1f} {row['achieved_gbs']:>6.1f} {row['intensity_flop_per_byte']:>5.1f} "
              f"{row['limit_gflops']:>6.1f} {row['binding']:>8} {100 * row['fraction_of_limit']:>6.1f}% | "
              f"{row.get('samples_per_busy_second', 0):>10,.0f} {bb.get('achieved_gflops', 0):>7.1f} "
              f"{bb.get('limit_gflops', 0):>6.1f} {bb.get('binding', '-'):>8} "
              f"{100 * bb.get('fraction_of_limit', 0):>6.1f}% {row.get('cpu_share', 0):>5.2f}", flush=True)
    ab = inverse_ab(posterior, SAMPLE_CHUNK_ROWS, 5 if args.quick else 20)
    if ab is not None:
        f, q = ab["freia_inverse"], ab["sample_inverse"]
        print(f"    inverse pass of {ab['rows']} rows, alternated x{ab['rounds']}: FrEIA inverse "
              f"{f['cpu_ms_best']:.1f} ms CPU best ({f['wall_ms_median']:.1f} ms wall median), sample_inverse "
              f"{q['cpu_ms_best']:.1f} ms "
              f"({q['wall_ms_median']:.1f} ms): x{ab['speedup_cpu_best']:.2f} CPU, x{ab['speedup_wall_median']:.2f} "
              f"wall", flush=True)
    return {"threads": threads, "matmul_peak": peak, "memory_bandwidth": dram, "cache_bandwidth_1mib": cache,
            "sampling": rows, "inverse_pass_ab": ab}


def merge_before(result: dict, before_paths: list[Path]) -> None:
    """Speed-ups against earlier runs' tables (same threads, kind and sizes; the best of the files per case)."""
    old: dict[tuple, list[float]] = {}
    befores = [json.loads(p.read_text()) for p in before_paths]
    for before in befores:
        for r in before["runs"]:
            for s in r["sampling"]:
                key = (r["threads"], s["kind"], s["samples_per_observation"], s["observations"])
                prev = old.get(key, [0.0, 0.0])
                old[key] = [max(prev[0], s["samples_per_second"]), max(prev[1], s.get("samples_per_busy_second", 0))]
    table = []
    for r in result["runs"]:
        for s in r["sampling"]:
            key = (r["threads"], s["kind"], s["samples_per_observation"], s["observations"])
            if key in old:
                row = {"threads": key[0], "kind": key[1], "samples_per_observation": key[2], "observations": key[3],
                       "before_samples_per_second": old[key][0], "after_samples_per_second": s["samples_per_second"],
                       "speedup": s["samples_per_second"] / old[key][0]}
                if old[key][1] and s.get("samples_per_busy_second"):
                    row.update(before_samples_per_busy_second=old[key][1],
                               after_samples_per_busy_second=s["samples_per_busy_second"],
                               speedup_busy=s["samples_per_busy_second"] / old[key][1])
                table.append(row)
    result["before"] = {"runs": [{"path": str(p), "machine": b.get("machine"), "date": b.get("date"),
                                  "load": b.get("load")} for p, b in zip(before_paths, befores)],
                        "comparison": table}
    print(f"\nbefore (best of {len(befores)} run(s)) -> after, samples/s wall clock | per busy thread-second")
    for t in table:
        busy = (f"{t['before_samples_per_busy_second']:>10,.0f} -> {t['after_samples_per_busy_second']:>10,.0f}  "
                f"x{t['speedup_busy']:.2f}" if "speedup_busy" in t else "")
        print(f"{t['threads']:>3} {t['kind']:<8} {t['samples_per_observation']:>7} x {t['observations']:<5} "
              f"{t['before_samples_per_second']:>10,.0f} -> {t['after_samples_per_second']:>10,.0f}  "
              f"x{t['speedup']:.2f} | {busy}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs per measurement (default: 5)")
    parser.add_argument("--device", default="cpu", help="'cpu' (default), 'auto' or 'cuda'")
    parser.add_argument("--quick", action="store_true", help="10x smaller sampling sizes and arrays (a smoke run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument("--before", type=Path, nargs="+", help="JSON files of earlier runs to compare with")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS, help=f"JSON output (default: {RESULTS})")
    parser.add_argument("--force", action="store_true", help="write over an existing output file")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to write over it")
    if args.repeats < 1 or min(args.threads) < 1:
        parser.error("--repeats and --threads must be >= 1")
    for path in args.before or ():
        if not path.is_file():
            parser.error(f"--before {path}: no such file")
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    result = {"machine": machine_info(), "device": str(device), "date": datetime.datetime.now(datetime.timezone.utc)
              .isoformat(timespec="seconds"), "quick": args.quick, "repeats": args.repeats, "seed": args.seed,
              "model": {"param_dim": PARAM_DIM, "obs_dim": OBS_DIM, "flow": FlowConfig().to_dict(),
                        "sample_chunk_rows": SAMPLE_CHUNK_ROWS},
              "load": {"before": os.getloadavg()}, "runs": []}
    posterior = build_posterior(args.seed, device)
    count = count_pass(posterior)
    result["count_per_sample"] = {"matmul_flops": count.matmul_flops_per_sample,
                                  "elementwise_flops": count.elementwise_flops_per_sample,
                                  "bytes": count.bytes_per_sample, "matmul_flops_per_observation":
                                  count.matmul_flops_per_observation, "flow_weight_bytes": count.weight_bytes}
    result["flop_count_check"] = check_flop_count(posterior, count)
    fc = result["flop_count_check"]
    print(f"FLOPs per sample: {count.matmul_flops_per_sample:,} in matrix products + "
          f"{count.elementwise_flops_per_sample:,} elementwise; {count.bytes_per_sample:,} bytes (unfused traffic)")
    print(f"matrix-product FLOPs of sample_batched(({fc['n']},), {fc['observations']} observations): analytic "
          f"{fc['analytic_matmul_flops']:,}, FlopCounterMode {fc['flop_counter_matmul_flops']:,} "
          f"({'agree' if fc['agree'] else 'DISAGREE'})")
    print(f"\n{'':>27} {'wall clock':-^53} | {'per busy thread-second (CPU time)':-^51}")
    print(f"{'thr':>3} {'kind':<8} {'n':>7} x {'B':<5} {'samples/s':>10} {'GFLOP/s':>7} {'GB/s':>6} {'AI':>5} "
          f"{'limit':>6} {'binds':>8} {'of lim':>7} | {'samples/s':>10} {'GFLOP/s':>7} {'limit':>6} {'binds':>8} "
          f"{'of lim':>7} {'share':>5}")
    try:
        for threads in args.threads:
            r = run(threads, device, args)
            result["runs"].append(r)
            mp, bw = r["matmul_peak"], r["memory_bandwidth"]
            print(f"    threads {threads}: matmul peak {mp['gflops']:.1f} GFLOP/s wall "
                  f"({mp['gflops_per_busy_thread'] or 0:.1f} per busy thread-second), memory {bw['gbs']:.1f} GB/s "
                  f"(copy {bw['copy_gbs']:.1f}, triad {bw['triad_gbs']:.1f}; "
                  f"{bw.get('gbs_per_busy_thread', 0):.1f} per busy thread-second), 1 MiB copy "
                  f"{r['cache_bandwidth_1mib']['copy_gbs']:.1f} GB/s", flush=True)
    finally:
        torch.set_num_threads(threads_before)
    result["load"]["after"] = os.getloadavg()
    print(f"load average before {result['load']['before']}, after {result['load']['after']} "
          f"({os.cpu_count()} CPUs)")
    if args.before is not None:
        merge_before(result, args.before)
    _common.write_json(args.output, result, prefix="\n")
    return result


if __name__ == "__main__":
    main()
