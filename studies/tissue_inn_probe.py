"""One bidirectional-INN setting on the tissue-oxygenation data, scored by calibration error: the probes behind the
INN rows of ``studies/tissue_oxygenation.py`` (``studies/results/tissue_oxygenation/notes.md``).

Trains ``fit_posterior(method="inn")`` on the study's 15 000 training simulations (the same seed) with the study's
INN settings updated by ``--config`` (an ``INNConfig`` dict), either on ``x -> y`` as the study's ``INN`` row or,
with ``--noise-as-parameters``, on ``[x, eps] -> y`` as its ``INN, noise as parameters`` row. It then scores the
median calibration error over 99 levels and the 6 parameters (as the study) on ``--num-obs`` observations drawn
with ``--obs-seed``: the default ``55555`` is a validation set apart from the study's test set (seed 10 000),
so settings chosen here are not tuned on the test set. Prints one line and appends it as JSON to ``--log``.

Usage::

    python studies/tissue_inn_probe.py --noise-as-parameters --epochs 120 --config '{"w_kl": 3.0}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tissue_oxygenation as study  # noqa: E402

from sbi_inn import diagnostics, fit_posterior  # noqa: E402
from simulators import get_simulator  # noqa: E402

LOG = Path(__file__).resolve().parent / "results" / "tissue_oxygenation" / "inn_probes.jsonl"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise-as-parameters", action="store_true", help="train on [x, eps] (the study's new row)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--config", default="{}", help="INNConfig dict applied over the row's settings")
    p.add_argument("--obs-seed", type=int, default=55_555, help="seed of the scored observations")
    p.add_argument("--num-obs", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="the study's seed (training data and fit)")
    p.add_argument("--log", default=str(LOG))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sim = get_simulator("tissue_spectra")
    g = torch.Generator().manual_seed(args.seed + study.THESIS_BUDGET)  # the study's training simulations
    x = sim.sample_prior(study.THESIS_BUDGET, generator=g)
    y = sim.simulate(x, generator=g)
    # the study's own settings of the row at the thesis budget, with --epochs
    row_args = argparse.Namespace(budgets=[study.THESIS_BUDGET], epochs_inn=args.epochs, epochs_inn_noise=args.epochs)
    if args.noise_as_parameters:
        data, prior = (torch.cat([x, study.noise_draws(sim, x, y)], 1), y), study.noise_prior(sim)
        config = study.inn_noise_config(row_args, study.THESIS_BUDGET)
    else:
        data, prior = (x, y), sim.prior
        config = study.inn_config(row_args, study.THESIS_BUDGET, {})
    change = json.loads(args.config)
    config = {**config, **change, "train": {**config["train"], **change.get("train", {})}}
    t0 = time.perf_counter()
    post = fit_posterior(data=data, prior=prior, method="inn", seed=args.seed, config=config, show_progress=False)
    train_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(args.obs_seed)
    x_obs = sim.sample_prior(args.num_obs, generator=gen)
    y_obs = sim.simulate(x_obs, generator=gen)
    s = post.sample_batched((args.num_samples,), y_obs, seed=args.obs_seed + 1)[..., :sim.param_dim].cpu()
    cal = diagnostics.calibration_summary(s, x_obs)  # 99 levels, pooled over the parameters, as the study
    row = {"noise_as_parameters": args.noise_as_parameters, "epochs": args.epochs, "config": change,
           "obs_seed": args.obs_seed, "num_obs": args.num_obs, "train_s": round(train_s, 1),
           "calibration_error": round(100 * cal["median"], 3),
           "signed_by_parameter": [round(float(v), 4) for v in cal["signed_mean_per_parameter"]]}
    print(json.dumps(row), flush=True)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
