"""Benchmark: ``sbi_inn.fit_posterior`` (conditional INN) against sbi's default NPE, side by side.

For every simulator with a reference posterior and every simulation budget, both methods train on the *same*
simulations (one HDF5 file written by ``simulate_to_hdf5`` with ``seed=0``; sbi gets the same tensors) and are
scored on the same test observations against the same reference samples:

* **C2ST** (``sbi_inn.diagnostics.c2st``, reference first so both methods are z-scored alike; 0.5 is perfect),
  averaged over the test observations;
* **training wall time** (the whole call: ``fit_posterior(data=...)`` / ``NPE(...).append_simulations().train()``
  plus ``build_posterior()``);
* **samples/s** for one observation (10 000 samples, best of 10);
* **batched observations/s**: ``sample_batched((100,), Y)`` with ``B = 1000`` observations (sbi:
  ``DirectPosterior.sample_batched``), best of 2; both sampling rates are timed after training, with the two
  trained posteriors loaded into one process and timed in alternation (``time_pair``), so slow spells of the shared
  machine hit both methods alike;
* **peak memory**: resident set size of a fresh worker process, read from ``/proc/self/status`` (``VmHWM`` reset
  through ``/proc/self/clear_refs`` at the start of each phase, so torch's CPU allocations are counted; falls back
  to ``resource.getrusage`` max RSS where ``clear_refs`` is not writable). Reported as the increase over the RSS
  at the phase start (training, sampling) and as the process' absolute peak.

Each (simulator, budget, method) runs in its own subprocess with ``torch.set_num_threads(1)`` and one BLAS thread,
which isolates memory and keeps the two methods on equal terms on a shared machine. Both methods use their
defaults: ``fit_posterior`` with its default ``FitConfig`` (early stopping on 10 % validation data), sbi's ``NPE``
with its default density estimator (``"maf"``) and default training settings (10 % validation, stop after 20
epochs without improvement).

Simulators and references:

* ``gaussian_mixture``: all 4 one-hot labels, exact posterior (``simulator.sample_posterior``).
* ``inverse_kinematics`` with ``noise=0.01``: observations simulated from prior draws; *exact* rejection sampling
  (prior proposals accepted with probability ``p(y | x) / max p(y | x)``; the Gaussian likelihood is bounded), which
  is exact unlike rejection ABC and, for this thin curved posterior, more reliable than an ensemble MCMC.
* ``tissue_spectra`` (1 layer, 5 % log-normal noise): emcee via ``sbi_inn.reference.mcmc`` on the exact
  log-likelihood. The posterior is degenerate: ``d`` has no effect (flat over its prior range) and ``v_hb`` /
  ``a_mie`` are seen only through their ratio (a ray cut by the prior box).
* ``gaussian_sets`` at a fixed set size ``K = 10``: exact conjugate posterior. ``fit_posterior`` gets the
  set-valued simulations (its deep-set summary network); sbi gets the same sets flattened to ``(n, 10)`` vectors
  (sbi's default, no embedding network).

The code under test (``sbi_inn/``, ``simulators/``) is copied to a temporary snapshot at start and imported from
there by the run and all its workers, so edits to the working tree during a run cannot mix code versions; its
digest is in the JSON (``--no-snapshot`` imports the working tree instead).

Usage::

    python benchmarks/bench_vs_sbi.py --quick      # smoke run: one simulator, tiny budgets (~2 min)
    python benchmarks/bench_vs_sbi.py              # full run (~25 min on 2 loaded CPU cores)

Writes ``benchmarks/results/vs_sbi.json`` (``--quick``: ``vs_sbi_quick.json`` in the temporary directory, so a
smoke run never overwrites the committed results), prints a table and a markdown table for the README.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch
from _common import PeakRSS, code_digest, fmt, machine_info, rerun_on_snapshot

ROOT = Path(__file__).resolve().parents[1]
# The run imports sbi_inn and simulators from a snapshot copied at start (other people may edit the working tree
# during a 25-minute run); SRC_ENV names it for the re-executed parent and its workers.
SRC_ENV = "BENCH_VS_SBI_SRC"
SRC = Path(os.environ.get(SRC_ENV) or ROOT)
if str(SRC) not in sys.path[:1]:
    sys.path.insert(0, str(SRC))

METHODS = ("sbi_inn", "sbi")
SIMULATORS = {
    # name: (get_simulator kwargs, number of test observations, reference kind)
    "gaussian_mixture": ({}, 4, "exact"),
    "inverse_kinematics": ({"noise": 0.01}, 3, "likelihood_rejection"),
    "tissue_spectra": ({}, 4, "mcmc"),
    "gaussian_sets": ({"min_size": 10, "max_size": 10}, 3, "exact"),
}
SET_SIZE = 10
SINGLE_SAMPLES = 10_000
SINGLE_REPEATS = 10  # a draw takes 5-50 ms: best of 10 keeps a busy scheduler out of the rate (3 moved it by 2x)
BATCH_OBS, BATCH_SAMPLES = 1000, 100


# -- worker: one (simulator, budget, method) in a fresh process ------------------------------------------------------
class _RealSupport(torch.distributions.Distribution):
    """``base`` with support declared as R^D, for priors whose constraint ``biject_to`` cannot transform. At module
    level so that sbi's posterior, which holds the prior, pickles (``time_pair`` reloads it)."""

    arg_constraints: dict = {}
    support = torch.distributions.constraints.independent(torch.distributions.constraints.real, 1)

    def __init__(self, base):
        self.base = base
        super().__init__(torch.Size(), base.event_shape, validate_args=False)

    def sample(self, sample_shape=()):
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)

    @property
    def mean(self):
        return self.base.mean

    @property
    def variance(self):
        return self.base.variance


def _sbi_prior(prior):
    """The prior as sbi accepts it: ``process_prior``, with a real-support wrapper for supports ``biject_to`` lacks
    (the Gaussian mixture's ``MixtureSameFamily`` has support R^2 but a constraint torch cannot transform)."""
    from sbi.utils import process_prior
    from torch.distributions import biject_to

    try:
        biject_to(prior.support)
        wrapped = prior
    except NotImplementedError:
        wrapped = _RealSupport(prior)
    return process_prior(wrapped)[0]


def _draw_fns(method: str, posterior, is_set: bool):
    """``(draw(n, y), draw_batched(n, Y))`` for a trained posterior; observations as the simulator returns them
    (sbi gets set-valued ones flattened, as in training)."""
    if method == "sbi":
        flat = (lambda t: t.reshape(t.shape[0], -1)) if is_set else (lambda t: t)

        def draw(n, y_one):
            return posterior.sample((n,), x=flat(y_one[None])[0], show_progress_bars=False)

        def draw_batched(n, Y):
            return posterior.sample_batched((n,), x=flat(Y), show_progress_bars=False)
    else:
        def draw(n, y_one):
            return posterior.sample((n,), y_one)

        def draw_batched(n, Y):
            return posterior.sample_batched((n,), Y)
    return draw, draw_batched


def worker(spec: dict) -> dict:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    mem = PeakRSS()
    digest = code_digest(SRC)
    import sbi_inn
    from sbi_inn.data import load_hdf5
    from simulators import get_simulator

    sim = get_simulator(spec["simulator"], **spec["sim_kwargs"])
    data = load_hdf5(spec["data"])
    obs = torch.load(spec["obs"], weights_only=True)
    y_test, y_batch = obs["y_test"], obs["y_batch"]
    is_set = sim.is_set_valued
    method = spec["method"]
    n_samples = spec["num_samples"]
    torch.manual_seed(spec["seed"])
    if method == "sbi":
        import sbi
        from sbi.inference import NPE

        prior = _sbi_prior(sim.prior)
        x, y = data["x"], data["y"]
        y = y.reshape(y.shape[0], -1) if is_set else y  # sbi gets the sets flattened
        rss0 = mem.start()
        t0 = time.perf_counter()
        inference = NPE(prior=prior, show_progress_bars=False)
        estimator = inference.append_simulations(x, y).train()
        posterior = inference.build_posterior(estimator)
        train_time = time.perf_counter() - t0
        info = {"epochs": int(inference._summary["epochs_trained"][-1]),
                "density_estimator": "maf (sbi default)", "sbi_version": sbi.__version__,
                "batched_sampler": "DirectPosterior.sample_batched"}

    else:
        from sbi_inn.fit import fit_posterior

        rss0 = mem.start()
        t0 = time.perf_counter()
        posterior = fit_posterior(data=spec["data"], prior=sim.prior, seed=spec["seed"], show_progress=False,
                                  config=spec.get("fit_config"), summary=spec.get("summary") or "auto")
        train_time = time.perf_counter() - t0
        info = {"epochs": int(posterior.metadata.get("epochs_run", len(posterior.history))),
                "inner_train_seconds": posterior.metadata.get("train_seconds"),
                "summary": posterior.metadata.get("summary"), "batched_sampler": "Posterior.sample_batched",
                "fit_config": posterior.metadata.get("config")}

    draw, draw_batched = _draw_fns(method, posterior, is_set)
    train_peak = mem.peak() - rss0
    peak_abs = mem.peak()

    rss1 = mem.start()
    with torch.no_grad():
        samples = torch.stack([draw(n_samples, y_test[i]) for i in range(len(y_test))], 1)  # (n, B, D)
        out = draw_batched(BATCH_SAMPLES, y_batch)  # the memory of one full batched call; timed in time_pair
    assert out.shape == (BATCH_SAMPLES, len(y_batch), sim.param_dim), out.shape
    sample_peak = mem.peak() - rss1
    peak_abs = max(peak_abs, mem.peak())
    torch.save({"samples": samples.float()}, spec["samples_out"])
    if method == "sbi":
        torch.save(posterior, spec["posterior_out"])  # sbi's own format is a pickle (our file, read back below)
    else:
        posterior.save(spec["posterior_out"], overwrite=True)
    return {"train_seconds": train_time, "train_peak_rss_increase_mib": train_peak,
            "sample_peak_rss_increase_mib": sample_peak, "peak_rss_mib": peak_abs, "baseline_rss_mib": rss0,
            "memory_method": mem.method, "num_train_rows": int(data["x"].shape[0]), "torch_threads":
            torch.get_num_threads(), "source_digest": digest,
            "sbi_inn_path": str(Path(sbi_inn.__file__).parent), **info}


def _load_posterior(method: str, path: str):
    if method == "sbi":
        return torch.load(path, weights_only=False)  # sbi pickles; this file was written by our own worker
    from sbi_inn.posterior import load_posterior

    return load_posterior(path)


def time_pair(spec: dict) -> dict:
    """Sampling rates of the saved posteriors of one (simulator, budget), timed *interleaved* in one process.

    The shared machine has slow spells lasting seconds (the same draw took 12 ms in one run and 28 ms in another);
    timing the methods in alternation, best of ``SINGLE_REPEATS`` (single) and of 2 (batched) each, exposes both to
    the same spells, so the ratio is robust even when the absolute rates are not.
    """
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    obs = torch.load(spec["obs"], weights_only=True)
    y_test, y_batch = obs["y_test"], obs["y_batch"]
    methods = list(spec["posteriors"])
    fns = {m: _draw_fns(m, _load_posterior(m, p), spec["is_set"]) for m, p in spec["posteriors"].items()}
    best = {m: {"single": math.inf, "batched": math.inf} for m in methods}

    def timed(fn, *args) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    with torch.no_grad():
        for m in methods:  # warm-up
            fns[m][0](100, y_test[0])
            out = fns[m][1](BATCH_SAMPLES, y_batch[:2])
            assert out.shape[:2] == (BATCH_SAMPLES, 2), out.shape
        for r in range(SINGLE_REPEATS):
            for m in (methods if r % 2 == 0 else methods[::-1]):
                best[m]["single"] = min(best[m]["single"], timed(fns[m][0], SINGLE_SAMPLES, y_test[0]))
        for r in range(2):
            for m in (methods if r % 2 == 0 else methods[::-1]):
                best[m]["batched"] = min(best[m]["batched"], timed(fns[m][1], BATCH_SAMPLES, y_batch))
    return {m: {"samples_per_second": SINGLE_SAMPLES / b["single"], "single_sample_seconds": b["single"],
                "batched_obs_per_second": len(y_batch) / b["batched"], "batched_seconds": b["batched"],
                "sampling_timed": "interleaved with " + ", ".join(x for x in methods if x != m) if len(methods) > 1
                else "alone"}
            for m, b in best.items()}


# -- parent: data, references, scoring -------------------------------------------------------------------------------
def make_observations(name: str, sim, n_test: int, seed: int):
    """Test observations ``(B, ...)`` (with their true parameters where drawn) and 1000 batch observations."""
    gen = torch.Generator().manual_seed(seed)
    if name == "gaussian_mixture":
        y_test, x_test = torch.eye(sim.num_labels)[:n_test], None
    else:
        x_test = sim.sample_prior(n_test, generator=gen)
        y_test = _simulate(sim, x_test, gen)
    x_b = sim.sample_prior(BATCH_OBS, generator=gen)
    y_batch = _simulate(sim, x_b, gen)
    return x_test, y_test, y_batch


def _simulate(sim, x, gen):
    if sim.is_set_valued:
        return sim.simulate(x, generator=gen, sizes=SET_SIZE)[0]
    return sim.simulate(x, generator=gen)


def make_reference(name: str, sim, y_test, n: int, seed: int) -> tuple:
    from sbi_inn import reference

    refs, info = [], []
    for i in range(len(y_test)):
        t0 = time.perf_counter()
        kind = SIMULATORS[name][2]
        if kind == "exact":
            gen = torch.Generator().manual_seed(seed + i)
            r = sim.sample_posterior(y_test[i], n, generator=gen)
            info.append({"kind": "exact"})
        elif kind == "likelihood_rejection":
            res = reference.likelihood_rejection(sim.forward_kinematics, sim.prior, y_test[i], n,
                                                 noise_std=sim.noise, seed=seed + i)
            r = res.samples
            info.append({"kind": "exact rejection sampling (sbi_inn.reference.likelihood_rejection)",
                         "acceptance_rate": res.acceptance_rate})
        else:
            res = reference.mcmc(sim.log_likelihood, sim.prior, y_test[i], n, seed=seed + i)
            r = res.samples
            info.append({"kind": "emcee (sbi_inn.reference.mcmc)", "steps": res.num_steps, "walkers": res.num_walkers,
                         "burn_in": res.burn_in, "thin": res.thin, "max_tau": float(res.tau.max()),
                         "acceptance_fraction": res.acceptance_fraction})
        info[-1]["seconds"] = time.perf_counter() - t0
        refs.append(r.float())
    return torch.stack(refs, 1), info


def score_c2st(samples, ref) -> list[float]:
    from threadpoolctl import threadpool_limits

    from sbi_inn.diagnostics import c2st

    with threadpool_limits(1):
        return [c2st(ref[:, i], samples[:, i], seed=0) for i in range(ref.shape[1])]


def run_worker(spec: dict, workdir: Path, timeout: float) -> dict:
    spec_path = workdir / f"spec_{spec['simulator']}_{spec['budget']}_{spec['method']}.json"
    return _common.run_worker(Path(__file__).resolve(), spec, spec_path, timeout, src=SRC)


def tables(rows: list[dict]) -> tuple[str, str]:
    head = ["simulator", "sims", "method", "C2ST", "train s", "epochs", "samples/s", "batched obs/s",
            "train ΔRSS MiB", "sample ΔRSS MiB", "peak RSS MiB"]
    lines = []
    for r in rows:
        lines.append([r["simulator"], str(r["budget"]), r["method"], fmt(r.get("c2st_mean"), ".3f"),
                      fmt(r.get("train_seconds"), ".1f"), str(r.get("epochs", "—")),
                      fmt(r.get("samples_per_second"), ",.0f"), fmt(r.get("batched_obs_per_second"), ",.0f"),
                      fmt(r.get("train_peak_rss_increase_mib"), ".0f"),
                      fmt(r.get("sample_peak_rss_increase_mib"), ".0f"), fmt(r.get("peak_rss_mib"), ".0f")])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    text = "  ".join(h.ljust(w) for h, w in zip(head, widths)) + "\n"
    text += "\n".join("  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines)
    md = "| " + " | ".join(head) + " |\n|" + "|".join(["---"] * len(head)) + "|\n"
    md += "\n".join("| " + " | ".join(l) + " |" for l in lines)
    return text, md


def compare_targets(rows: list[dict]) -> dict:
    """Per (simulator, budget): C2ST difference, training-time ratio and sampling speed-ups (ours / sbi)."""
    by = {(r["simulator"], r["budget"], r["method"]): r for r in rows}
    out, diffs = [], []
    for (s, b, m), r in by.items():
        o = by.get((s, b, "sbi"))
        if m != "sbi_inn" or o is None or "error" in r or "error" in o:
            continue
        d = r["c2st_mean"] - o["c2st_mean"]
        diffs.append(d)
        out.append({"simulator": s, "budget": b, "c2st_ours": r["c2st_mean"], "c2st_sbi": o["c2st_mean"],
                    "c2st_diff": d, "c2st_no_worse": d <= 0.0,
                    "train_time_ratio": r["train_seconds"] / o["train_seconds"],
                    "single_sampling_speedup": r["samples_per_second"] / o["samples_per_second"],
                    "batched_sampling_speedup": r["batched_obs_per_second"] / o["batched_obs_per_second"],
                    "peak_rss_ratio": r["peak_rss_mib"] / o["peak_rss_mib"]})
    summary = {"pairs": out}
    if out:
        summary.update(
            c2st_mean_diff=sum(diffs) / len(diffs),
            target_c2st_no_worse_everywhere=all(p["c2st_no_worse"] for p in out),
            target_c2st_better_on_average=sum(diffs) / len(diffs) < 0,
            target_training_no_slower=all(p["train_time_ratio"] <= 1 for p in out),
            target_sampling_5x=all(p["single_sampling_speedup"] >= 5 and p["batched_sampling_speedup"] >= 5
                                   for p in out))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: gaussian_mixture only, budgets 300 and 1000, "
                                                         "500 C2ST samples")
    ap.add_argument("--simulators", nargs="+", choices=sorted(SIMULATORS), default=None)
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="default 1000 10000")
    ap.add_argument("--num-samples", type=int, default=None, help="posterior and reference samples per test "
                                                                  "observation for C2ST (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per worker process")
    ap.add_argument("--no-snapshot", action="store_true", help="import sbi_inn from the working tree instead of a "
                                                               "snapshot copied at start")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="run only these methods (e.g. sbi_inn while tuning)")
    ap.add_argument("--fit-config", type=json.loads, default=None,
                    help="JSON dict of FitConfig fields for sbi_inn instead of its defaults (recorded in the JSON)")
    ap.add_argument("--summary", default=None, help="summary= for sbi_inn's vector observations instead of 'auto'")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker.read_text())
        Path(spec["result"]).write_text(json.dumps(time_pair(spec) if "posteriors" in spec else worker(spec)))
        return 0
    if not args.no_snapshot and not os.environ.get(SRC_ENV):
        # freeze the code under test, then run this script again on the frozen copy
        return rerun_on_snapshot(Path(__file__), SRC_ENV, sys.argv[1:] if argv is None else list(argv))

    from sbi_inn.data import simulate_to_hdf5
    from simulators import get_simulator

    torch.set_num_threads(1)
    names = args.simulators or (["gaussian_mixture"] if args.quick else list(SIMULATORS))
    budgets = args.budgets or ([300, 1000] if args.quick else [1000, 10_000])
    n_samples = args.num_samples or (500 if args.quick else 2000)
    out_path = args.out or (Path(tempfile.gettempdir()) / "vs_sbi_quick.json" if args.quick
                            else ROOT / "benchmarks" / "results" / "vs_sbi.json")
    started = time.perf_counter()
    load_start = os.getloadavg()
    digest_start = code_digest(SRC)
    rows, refs_info = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_sbi_") as tmp:
        workdir = Path(tmp)
        for name in names:
            kwargs, n_test, _ = SIMULATORS[name]
            sim = get_simulator(name, **kwargs)
            x_test, y_test, y_batch = make_observations(name, sim, n_test, args.seed + 1)
            t0 = time.perf_counter()
            ref, info = make_reference(name, sim, y_test, n_samples, args.seed + 100)
            refs_info[name] = {"per_observation": info, "seconds": time.perf_counter() - t0,
                               "y_test": y_test.reshape(len(y_test), -1).tolist(),
                               "x_true": None if x_test is None else x_test.tolist()}
            print(f"[{time.perf_counter() - started:6.0f}s] {name}: reference {n_samples} x {len(y_test)} in "
                  f"{refs_info[name]['seconds']:.1f} s ({info[0]['kind']})", flush=True)
            obs_path = workdir / f"obs_{name}.pt"
            torch.save({"y_test": y_test, "y_batch": y_batch}, obs_path)
            for budget in budgets:
                data = workdir / f"{name}_{budget}.h5"
                simulate_to_hdf5(sim, sim.prior, budget, data, seed=args.seed, show_progress=False)
                cell = []
                for method in args.methods:
                    spec = {"simulator": name, "sim_kwargs": kwargs, "budget": budget, "method": method,
                            "fit_config": args.fit_config if method == "sbi_inn" else None,
                            "summary": args.summary if method == "sbi_inn" and not sim.is_set_valued else None,
                            "data": str(data), "obs": str(obs_path), "num_samples": n_samples, "seed": args.seed,
                            "samples_out": str(workdir / f"samples_{name}_{budget}_{method}.pt"),
                            "posterior_out": str(workdir / f"posterior_{name}_{budget}_{method}.pt")}
                    load = os.getloadavg()
                    res = run_worker(spec, workdir, args.timeout)
                    row = {"simulator": name, "budget": budget, "method": method, "load_average_before": load,
                           **res}
                    if "error" not in res:
                        samples = torch.load(spec["samples_out"], weights_only=True)["samples"]
                        scores = score_c2st(samples, ref)
                        row.update(c2st=scores, c2st_mean=sum(scores) / len(scores))
                    else:
                        print(f"  ERROR {name} {budget} {method}: {res['error']}", flush=True)
                    row["load_average_after"] = os.getloadavg()
                    rows.append(row)
                    cell.append((row, spec))
                    print(f"[{time.perf_counter() - started:6.0f}s] {name} n={budget} {method}: "
                          f"C2ST {fmt(row.get('c2st_mean'), '.3f')}, train {fmt(row.get('train_seconds'), '.1f')} s "
                          f"(load {load[0]:.2f})", flush=True)
                trained = {spec["method"]: spec["posterior_out"] for row, spec in cell if "error" not in row}
                if trained:
                    pair = {"simulator": name, "budget": budget, "method": "time_pair", "obs": str(obs_path),
                            "posteriors": trained, "is_set": sim.is_set_valued}
                    timing = run_worker(pair, workdir, args.timeout)
                    for row, _ in cell:
                        row.update(timing.get(row["method"], {"sampling_error": timing.get("error")}))
                    print(f"[{time.perf_counter() - started:6.0f}s] {name} n={budget} sampling (interleaved): "
                          + ", ".join(f"{r['method']} {fmt(r.get('samples_per_second'), ',.0f')} samples/s, "
                                      f"{fmt(r.get('batched_obs_per_second'), ',.0f')} obs/s" for r, _ in cell),
                          flush=True)
    text, md = tables(rows)
    targets = compare_targets(rows)
    result = {
        "benchmark": "sbi_inn.fit_posterior (cINN, defaults) vs sbi NPE (defaults: maf)",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
                    "note": "shared machine: other jobs ran concurrently; timings are noisy"},
        "settings": {"quick": args.quick, "budgets": budgets, "simulators": names, "seed": args.seed,
                     "methods": args.methods, "fit_config_override": args.fit_config, "summary": args.summary,
                     "torch_num_threads": 1, "blas_threads": 1, "c2st_samples_per_observation": n_samples,
                     "c2st": "sbi_inn.diagnostics.c2st(reference, samples), 5-fold MLP, mean over test observations",
                     "single_sampling": f"{SINGLE_SAMPLES} samples for one observation, best of {SINGLE_REPEATS}, "
                                        "both methods loaded in one process and timed in alternation",
                     "batched_sampling": f"sample_batched(({BATCH_SAMPLES},), Y) with B={BATCH_OBS}, best of 2, "
                                         "timed in alternation like single sampling",
                     "training_time": "wall time of the whole training call incl. posterior construction; "
                                      "simulation excluded (same HDF5 file for both)",
                     "memory": "RSS of a fresh worker process per row; increase over the phase start "
                               "(VmHWM reset via /proc/self/clear_refs) and absolute peak",
                     "gaussian_sets": f"fixed set size K={SET_SIZE}; sbi gets the sets flattened",
                     "simulator_kwargs": {n: SIMULATORS[n][0] for n in names}},
        "references": refs_info,
        "rows": rows,
        "targets": targets,
        "source": {"snapshot": SRC != ROOT, "imported_from": str(SRC), "digest": digest_start,
                   "working_tree_digest_at_end": code_digest(ROOT),
                   "changed_during_run": len({digest_start, code_digest(SRC),
                                              *(r.get("source_digest", digest_start) for r in rows)}) > 1},
        "total_seconds": time.perf_counter() - started,
        "markdown": md,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print()
    print(text)
    print()
    for p in targets["pairs"]:
        print(f"{p['simulator']:<20} n={p['budget']:<6} C2ST {p['c2st_ours']:.3f} vs {p['c2st_sbi']:.3f} "
              f"({p['c2st_diff']:+.3f}), train time x{p['train_time_ratio']:.2f}, sampling x"
              f"{p['single_sampling_speedup']:.1f} (batched x{p['batched_sampling_speedup']:.1f})")
    for k in ("target_c2st_no_worse_everywhere", "target_c2st_better_on_average", "target_training_no_slower",
              "target_sampling_5x"):
        if k in targets:
            print(f"{k}: {targets[k]}")
    m = result["machine"]
    print(f"\nMarkdown for the README ({result['date'][:10]}, {m['cpu_count']} CPU cores ({m['cpu_model']}), "
          f"torch {m['torch']}, sbi {m['sbi']}, 1 torch thread, load average {load_start[0]:.1f}"
          f"-{m['load_average_end'][0]:.1f}):\n")
    print(md)
    src = result["source"]
    if src["changed_during_run"]:
        print("\nWARNING: the sbi_inn/simulators sources under test changed during the run; rows may mix code "
              "versions (see source_digest in the rows)")
    print(f"\ncode under test: digest {src['digest']} ({'snapshot' if src['snapshot'] else 'working tree'}); "
          f"working tree now {src['working_tree_digest_at_end']}")
    print(f"\nwrote {out_path} ({result['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
