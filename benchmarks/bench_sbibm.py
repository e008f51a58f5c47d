"""Benchmark on five tasks of the SBI benchmark: posterior accuracy per simulation (issue 15).

Tasks (Lueckmann et al. 2021, "Benchmarking simulation-based inference"): ``gaussian_linear``,
``gaussian_linear_uniform``, ``bernoulli_glm``, ``sir``, ``lotka_volterra``, re-implemented in
``benchmarks/sbibm_tasks.py`` (the benchmark's other tasks are held out as an independent check and are not here).
Observations and reference posterior samples (10 observations per task, 10 000 reference samples each) are the
benchmark's published data files, which the ``sbibm`` 1.1.0 wheel on PyPI carries: on first use the script runs
``pip download sbibm==1.1.0 --no-deps`` into a cache directory (``~/.cache/sbi_inn/sbibm-1.1.0``, or
``--sbibm-dir``) and unpacks only the data files of these five tasks; no sbibm code is imported or installed.

Methods, side by side on the *same* training simulations per (task, budget, seed):

* ``sbi_inn``: ``sbi_inn.fit_posterior(data=(x, y), prior=task.prior, seed=seed)`` with its defaults (cINN);
  ``sbi_inn_ema`` the same with ``TrainConfig.ema=0.99``; ``sbi_inn_ens3`` ``sbi_inn.fit_ensemble(..., members=3)``
  (an equal-weight mixture of three default fits); ``sbi_inn_lin`` ``FitConfig.precondition="linear"``,
  ``sbi_inn_shift`` ``"shift"``, ``sbi_inn_lin_ens3`` three ``"linear"`` fits mixed and ``sbi_inn_pcmix`` a default
  and a ``"linear"`` fit mixed; ``sbi_inn_ep400`` the defaults with a 400-epoch cap (the learning rate then decays
  over 400 epochs);
* ``sbi_maf``: sbi's ``NPE(prior)`` with its defaults (density estimator ``"maf"``);
* ``sbi_nsf``: sbi's ``NPE(prior, density_estimator="nsf")``.

The simulations of one (task, seed) are drawn in chunks of 1000 rows, each from a generator seeded by (task, seed,
chunk), so the first ``n`` rows are the same whatever the largest budget: budget 10^3 is the first 1000 rows of
budget 10^4. For every observation each trained posterior gives 10 000 samples, scored by:

* **C2ST** as the benchmark defines it (``sbibm.metrics.c2st`` of sbibm 1.1.0, re-implemented in :func:`c2st_sbibm`):
  reference samples against 10 000 posterior samples, both z-scored with the reference's mean and (unbiased)
  standard deviation, a scikit-learn ``MLPClassifier(activation="relu", hidden_layer_sizes=(10 D, 10 D),
  max_iter=10000, solver="adam", random_state=1)``, 5-fold ``KFold(shuffle=True, random_state=1)`` mean accuracy.
  ``sbi_inn.diagnostics.c2st`` is *not* this definition (stratified folds, ``max_iter=1000``, seed 0, population
  standard deviation; see :data:`C2ST_DIFFERENCES`), so the package's function is not used for this score.
* **fast C2ST** (``--c2st fast``, a cheaper stand-in that is *not* the benchmark's score): the same classifier with
  ``early_stopping=True`` (10 % of each training fold held out, stop after 10 epochs without improvement). The
  benchmark's classifier trains to convergence (about 350 epochs on 16 000 points in 10-D, 4-5 minutes on one
  core) and overfits: on two 10-D Gaussians whose means differ by one standard deviation in one coordinate (best
  possible accuracy 0.69) it scores 0.62, the early-stopping one 0.69 in 6 s. Both give 0.50 for equal
  distributions.
* **support**: fraction of posterior samples on or outside the boundary of the prior's support (for bounded priors a
  sample exactly on an edge counts: the prior density there is 0 or the edge is excluded).
* **training seconds** (the whole call incl. posterior construction, simulation excluded), **samples/s** (10 000
  samples for one observation, mean over the observations of one trained posterior).

Each training runs in its own subprocess with ``torch.set_num_threads(1)`` and one BLAS thread; C2STs run in the
parent, one at a time, with one BLAS thread. Trained posteriors, samples and scores are kept in a work directory
(``--workdir``, default ``~/.cache/sbi_inn/bench_sbibm``), keyed by task, budget, seed, method and the digest of the
code they depend on, so a later run with more observations, seeds or budgets computes only what is missing. The
results JSON is rewritten after every score, so an interrupted run keeps what it measured. The code under test
(``sbi_inn/``, ``simulators/`` and ``benchmarks/sbibm_tasks.py``) is copied to a temporary snapshot at start, as in
``bench_vs_sbi.py``.

``--check`` verifies the re-implemented tasks against the benchmark's files before any training: posterior-
predictive and true-parameter predictive checks with our simulators, and the reference samples against the exact
posterior (analytic for the two Gaussian tasks, self-normalised importance sampling with our exact likelihoods for
the other three); see :func:`check_task`. Results go to ``benchmarks/results/sbibm_check.json``.

Usage::

    python benchmarks/bench_sbibm.py --check                 # check the task re-implementations (~2 min)
    python benchmarks/bench_sbibm.py --quick                 # smoke run, a few minutes, results in a temp dir
    python benchmarks/bench_sbibm.py --budgets 1000 10000 --seeds 0 --c2st fast sbibm --c2st-minutes 30
    python benchmarks/bench_sbibm.py                         # everything (days on 2 CPU cores: see C2ST above)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC_ENV = "BENCH_SBIBM_SRC"
SRC = Path(os.environ.get(SRC_ENV) or ROOT)
for p in (SRC / "benchmarks", SRC):
    if str(p) not in sys.path[:2]:
        sys.path.insert(0, str(p))

import _common  # noqa: E402
from _common import fmt, machine_info, rerun_on_snapshot, single_thread  # noqa: E402
from sbibm_tasks import TASKS, get_task  # noqa: E402  (the snapshot's copy when running)

# sbi_inn's defaults and the options of issue 15 that the test-NLL proxy (tune_test_nll.py) favoured
SBI_INN_METHODS = {"sbi_inn": {}, "sbi_inn_ema": {"config": {"train": {"ema": 0.99}}},
                   "sbi_inn_ens3": {"members": 3}, "sbi_inn_lin": {"config": {"precondition": "linear"}},
                   "sbi_inn_shift": {"config": {"precondition": "shift"}},
                   "sbi_inn_lin_ens3": {"members": 3, "config": {"precondition": "linear"}},
                   "sbi_inn_pcmix": {"members": [{}, {"precondition": "linear"}]},
                   "sbi_inn_pcbest": {"members": [{}, {"precondition": "linear"}], "combine": "best"},
                   "sbi_inn_ep400": {"config": {"train": {"epochs": 400}}}}
METHODS = (*SBI_INN_METHODS, "sbi_maf", "sbi_nsf")
SBIBM_VERSION = "1.1.0"
NUM_OBSERVATIONS = 10
NUM_POSTERIOR_SAMPLES = 10_000
CHUNK = 1000
C2ST_KINDS = ("sbibm", "fast")
C2ST_DIFFERENCES = {
    "folds": "sbibm: KFold(5, shuffle=True, random_state=seed); sbi_inn.diagnostics.c2st: StratifiedKFold",
    "max_iter": "sbibm: 10000; sbi_inn: 1000 (both stop earlier on the training-loss tolerance, usually)",
    "seed": "sbibm: seed=1 for the classifier and the folds; sbi_inn: seed=0",
    "z_score_std": "sbibm: torch.std (unbiased, ddof=1) of the reference; sbi_inn: numpy std (ddof=0), 0 -> 1",
    "dtype": "sbibm: float32 arrays; sbi_inn: float64",
}


def code_digest(root: Path = SRC, parts=("sbi_inn", "simulators", "tasks")) -> str:
    """SHA-256 (12 hex digits) of the code under test: ``sbi_inn/``, ``simulators/`` and/or the task module."""
    patterns = {"sbi_inn": "sbi_inn/**/*.py", "simulators": "simulators/**/*.py", "tasks": "benchmarks/sbibm_tasks.py"}
    return _common.code_digest(root, [patterns[p] for p in parts])


# -- the benchmark's data files --------------------------------------------------------------------------------------
def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sbi_inn"


def default_sbibm_dir() -> Path:
    return _cache_root() / f"sbibm-{SBIBM_VERSION}"


def default_workdir() -> Path:
    """Where trained posteriors, samples, scores and training simulations are kept between runs."""
    return _cache_root() / "bench_sbibm"


def ensure_sbibm_files(directory: Path, tasks=TASKS) -> dict:
    """Make sure ``directory/<task>/num_observation_<k>/`` holds the benchmark's files for ``tasks``.

    Downloads the sbibm wheel with pip (no install, no dependencies) into ``directory/wheel`` when a task is
    missing, and unpacks only ``sbibm/tasks/<task>/files/`` of the requested tasks. Returns provenance (wheel name,
    SHA-256).
    """
    directory = Path(directory)
    marker = directory / "provenance.json"
    missing = [t for t in tasks if not (directory / t / f"num_observation_{NUM_OBSERVATIONS}").is_dir()]
    if not missing and marker.is_file():
        return json.loads(marker.read_text())
    wheel_dir = directory / "wheel"
    wheels = sorted(wheel_dir.glob(f"sbibm-{SBIBM_VERSION}-*.whl"))
    if not wheels:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        print(f"downloading sbibm=={SBIBM_VERSION} (data files only are unpacked) into {wheel_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"sbibm=={SBIBM_VERSION}", "--no-deps",
                        "--only-binary", ":all:", "-d", str(wheel_dir), "-q"], check=True)
        wheels = sorted(wheel_dir.glob(f"sbibm-{SBIBM_VERSION}-*.whl"))
    wheel = wheels[0]
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            m = re.match(r"sbibm/tasks/([a-z_]+)/files/(.+)$", name)
            if m and m.group(1) in TASKS and not name.endswith((".py", "/")):
                target = directory / m.group(1) / m.group(2)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    prov = {"wheel": wheel.name, "sha256": sha, "source": f"pip download sbibm=={SBIBM_VERSION} --no-deps",
            "unpacked": "sbibm/tasks/<task>/files/ of " + ", ".join(TASKS)}
    marker.write_text(json.dumps(prov, indent=1))
    return prov


def _csv(path: Path) -> torch.Tensor:
    import pandas as pd

    return torch.as_tensor(pd.read_csv(path).to_numpy(dtype=np.float32))


def load_reference(directory: Path, task: str, k: int) -> dict:
    """Observation ``(dim_y,)``, reference samples ``(10000, dim_x)`` and true parameters ``(dim_x,)`` of
    observation ``k``; for ``bernoulli_glm`` also the raw spike train."""
    d = Path(directory) / task / f"num_observation_{k}"
    out = {"observation": _csv(d / "observation.csv")[0], "reference": _csv(d / "reference_posterior_samples.csv.bz2"),
           "true_parameters": _csv(d / "true_parameters.csv")[0]}
    if (d / "observation_raw.csv").is_file():
        out["observation_raw"] = _csv(d / "observation_raw.csv")[0]
    return out


# -- C2ST --------------------------------------------------------------------------------------------------------------
def c2st_sbibm(reference, samples, seed: int = 1, n_folds: int = 5, early_stopping: bool = False) -> float:
    """The SBI benchmark's C2ST (``sbibm.metrics.c2st``, sbibm 1.1.0): accuracy of an MLP telling ``samples`` from
    ``reference`` (z-scored with the reference's mean and unbiased std), 5-fold shuffled ``KFold``.

    ``early_stopping=True`` gives the "fast" variant (not the benchmark's definition)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    x = torch.as_tensor(reference, dtype=torch.float32)
    y = torch.as_tensor(samples, dtype=torch.float32)
    mean, std = torch.mean(x, dim=0), torch.std(x, dim=0)
    x, y = ((x - mean) / std).numpy(), ((y - mean) / std).numpy()
    ndim = x.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * ndim, 10 * ndim), max_iter=10000, solver="adam",
                        random_state=seed, early_stopping=early_stopping)
    data = np.concatenate((x, y))
    target = np.concatenate((np.zeros((x.shape[0],)), np.ones((y.shape[0],))))
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(clf, data, target, cv=KFold(n_splits=n_folds, shuffle=True, random_state=seed),
                                 scoring="accuracy")
    return float(np.asarray(np.mean(scores)).astype(np.float32))


# -- simulations -------------------------------------------------------------------------------------------------------
def _stream_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def simulate_rows(task, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training simulations of ``(task, seed)``: chunk ``c`` of 1000 rows from its own generator."""
    xs, ys = [], []
    for c in range(math.ceil(n / CHUNK)):
        gen = torch.Generator().manual_seed(_stream_seed("sbibm", task.name, seed, c))
        x = task.sample_prior(CHUNK, generator=gen)
        xs.append(x)
        ys.append(task.simulate(x, generator=gen))
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def training_data(task, seed: int, n: int, workdir: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The first ``n`` simulations ``(x, y)`` of ``(task, seed)`` (cached in ``workdir``) and the seconds they took."""
    path = workdir / "simulations" / f"{task.name}_seed{seed}_{code_digest(parts=('tasks',))}_{n}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return d["x"], d["y"], float(d["seconds"])
    t0 = time.perf_counter()
    x, y = simulate_rows(task, seed, n)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "y": y, "seconds": seconds}, path)
    return x, y, seconds


def finite_rows(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    ok = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
    return x[ok], y[ok], int((~ok).sum())


# -- worker: train one method and sample ---------------------------------------------------------------------------



def worker(spec: dict) -> dict:
    """Train (or load) one posterior and draw ``num_samples`` samples for each observation in ``spec``."""
    single_thread()
    task = get_task(spec["task"])
    cell = Path(spec["cell"])
    method = spec["method"]
    ours = method in SBI_INN_METHODS
    post_path = cell / ("posterior.sbi" if ours else "posterior.pt")
    info_path = cell / "train.json"
    todo = [(k, y) for k, y in zip(spec["observations"], spec["y_obs"]) if not (cell / f"samples_obs{k}.pt").is_file()]
    if info_path.is_file() and not todo:
        return {**json.loads(info_path.read_text()), "loaded": True, "new_draw_seconds": {}}
    if info_path.is_file() and post_path.is_file():
        info = json.loads(info_path.read_text())
        if ours:
            from sbi_inn.posterior import load_posterior

            posterior = load_posterior(post_path, device="cpu")
        else:
            posterior = torch.load(post_path, weights_only=False)  # our own pickle, written below
        info["loaded"] = True
    else:
        d = torch.load(spec["data"], weights_only=True)
        x, y = d["x"], d["y"]
        torch.manual_seed(spec["seed"])
        t0 = time.perf_counter()
        if ours:
            import sbi_inn
            from sbi_inn import fit_ensemble, fit_posterior

            variant = SBI_INN_METHODS[method]
            if "members" in variant:
                posterior = fit_ensemble(data=(x, y), prior=task.prior, seed=spec["seed"], show_progress=False,
                                         members=variant["members"], config=variant.get("config"),
                                         combine=variant.get("combine", "mixture"))
            else:
                posterior = fit_posterior(data=(x, y), prior=task.prior, seed=spec["seed"], show_progress=False,
                                          config=variant.get("config"))
            train_seconds = time.perf_counter() - t0
            info = {"epochs": int(posterior.metadata.get("epochs_run", 0)), "sbi_inn_version": sbi_inn.__version__,
                    "inner_train_seconds": posterior.metadata.get("train_seconds"),
                    "config": posterior.metadata.get("config")}
            posterior.save(post_path)
        else:
            import sbi
            from sbi.inference import NPE
            from sbi.utils import process_prior

            prior = process_prior(task.prior)[0]
            estimator = "maf" if method == "sbi_maf" else "nsf"
            inference = NPE(prior=prior, density_estimator=estimator, show_progress_bars=False)
            net = inference.append_simulations(x, y).train()
            posterior = inference.build_posterior(net)
            train_seconds = time.perf_counter() - t0
            info = {"epochs": int(inference._summary["epochs_trained"][-1]), "sbi_version": sbi.__version__,
                    "density_estimator": estimator}
            torch.save(posterior, post_path)
        info.update(train_seconds=train_seconds, num_train_rows=int(x.shape[0]), torch_threads=torch.get_num_threads())
        info_path.write_text(json.dumps(info))
        info["loaded"] = False
    draws = {}
    for k, y_obs in todo:
        out = cell / f"samples_obs{k}.pt"
        y_obs = torch.tensor(y_obs)
        torch.manual_seed(_stream_seed("samples", spec["seed"], k) % 2**62)
        t0 = time.perf_counter()
        with torch.no_grad():
            if ours:
                s = posterior.sample((spec["num_samples"],), y_obs)
            else:
                s = posterior.sample((spec["num_samples"],), x=y_obs[None], show_progress_bars=False)
        seconds = time.perf_counter() - t0
        torch.save({"samples": s.float(), "seconds": seconds}, out)
        draws[k] = seconds
    return {**info, "new_draw_seconds": draws}


def run_worker(spec: dict, timeout: float) -> dict:
    return _common.run_worker(SRC / "benchmarks" / "bench_sbibm.py", spec, Path(spec["cell"]) / "spec.json", timeout,
                              src=SRC, env={SRC_ENV: str(SRC)})


# -- scoring -----------------------------------------------------------------------------------------------------------
def support_fraction(task, samples: torch.Tensor) -> dict:
    """Fractions of samples outside the prior's support and on its boundary (bounded dimensions only)."""
    from sbi_inn.priors import support_bounds

    lo, hi = support_bounds(task.prior)
    s = samples.double()
    lo, hi = lo.double(), hi.double()
    nonfinite = ~torch.isfinite(s).all(1)
    outside = ((s < lo) | (s > hi)).any(1) | nonfinite
    edge = ((s == lo) | (s == hi)).any(1) & ~outside
    return {"bounded": bool(torch.isfinite(lo).any() or torch.isfinite(hi).any()),
            "outside": float(outside.float().mean()), "on_edge": float(edge.float().mean()),
            "on_or_outside": float((outside | edge).float().mean()), "non_finite": float(nonfinite.float().mean())}


def aggregate(rows: list[dict], kinds) -> list[dict]:
    """Per (task, budget, method): per-seed means over observations, then mean and spread over seeds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["task"], r["budget"], r["method"]), []).append(r)
    out = []
    for (task, budget, method), rs in groups.items():
        agg = {"task": task, "budget": budget, "method": method, "seeds": sorted(r["seed"] for r in rs)}
        for kind in kinds:
            per_seed = [np.mean(list(r["c2st"][kind].values())) for r in rs if r.get("c2st", {}).get(kind)]
            obs = sorted({int(k) for r in rs for k in r.get("c2st", {}).get(kind, {})})
            agg[f"c2st_{kind}"] = float(np.mean(per_seed)) if per_seed else None
            agg[f"c2st_{kind}_seed_means"] = [float(v) for v in per_seed]
            agg[f"c2st_{kind}_spread"] = float(np.std(per_seed)) if len(per_seed) > 1 else None
            agg[f"c2st_{kind}_observations"] = obs
            agg[f"c2st_{kind}_n_scores"] = sum(len(r.get("c2st", {}).get(kind, {})) for r in rs)
        ok = [r for r in rs if "error" not in r]
        agg["train_seconds"] = float(np.mean([r["train_seconds"] for r in ok])) if ok else None
        agg["epochs"] = [r.get("epochs") for r in ok]
        rates = [r["samples_per_second"] for r in ok if r.get("samples_per_second")]
        agg["samples_per_second"] = float(np.mean(rates)) if rates else None
        sup = [v["on_or_outside"] for r in ok for v in r.get("support", {}).values()]
        agg["support_on_or_outside"] = float(np.mean(sup)) if sup else None
        agg["support_bounded"] = any(v.get("bounded") for r in ok for v in r.get("support", {}).values())
        agg["errors"] = [r["error"] for r in rs if "error" in r]
        out.append(agg)
    return out


def tables(agg: list[dict], kinds) -> tuple[str, str]:
    head = ["task", "sims", "method"]
    for kind in kinds:
        head += [f"C2ST {kind}", "obs"]
    head += ["train s", "samples/s", "on/outside support"]
    lines = []
    for a in agg:
        line = [a["task"], str(a["budget"]), a["method"]]
        for kind in kinds:
            v, s = a[f"c2st_{kind}"], a[f"c2st_{kind}_spread"]
            line.append(fmt(v, ".3f") + (f" ± {s:.3f}" if s is not None else ""))
            obs = a[f"c2st_{kind}_observations"]
            line.append(_obs_range(obs) + (f" ×{len(a['seeds'])}s" if obs and len(a["seeds"]) > 1 else ""))
        sup = a["support_on_or_outside"]
        line += [fmt(a["train_seconds"], ".1f"), fmt(a["samples_per_second"], ",.0f"),
                 ("—" if sup is None else f"{sup:.2%}") if a["support_bounded"] else "unbounded"]
        lines.append(line)
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    text = "  ".join(h.ljust(w) for h, w in zip(head, widths)) + "\n"
    text += "\n".join("  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines)
    md = "| " + " | ".join(head) + " |\n|" + "|".join(["---"] * len(head)) + "|\n"
    md += "\n".join("| " + " | ".join(l) + " |" for l in lines)
    return text, md


def _obs_range(obs: list[int]) -> str:
    if not obs:
        return "—"
    if obs == list(range(obs[0], obs[-1] + 1)):
        return f"{obs[0]}" if len(obs) == 1 else f"{obs[0]}–{obs[-1]}"
    return ",".join(map(str, obs))


# -- the --check mode --------------------------------------------------------------------------------------------------
def _mahalanobis_rank(obs: torch.Tensor, sims: torch.Tensor) -> dict:
    """Where ``obs`` falls among ``sims`` ``(n, M)``: percentile of its Mahalanobis distance under the simulations'
    mean and covariance (a small ridge for constant dimensions) and per-dimension mid-ranks and z-scores."""
    s = sims.double()
    o = obs.double()
    ok = torch.isfinite(s).all(1)
    s = s[ok]
    mean, cov = s.mean(0), torch.cov(s.T).reshape(s.shape[1], s.shape[1])
    ridge = 1e-6 * float(cov.diagonal().mean()) + 1e-12
    prec = torch.linalg.inv(cov + ridge * torch.eye(len(mean), dtype=torch.float64))

    def d2(v):
        c = v - mean
        return (c @ prec * c).sum(-1)

    d_sims, d_obs = d2(s), d2(o[None])[0]
    std = s.std(0)
    z = torch.where(std > 0, (o - mean) / std.clamp_min(1e-12), torch.where(o == mean, 0.0, math.inf))
    below, ties = (s < o).double().mean(0), (s == o).double().mean(0)
    return {"mahalanobis_percentile": float((d_sims < d_obs).double().mean() + 0.5 * (d_sims == d_obs).double().mean()),
            "max_abs_z": float(z.abs().max()), "mean_abs_z": float(z.abs().mean()),
            "dim_rank_min": float((below + 0.5 * ties).min()), "dim_rank_max": float((below + 0.5 * ties).max()),
            "n": int(len(s))}


def _unconstrained(task) -> str:
    return "log" if task.name in ("sir", "lotka_volterra") else "identity"


def importance_posterior(task, y_obs: torch.Tensor, reference: torch.Tensor, m: int, seed: int) -> dict:
    """Self-normalised importance sampling of the exact posterior ``p(x) p(y | x)`` with a multivariate t (5 d.o.f.)
    proposal fitted to the reference samples (covariance x 1.5^2; in log space for positive parameters).

    Returns the weighted mean, std, effective sample size and the proposals with normalised weights."""
    from scipy.stats import multivariate_t

    log_space = _unconstrained(task) == "log"
    z_ref = reference.double().log() if log_space else reference.double()
    loc = z_ref.mean(0).numpy()
    shape = (torch.cov(z_ref.T) * 1.5 ** 2).numpy()
    q = multivariate_t(loc=loc, shape=shape, df=5, seed=seed)
    z = torch.as_tensor(q.rvs(m)).reshape(m, -1)
    log_q = torch.as_tensor(q.logpdf(z.numpy()))
    x = z.exp() if log_space else z
    if log_space:
        log_q = log_q - z.sum(1)  # density of x = exp(z)
    log_prior = torch.full((m,), -math.inf, dtype=torch.float64)
    inside = task.prior.support.check(x.float())
    log_prior[inside] = task.prior.log_prob(x[inside].float()).double()
    log_lik = torch.full((m,), -math.inf, dtype=torch.float64)
    if inside.any():
        log_lik[inside] = task.log_likelihood(y_obs, x[inside].float()).double()
    log_w = log_prior + log_lik - log_q
    w = torch.softmax(torch.nan_to_num(log_w, nan=-math.inf), 0)
    mean = (w[:, None] * x).sum(0)
    std = ((w[:, None] * (x - mean) ** 2).sum(0)).sqrt()
    return {"mean": mean, "std": std, "ess": float(1.0 / (w ** 2).sum()), "x": x, "w": w}


def check_task(name: str, directory: Path, observations, n_ppc: int, n_is: int, c2st_observations) -> dict:
    """Checks of one re-implemented task against the benchmark's files, per observation:

    * ``true_parameter_check``: ``n_ppc`` simulations at the true parameters; the observation (made by the benchmark's
      own simulator at those parameters) should look like one more of them: its Mahalanobis percentile among them is
      uniform on [0, 1] over observations when the two simulators agree;
    * ``posterior_predictive``: the same among simulations from ``n_ppc`` reference posterior samples;
    * ``exact``: reference samples against the exact posterior: means (in posterior standard deviations) and
      standard deviations, exact moments for the Gaussian tasks, importance sampling with our likelihood otherwise;
    * ``c2st_vs_exact`` for ``c2st_observations``: the benchmark's C2ST between the reference samples and 10 000 exact
      samples (Gaussian tasks) or 10 000 importance-resampled ones.
    For ``bernoulli_glm`` also: our summary statistics of the benchmark's raw spike train equal its observation.
    """
    from scipy.stats import kstest

    task = get_task(name)
    per_obs = []
    for k in observations:
        t0 = time.perf_counter()
        ref = load_reference(directory, name, k)
        y_obs, samples, theta = ref["observation"], ref["reference"], ref["true_parameters"]
        gen = torch.Generator().manual_seed(_stream_seed("check", name, k))
        row = {"observation": k, "reference_samples": int(len(samples))}
        row["true_parameter_check"] = _mahalanobis_rank(y_obs, task.simulate(theta[None].repeat(n_ppc, 1),
                                                                             generator=gen))
        pick = torch.randperm(len(samples), generator=gen)[:n_ppc]
        row["posterior_predictive"] = _mahalanobis_rank(y_obs, task.simulate(samples[pick], generator=gen))
        row["reference_in_support"] = float(task.prior.support.check(samples).float().mean())
        ref_mean, ref_std = samples.double().mean(0), samples.double().std(0)
        exact_samples = None
        if name == "gaussian_linear":
            post = task.posterior(y_obs)
            ex_mean, ex_std, kind = post.mean, post.covariance_matrix.diagonal().sqrt(), "analytic N(y/2, 0.05 I)"
            corr = torch.corrcoef(samples.double().T)
            row["max_abs_offdiag_correlation"] = float((corr - torch.eye(len(corr), dtype=torch.float64)).abs().max())
            if k in c2st_observations:
                exact_samples = post.sample((NUM_POSTERIOR_SAMPLES,)).float()
        elif name == "gaussian_linear_uniform":
            ex_mean, ex_std = task.posterior_moments(y_obs)
            kind = "analytic truncated normal"
            if k in c2st_observations:
                exact_samples = task.sample_posterior(y_obs, NUM_POSTERIOR_SAMPLES, generator=gen)
        else:
            imp = importance_posterior(task, y_obs, samples, n_is, _stream_seed("is", name, k) % 2**32)
            ex_mean, ex_std = imp["mean"], imp["std"]
            kind = f"importance sampling, {n_is} multivariate-t proposals"
            row["importance_ess"] = imp["ess"]
            if k in c2st_observations:
                idx = torch.multinomial(imp["w"], NUM_POSTERIOR_SAMPLES, replacement=True, generator=gen)
                exact_samples = imp["x"][idx].float()
        dm = (ref_mean - ex_mean) / ex_std
        ratio = ref_std / ex_std
        row["exact"] = {"kind": kind, "mean_diff_in_std": dm.tolist(),
                        "max_abs_mean_diff_in_std": float(dm.abs().max()),
                        "std_ratio": ratio.tolist(), "std_ratio_range": [float(ratio.min()), float(ratio.max())]}
        if name == "bernoulli_glm":
            ours = task.summarize(ref["observation_raw"][None])[0]
            row["raw_summary_max_abs_diff"] = float((ours - y_obs).abs().max())
        if exact_samples is not None:
            t1 = time.perf_counter()
            row["c2st_vs_exact"] = c2st_sbibm(samples, exact_samples)
            row["c2st_seconds"] = time.perf_counter() - t1
        row["seconds"] = time.perf_counter() - t0
        per_obs.append(row)
        print(f"  {name} obs {k}: true-parameter percentile {row['true_parameter_check']['mahalanobis_percentile']:.2f}"
              f", posterior-predictive {row['posterior_predictive']['mahalanobis_percentile']:.2f}, reference vs exact:"
              f" max |mean diff| {row['exact']['max_abs_mean_diff_in_std']:.3f} sd, std ratio "
              f"{row['exact']['std_ratio_range'][0]:.3f}-{row['exact']['std_ratio_range'][1]:.3f}"
              + (f", ESS {row['importance_ess']:.0f}" if "importance_ess" in row else "")
              + (f", C2ST {row['c2st_vs_exact']:.3f}" if "c2st_vs_exact" in row else ""), flush=True)
    pct = [r["true_parameter_check"]["mahalanobis_percentile"] for r in per_obs]
    pp = [r["posterior_predictive"]["mahalanobis_percentile"] for r in per_obs]
    summary = {"true_parameter_percentiles": pct,
               "true_parameter_ks_pvalue": float(kstest(pct, "uniform").pvalue) if len(pct) > 1 else None,
               "posterior_predictive_percentiles": pp,
               "max_abs_mean_diff_in_std": max(r["exact"]["max_abs_mean_diff_in_std"] for r in per_obs),
               "std_ratio_range": [min(r["exact"]["std_ratio_range"][0] for r in per_obs),
                                   max(r["exact"]["std_ratio_range"][1] for r in per_obs)],
               "c2st_vs_exact": {r["observation"]: r["c2st_vs_exact"] for r in per_obs if "c2st_vs_exact" in r}}
    if name not in ("gaussian_linear", "gaussian_linear_uniform"):
        summary["importance_ess_min"] = min(r["importance_ess"] for r in per_obs)
    return {"task": name, "summary": summary, "per_observation": per_obs}


def run_check(args, directory: Path, provenance: dict) -> int:
    started = time.perf_counter()
    out_path = args.out or (Path(tempfile.gettempdir()) / "sbibm_check_quick.json" if args.quick
                            else ROOT / "benchmarks" / "results" / "sbibm_check.json")
    tasks = args.tasks or list(TASKS)
    obs = args.observations or list(range(1, NUM_OBSERVATIONS + 1))
    c2st_obs = args.check_c2st_observations if args.check_c2st_observations is not None else [1]
    c2st_tasks = args.check_c2st_tasks if args.check_c2st_tasks is not None else ["sir", "lotka_volterra"]
    results = []
    for name in tasks:
        print(f"[{time.perf_counter() - started:6.0f}s] checking {name}", flush=True)
        results.append(check_task(name, directory, obs, args.check_ppc, args.check_is,
                                  c2st_obs if name in c2st_tasks else []))
    result = {"check": "re-implemented sbibm tasks against the benchmark's reference files",
              "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {**machine_info(), "load_average_end": os.getloadavg()}, "sbibm_files": provenance,
              "settings": {"observations": obs, "ppc_simulations": args.check_ppc,
                           "importance_proposals": args.check_is,
                           "c2st_tasks": c2st_tasks, "c2st_observations": c2st_obs,
                           "c2st": "benchmark definition (c2st_sbibm), reference first"},
              "tasks_digest": code_digest(parts=("tasks",)), "tasks": results,
              "total_seconds": time.perf_counter() - started}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print()
    for r in results:
        s = r["summary"]
        pct = " ".join(f"{p:.2f}" for p in s["true_parameter_percentiles"])
        print(f"{r['task']:<24} true-parameter percentiles {pct}"
              f" (KS p {fmt(s['true_parameter_ks_pvalue'], '.2f')}); reference vs exact: max |mean diff| "
              f"{s['max_abs_mean_diff_in_std']:.3f} sd, std ratio {s['std_ratio_range'][0]:.3f}-"
              f"{s['std_ratio_range'][1]:.3f}" + (f", min ESS {s['importance_ess_min']:.0f}"
                                                   if "importance_ess_min" in s else "")
              + (f", C2ST {s['c2st_vs_exact']}" if s["c2st_vs_exact"] else ""))
    print(f"\nwrote {out_path} ({result['total_seconds']:.0f} s)")
    return 0


# -- the benchmark run -------------------------------------------------------------------------------------------------
def c2st_cost(kind: str, dim: int) -> float:
    """Rough seconds per score on one core (measured on this benchmark's tasks)."""
    if kind == "fast":
        return 6.0
    return 4.0 if dim <= 2 else 80.0 if dim <= 4 else 260.0


def find_cell(workdir: Path, key: str, reuse: bool) -> Path:
    """The cell directory for ``key``; with ``reuse``, a trained cell of the same task, budget, seed and method
    made with other code when this code has none (the newest one)."""
    cell = workdir / "cells" / key
    if (cell / "train.json").is_file() or not reuse:
        return cell
    stem = key.rsplit("-", 1)[0]  # same task, budget, seed, method and simulations; other method code
    others = sorted((c for c in (workdir / "cells").glob(stem + "-*") if (c / "train.json").is_file()),
                    key=lambda c: (c / "train.json").stat().st_mtime)
    return others[-1] if others else cell


def cell_key(task: str, budget: int, seed: int, method: str, digests: dict) -> str:
    code = digests["tasks"] + ("-" + digests["sbi_inn"] if method in SBI_INN_METHODS else "-" + digests["sbi"])
    return f"{task}_n{budget}_seed{seed}_{method}_{code}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="check the task re-implementations against the reference "
                                                         "files (writes benchmarks/results/sbibm_check.json)")
    ap.add_argument("--quick", action="store_true", help="smoke run: sir and gaussian_linear, budgets 300 and 1000, "
                                                         "2 observations, 2000 samples, fast C2ST; temp dir")
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=None)
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="default 1000 10000 100000")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1")
    ap.add_argument("--observations", nargs="+", type=int, default=None, help="default 1..10")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    ap.add_argument("--c2st", nargs="+", choices=C2ST_KINDS, default=None,
                    help="C2ST kinds to compute, in this order (default: sbibm)")
    ap.add_argument("--c2st-minutes", type=float, default=None,
                    help="stop computing C2STs after this many minutes (the rest stay missing; a rerun with the "
                         "same --workdir continues)")
    ap.add_argument("--c2st-order", choices=("cheap-first", "observation-major"), default="cheap-first",
                    help="cheap-first: by estimated seconds per score (sbibm C2ST ~4 s in 2-D, ~80 s in 4-D, ~260 s "
                         "in 10-D; fast ~6 s), then by observation; observation-major: in --c2st order, "
                         "observation 1 of every cell first")
    ap.add_argument("--reuse-trained", action="store_true",
                    help="use trained posteriors and samples in --workdir made by other sbi_inn code versions "
                         "(the row's cell name records which); default: retrain when the code differs")
    ap.add_argument("--num-samples", type=int, default=None, help=f"posterior samples per observation (default "
                                                                  f"{NUM_POSTERIOR_SAMPLES}, as the benchmark)")
    ap.add_argument("--sbibm-dir", type=Path, default=None, help=f"cache of the benchmark's files (default "
                                                                 f"{default_sbibm_dir()})")
    ap.add_argument("--workdir", type=Path, default=None, help="trained posteriors, samples and scores, reused by "
                                                               "later runs (default ~/.cache/sbi_inn/bench_sbibm)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per training worker")
    ap.add_argument("--no-snapshot", action="store_true", help="import the working tree instead of a snapshot")
    ap.add_argument("--check-ppc", type=int, default=2000, help="--check: simulations per predictive check")
    ap.add_argument("--check-is", type=int, default=50_000, help="--check: importance-sampling proposals")
    ap.add_argument("--check-c2st-tasks", nargs="*", choices=TASKS, default=None,
                    help="--check: tasks whose reference is also compared to exact samples by C2ST (default sir "
                         "lotka_volterra; the 10-D ones take ~5 min each)")
    ap.add_argument("--check-c2st-observations", nargs="*", type=int, default=None, help="--check: default 1")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker.read_text())
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return 0
    if not args.no_snapshot and not os.environ.get(SRC_ENV):
        # freeze the code under test; this file runs again (results go under ROOT) but imports the snapshot
        return rerun_on_snapshot(Path(__file__), SRC_ENV, sys.argv[1:] if argv is None else list(argv),
                                 benchmark_files=("sbibm_tasks.py", "bench_sbibm.py"))

    single_thread()
    sbibm_dir = args.sbibm_dir or default_sbibm_dir()
    provenance = ensure_sbibm_files(sbibm_dir)
    if args.check:
        return run_check(args, sbibm_dir, provenance)

    import sbi

    tasks = args.tasks or (["sir", "gaussian_linear"] if args.quick else list(TASKS))
    budgets = sorted(args.budgets or ([300, 1000] if args.quick else [1000, 10_000, 100_000]))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    observations = args.observations or ([1, 2] if args.quick else list(range(1, NUM_OBSERVATIONS + 1)))
    methods = args.methods or list(METHODS)
    kinds = args.c2st or (["fast"] if args.quick else ["sbibm"])
    n_samples = args.num_samples or (2000 if args.quick else NUM_POSTERIOR_SAMPLES)
    tmp = tempfile.mkdtemp(prefix="bench_sbibm_quick_") if args.quick else None
    workdir = args.workdir or (Path(tmp) if args.quick else default_workdir())
    out_path = args.out or (Path(tempfile.gettempdir()) / "sbibm_quick.json" if args.quick
                            else ROOT / "benchmarks" / "results" / "sbibm.json")
    digests = {"tasks": code_digest(parts=("tasks",)), "sbi_inn": code_digest(parts=("sbi_inn", "simulators")),
               "sbi": "sbi" + sbi.__version__}
    started = time.perf_counter()
    load_start = os.getloadavg()
    refs = {(t, k): load_reference(sbibm_dir, t, k) for t in tasks for k in observations}
    rows, sims_info = [], {}

    def save(final: bool = False):
        agg = aggregate(rows, kinds)
        text, md = tables(agg, kinds)
        result = {
            "benchmark": "sbibm tasks: sbi_inn.fit_posterior (cINN, defaults) vs sbi NPE (maf, nsf; defaults)",
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "complete": final,
            "machine": {**machine_info(), "load_average_start": load_start, "load_average_now": os.getloadavg(),
                        "note": "shared machine: other jobs may run concurrently; timings are noisy"},
            "settings": {"tasks": tasks, "budgets": budgets, "seeds": seeds, "observations": observations,
                         "methods": methods, "c2st_kinds": kinds, "c2st_minutes": args.c2st_minutes,
                         "c2st_order": args.c2st_order, "posterior_samples_per_observation": n_samples,
                         "reuse_trained": args.reuse_trained,
                         "quick": args.quick, "torch_num_threads": 1, "blas_threads": 1,
                         "c2st_sbibm": "sbibm 1.1.0 metrics.c2st: reference vs posterior samples, z-scored by the "
                                       "reference, MLP (10D, 10D) relu adam max_iter 10000 seed 1, 5-fold KFold",
                         "c2st_fast": "as c2st_sbibm but early_stopping=True (not the benchmark's definition)",
                         "c2st_differences_from_sbi_inn_diagnostics_c2st": C2ST_DIFFERENCES,
                         "simulations": f"chunks of {CHUNK} rows, one generator per (task, seed, chunk); budget n = "
                                        "the first n rows; non-finite rows dropped before training",
                         "training_time": "wall time of fit_posterior / NPE.append_simulations().train() + "
                                          "build_posterior(), in a fresh single-threaded worker process",
                         "samples_per_second": f"{n_samples} samples for one observation, mean over observations",
                         "support": "fraction of samples on the boundary of or outside the prior's support"},
            "sbibm_files": provenance, "simulations": sims_info, "aggregate": agg, "rows": rows,
            "source": {"snapshot": SRC != ROOT, "digests": digests,
                       "working_tree_digest_now": code_digest(ROOT)},
            "workdir": str(workdir), "total_seconds": time.perf_counter() - started, "markdown": md}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))
        return text, md, result

    # phase 1: simulations, training, samples
    for name in tasks:
        task = get_task(name)
        for seed in seeds:
            x_all, y_all, seconds = training_data(task, seed, max(budgets), workdir)
            print(f"[{time.perf_counter() - started:6.0f}s] {name} seed {seed}: {max(budgets)} simulations "
                  f"({seconds:.1f} s to simulate)", flush=True)
            for budget in budgets:
                data_path = workdir / "simulations" / f"{name}_seed{seed}_{digests['tasks']}_train{budget}.pt"
                x, y, dropped = finite_rows(x_all[:budget], y_all[:budget])
                sims_info[f"{name}/seed{seed}/n{budget}"] = {"rows": budget, "dropped_non_finite": dropped,
                                                             "simulation_seconds_all_rows": seconds}
                if not data_path.is_file():
                    torch.save({"x": x, "y": y}, data_path)
                for method in methods:
                    cell = find_cell(workdir, cell_key(name, budget, seed, method, digests), args.reuse_trained)
                    cell.mkdir(parents=True, exist_ok=True)
                    spec = {"task": name, "budget": budget, "seed": seed, "method": method, "cell": str(cell),
                            "data": str(data_path), "num_samples": n_samples, "observations": observations,
                            "y_obs": [refs[(name, k)]["observation"].tolist() for k in observations]}
                    load = os.getloadavg()
                    res = run_worker(spec, args.timeout)
                    row = {"task": name, "budget": budget, "seed": seed, "method": method, "cell": cell.name,
                           "load_average_before": load, "load_average_after": os.getloadavg(), **res}
                    if "error" not in res:
                        row["support"], secs = {}, []
                        for k in observations:
                            d = torch.load(cell / f"samples_obs{k}.pt", weights_only=True)
                            row["support"][str(k)] = support_fraction(task, d["samples"])
                            secs.append(float(d["seconds"]))
                        row["sample_seconds"] = secs
                        row["samples_per_second"] = float(np.mean([n_samples / s for s in secs]))
                        row["c2st"] = {kind: {} for kind in kinds}
                    else:
                        print(f"  ERROR {name} {budget} seed {seed} {method}: {res['error']}", flush=True)
                    rows.append(row)
                    print(f"[{time.perf_counter() - started:6.0f}s] {name} n={budget} seed {seed} {method}: train "
                          f"{fmt(row.get('train_seconds'), '.1f')} s{' (cached)' if row.get('loaded') else ''}, "
                          f"{fmt(row.get('samples_per_second'), ',.0f')} samples/s, on/outside support "
                          f"{np.mean([v['on_or_outside'] for v in row.get('support', {}).values()] or [np.nan]):.4f}"
                          f" (load {load[0]:.2f})", flush=True)
                    save()

    # phase 2: C2ST, cached per (cell, observation, kind)
    jobs = []
    for row in rows:
        if "error" in row:
            continue
        dim = get_task(row["task"]).dim_x
        for k in observations:
            for ki, kind in enumerate(kinds):
                key = (c2st_cost(kind, dim), k) if args.c2st_order == "cheap-first" else (ki, k, dim)
                jobs.append((key + (tasks.index(row["task"]), row["budget"], row["seed"], methods.index(row["method"])),
                             row, k, kind))
    jobs.sort(key=lambda j: j[0])
    c2st_started = time.perf_counter()
    skipped = 0
    for _, row, k, kind in jobs:
        cell = workdir / "cells" / row["cell"]
        cache = cell / f"c2st_{kind}_obs{k}.json"
        if cache.is_file():
            row["c2st"][kind][str(k)] = json.loads(cache.read_text())["c2st"]
            continue
        if args.c2st_minutes is not None and time.perf_counter() - c2st_started > 60 * args.c2st_minutes:
            skipped += 1
            continue
        samples = torch.load(cell / f"samples_obs{k}.pt", weights_only=True)["samples"]
        ref = refs[(row["task"], k)]["reference"][:n_samples]  # all 10 000 unless --num-samples is smaller
        t0 = time.perf_counter()
        finite = torch.isfinite(samples).all(1)
        value = c2st_sbibm(ref, samples[finite], early_stopping=kind == "fast")
        seconds = time.perf_counter() - t0
        cache.write_text(json.dumps({"c2st": value, "seconds": seconds, "kind": kind, "observation": k,
                                     "dropped_non_finite": int((~finite).sum()),
                                     "load_average": os.getloadavg()}))
        row["c2st"][kind][str(k)] = value
        row.setdefault("c2st_seconds", {}).setdefault(kind, {})[str(k)] = seconds
        print(f"[{time.perf_counter() - started:6.0f}s] C2ST {kind} {row['task']} n={row['budget']} seed "
              f"{row['seed']} {row['method']} obs {k}: {value:.3f} ({seconds:.0f} s)", flush=True)
        save()
    if skipped:
        print(f"{skipped} C2ST scores left out by --c2st-minutes {args.c2st_minutes}", flush=True)
    text, md, result = save(final=skipped == 0)
    result["c2st_left_out"] = skipped
    out_path.write_text(json.dumps(result, indent=1))
    print()
    print(text)
    m = result["machine"]
    print(f"\n{m['cpu_count']} CPU cores ({m['cpu_model']}), torch {m['torch']}, sbi {m['sbi']}, one thread per "
          f"process, load average {load_start[0]:.1f}-{m['load_average_now'][0]:.1f}; seeds {seeds}, observations "
          f"{_obs_range(observations)}\n")
    print(md)
    print(f"\nwrote {out_path} ({result['total_seconds']:.0f} s); work directory {workdir}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
