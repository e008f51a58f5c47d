"""Fast tuning proxy for the cINN's defaults: held-out negative log-likelihood on fresh simulations.

For each task (the SBI-benchmark development tasks of ``sbibm_tasks.py`` and the package's own simulators) and each
configuration variant (``ens*``: an equal-weight mixture of several fits), ``fit_posterior`` trains on ``n``
simulations (data seed = training seed) and is scored by
``-mean log q(x | y)`` over 20 000 fresh pairs ``(x, y) ~ p(x) p(y | x)`` (data seed 999). This is the expected
forward KL divergence from the true posterior to ``q`` up to a constant that does not depend on ``q`` (the expected
posterior entropy), so lower is better on every task and differences are differences in expected KL, in nats. It
needs no reference posterior and no classifier, so a variant costs one training run (C2ST, which needs reference
samples and trains an MLP per observation, is what ``bench_sbibm.py`` reports; a variant worth keeping is then
confirmed there). For ``gaussian_linear`` the optimum is known: the posterior entropy, ``5 log(2 pi e 0.05) =
-0.789``.

Usage::

    python benchmarks/tune_test_nll.py TASKS VARIANTS [N] [SEEDS]
    python benchmarks/tune_test_nll.py gaussian_linear_uniform,bernoulli_glm default,do0.1,do0.2 10000 0,1

Prints one line per fit and a mean per (task, variant); the log of the runs behind ``design_notes.md`` is in
``benchmarks/results/tune_test_nll.log``. ``python benchmarks/tune_test_nll.py TASKS sbi`` scores, on the same test
pairs, the sbi posteriors (MAF and NSF at 10^4, seeds 0 and 1) that ``bench_sbibm.py`` trained and cached.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbibm_tasks import TASKS, get_task  # noqa: E402

from sbi_inn import fit_ensemble, fit_posterior  # noqa: E402
from sbi_inn.train import trimmed_mean  # noqa: E402
from simulators import get_simulator  # noqa: E402

VARIANTS = {
    "default": {},
    "do0.1": {"flow": {"dropout": 0.1}},
    "do0.2": {"flow": {"dropout": 0.2}},
    "do0.1_bs512": {"flow": {"dropout": 0.1}, "train": {"batch_size": 512}},
    "do0.1_lr5e-4": {"flow": {"dropout": 0.1}, "train": {"lr": 5e-4}},
    "do0.1_wd1e-4": {"flow": {"dropout": 0.1}, "train": {"weight_decay": 1e-4}},
    "wd1e-4": {"train": {"weight_decay": 1e-4}},
    "lr5e-4": {"train": {"lr": 5e-4}},
    "bs512": {"train": {"batch_size": 512}},
    "h128_do0.1": {"flow": {"hidden": 128, "dropout": 0.1}},
    "2layers": {"flow": {"num_layers": 2}},
    "spline": {"flow": {"coupling": "spline"}},
    "spline_do0.1": {"flow": {"coupling": "spline", "dropout": 0.1}},
    "h64": {"flow": {"hidden": 64}},
    "h64_b4": {"flow": {"hidden": 64, "num_blocks": 4}},
    "nosum": {"summary": "none"},
    "sum16": {"summary_dim": 16},
    "ema0.99": {"train": {"ema": 0.99}},
    "ema0.995": {"train": {"ema": 0.995}},
    "ens3": {"members": 3},  # fit_ensemble: equal-weight mixture of 3 default fits on the same simulations
    "ens3_do0.1": {"members": 3, "flow": {"dropout": 0.1}},
    "lin": {"precondition": "linear"},
    "lin_nosum": {"precondition": "linear", "summary": "none"},
    "shift": {"precondition": "shift"},
    "ep400": {"train": {"epochs": 400}},
    "lin_ep400": {"precondition": "linear", "train": {"epochs": 400}},
    "L2_ep400": {"flow": {"num_layers": 2}, "train": {"epochs": 400}},
    "h128L2_ep400": {"flow": {"hidden": 128, "num_layers": 2}, "train": {"epochs": 400}},
    "plat5": {"train": {"lr_schedule": "plateau", "lr_patience": 5, "epochs": 400}},
    "plat10": {"train": {"lr_schedule": "plateau", "lr_patience": 10, "epochs": 400}},
    "exp150": {"train": {"lr_schedule": "exponential", "epochs": 150}},  # the default before the plateau rule
    # fit_ensemble over two configurations on one validation split: the better one, or both mixed
    "pc_best": {"members": [{}, {"precondition": "linear"}], "combine": "best"},
    "pc_mix": {"members": [{}, {"precondition": "linear"}], "combine": "mixture"},
    "lin_ema0.99": {"precondition": "linear", "train": {"ema": 0.99}},
    # the probit map of box-bounded parameters (FitConfig.interval_map) instead of the logit map
    "probit": {"interval_map": "probit"},  # the default since the fifth session of issue 15
    "logit": {"interval_map": "logit"},  # the map before it
    "probit_lin": {"interval_map": "probit", "precondition": "linear"},
    "probit_pc_best": {"interval_map": "probit", "members": [{}, {"precondition": "linear"}], "combine": "best"},
}
TEST_SEED = 999  # data seed of the held-out pairs
TRIM = 0.01  # "trimmed": the mean without the worst 1 % of test pairs, which dominate the mean on some tasks
OWN = {"gaussian_mixture": {}, "inverse_kinematics": {"noise": 0.01}, "tissue_spectra": {}, "gaussian_sets": {},
       "ddm": {}}


def simulations(name: str, n: int, generator: torch.Generator):
    """``(prior, x, y, sizes or None)``: ``n`` prior draws and their simulations, rows with NaN/inf dropped."""
    if name in TASKS:
        task = get_task(name)
        prior, x = task.prior, task.sample_prior(n, generator)
        y, sizes = task.simulate(x, generator=generator), None
    else:
        sim = get_simulator(name, **OWN[name])
        prior, x = sim.prior, sim.sample_prior(n, generator=generator)
        out = sim.simulate(x, generator=generator)
        y, sizes = out if isinstance(out, tuple) else (out, None)
    ok = torch.isfinite(y.reshape(len(y), -1)).all(1)
    return prior, x[ok], y[ok], None if sizes is None else sizes[ok]


def held_out_pairs(name: str):
    """The 20 000 held-out pairs of every score here: ``(x, y, sizes or None)``, data seed 999."""
    _, xt, yt, st = simulations(name, 20_000, torch.Generator().manual_seed(TEST_SEED))
    return xt, yt, st


def fit_variant(data: tuple, prior, seed: int, variant: dict):
    """``fit_posterior`` with the FitConfig dict ``variant``, or ``fit_ensemble`` when it has ``members`` (a count
    or a list of member configs, each on top of the variant's other keys, mixed or the best kept by ``combine``);
    ``summary`` is passed on."""
    config = dict(variant)
    summary, members = config.pop("summary", "auto"), config.pop("members", 1)
    combine = config.pop("combine", "mixture")
    if members == 1:
        return fit_posterior(data=data, prior=prior, seed=seed, config=config, summary=summary, show_progress=False)
    if isinstance(members, list):
        members, config = [{**config, **m} for m in members], None
    return fit_ensemble(data=data, prior=prior, seed=seed, members=members, combine=combine, config=config,
                        summary=summary, show_progress=False)


def score_cached_sbi(task: str, xt, yt) -> None:
    """Test NLL of the sbi posteriors ``bench_sbibm.py`` cached for ``task`` (10^4 simulations), by their density
    estimator's ``log_prob`` (the prior's support is not applied: every test parameter lies in it)."""
    import glob

    from bench_sbibm import default_workdir

    cells = default_workdir() / "cells"
    for method in ("sbi_maf", "sbi_nsf"):
        for seed in (0, 1):
            for path in sorted(glob.glob(str(cells / f"{task}_n10000_seed{seed}_{method}_*" / "posterior.pt")))[-1:]:
                estimator = torch.load(path, weights_only=False).posterior_estimator  # bench_sbibm's own pickle
                with torch.no_grad():
                    rows = torch.cat([-estimator.log_prob(xt[i:i + 2000][None], condition=yt[i:i + 2000])[0]
                                      for i in range(0, len(xt), 2000)])
                print(f"{task:24s} n=10000  {method:14s} seed {seed}: test NLL {rows.mean().item():8.4f}  trimmed "
                      f"{trimmed_mean(rows, TRIM):8.4f}  (bench_sbibm's cached posterior)", flush=True)


def main(argv: list[str]) -> None:
    tasks, names = argv[0].split(","), argv[1].split(",")
    if names == ["sbi"]:
        for task in tasks:
            xt, yt, _ = held_out_pairs(task)
            score_cached_sbi(task, xt, yt)
        return
    n = int(argv[2]) if len(argv) > 2 else 10_000
    seeds = [int(s) for s in (argv[3] if len(argv) > 3 else "0,1").split(",")]
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # OutsideTrainingWarning for the few test pairs beyond the training range
    for task in tasks:
        xt, yt, st = held_out_pairs(task)
        for name in names:
            values, trims = [], []
            for seed in seeds:
                prior, x, y, s = simulations(task, n, torch.Generator().manual_seed(seed))
                t0 = time.time()
                post = fit_variant((x, y) if s is None else (x, y, s), prior, seed, VARIANTS[name])
                seconds = time.time() - t0
                with torch.no_grad():
                    rows = -post.log_prob(xt, yt, sizes=st)
                nll, trimmed = rows.mean().item(), trimmed_mean(rows, TRIM)
                values.append(nll)
                trims.append(trimmed)
                print(f"{task:24s} n={n:<6d} {name:14s} seed {seed}: test NLL {nll:8.4f}  trimmed {trimmed:8.4f}  "
                      f"train {seconds:5.0f}s  epochs {post.metadata['epochs_run']}", flush=True)
            print(f"{task:24s} n={n:<6d} {name:14s} MEAN {sum(values) / len(values):8.4f}  trimmed "
                  f"{sum(trims) / len(trims):8.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
