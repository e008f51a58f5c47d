"""Would an early choice of the preconditioner pick the same fit as training both to the end?

For each SBI-benchmark task and training seed, fits the cINN with the defaults and with ``precondition="linear"``
on the same 10^4 training simulations as ``bench_sbibm.py`` (its cached files) and records both validation-loss
histories. It prints, per (task, seed), which fit has the lower best-so-far validation loss after ``--after``
epochs and which at the end (the choice ``fit_ensemble(..., combine="best")`` makes), and the cost of training
both relative to the default alone. Results: ``benchmarks/results/preconditioner_race.json``.

Usage::

    python benchmarks/preconditioner_race.py                       # five tasks, seeds 0 and 1 (~15 min, one thread)
    python benchmarks/preconditioner_race.py --tasks sir --seeds 0 --after 5 10 20
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_sbibm  # noqa: E402
from _common import machine_info, write_json  # noqa: E402
from sbibm_tasks import get_task  # noqa: E402

from sbi_inn import fit_posterior  # noqa: E402

TASKS = ("gaussian_linear", "gaussian_linear_uniform", "bernoulli_glm", "sir", "lotka_volterra")
MEMBERS = {"default": {}, "linear": {"precondition": "linear"}}
RESULTS = Path(__file__).resolve().parent / "results" / "preconditioner_race.json"


def histories(task_name: str, seed: int, budget: int) -> dict:
    """Both fits' validation losses per epoch and training seconds on the cached simulations of (task, seed)."""
    task = get_task(task_name)
    x, y, _ = bench_sbibm.training_data(task, seed, budget, bench_sbibm.default_workdir())
    x, y, _ = bench_sbibm.finite_rows(x, y)
    out = {}
    for name, config in MEMBERS.items():
        t0 = time.perf_counter()
        post = fit_posterior(data=(x, y), prior=task.prior, seed=seed, config=config, show_progress=False)
        out[name] = {"seconds": time.perf_counter() - t0,
                     "val_loss": [r["val_loss"] for r in post.metadata["history"]]}
    return out


def choice(fits: dict, epochs: int | None) -> str:
    """The member with the lowest best-so-far validation loss after ``epochs`` epochs (``None``: at the end)."""
    return min(fits, key=lambda k: min(fits[k]["val_loss"][:epochs] if epochs else fits[k]["val_loss"]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget", type=int, default=10_000)
    p.add_argument("--after", nargs="+", type=int, default=[5, 10, 20], help="epochs of the early choice")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    print("| task | seed | " + " | ".join(f"after {e}" for e in args.after) + " | at the end | both / default |")
    print("|---" * (len(args.after) + 4) + "|")
    for task_name in args.tasks:
        for seed in args.seeds:
            fits = histories(task_name, seed, args.budget)
            row = {"task": task_name, "seed": seed, "fits": fits, "final": choice(fits, None),
                   "early": {str(e): choice(fits, e) for e in args.after},
                   "cost_ratio": sum(f["seconds"] for f in fits.values()) / fits["default"]["seconds"]}
            rows.append(row)
            print(f"| {task_name} | {seed} | " + " | ".join(row["early"][str(e)] for e in args.after)
                  + f" | {row['final']} | {row['cost_ratio']:.2f} |", flush=True)
    result = {"benchmark": __doc__.splitlines()[0], "machine": machine_info(), "budget": args.budget,
              "members": MEMBERS, "rows": rows}
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
