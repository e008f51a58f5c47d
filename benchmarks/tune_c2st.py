"""Tuning check by the benchmark's own score: one cINN setting on one SBI-benchmark task, scored by C2ST and NLL.

Trains ``fit_posterior`` (or ``fit_ensemble`` when the setting has ``members``) on the same training simulations
``bench_sbibm.py`` uses for (task, seed, budget) (its cached ``simulations/`` files, made on first use), then scores
it by the fast C2ST of ``bench_sbibm.c2st_sbibm`` (10 000 samples per observation, seeded by the observation's
number, against the benchmark's reference samples) on observations 1-10 and by the held-out NLL of
``tune_test_nll.py`` (20 000 fresh pairs, data seed 999). It prints one line: the mean C2ST over observations 1-10
and over 1-3 (the subset the earlier fast runs used), the NLL and its 1 % trimmed mean, training seconds and epochs,
and the C2ST of each observation. sbi is not trained here: compare with ``bench_sbibm.py`` runs of the same
(task, seed, budget), whose simulations these are.

Usage::

    python benchmarks/tune_c2st.py TASK NAME CONFIG_JSON SEED [BUDGET]
    python benchmarks/tune_c2st.py sir plateau10 '{"train": {"lr_schedule": "plateau", "lr_patience": 10}}' 0

``CONFIG_JSON`` is a ``FitConfig`` dict (``{}``: the defaults), optionally with ``"members"`` (and ``"combine"``) for
``fit_ensemble`` and ``"summary"``, as the variants of ``tune_test_nll.py`` (``fit_variant``).
The lines behind ``design_notes.md`` are in ``benchmarks/results/tune_c2st.log``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_sbibm  # noqa: E402
from sbibm_tasks import get_task  # noqa: E402
from tune_test_nll import TRIM, fit_variant, held_out_pairs  # noqa: E402

from sbi_inn.train import trimmed_mean  # noqa: E402

OBSERVATIONS = range(1, 11)


def main(argv: list[str]) -> None:
    task_name, name, config, seed = argv[0], argv[1], json.loads(argv[2]), int(argv[3])
    budget = int(argv[4]) if len(argv) > 4 else 10_000
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # OutsideTrainingWarning for the few test pairs beyond the training range
    task = get_task(task_name)
    x, y, _ = bench_sbibm.training_data(task, seed, budget, bench_sbibm.default_workdir())
    x, y, _ = bench_sbibm.finite_rows(x, y)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    post = fit_variant((x, y), task.prior, seed, config)
    seconds = time.perf_counter() - t0
    xt, yt, _ = held_out_pairs(task_name)
    with torch.no_grad():
        rows = -post.log_prob(xt, yt)
    files = bench_sbibm.default_sbibm_dir()
    bench_sbibm.ensure_sbibm_files(files)
    scores = []
    for k in OBSERVATIONS:
        ref = bench_sbibm.load_reference(files, task_name, k)
        samples = post.sample((bench_sbibm.NUM_POSTERIOR_SAMPLES,), ref["observation"], seed=k)
        scores.append(bench_sbibm.c2st_sbibm(ref["reference"], samples, early_stopping=True))
    print(f"{task_name:24s} {name:20s} n={budget} seed {seed} C2ST1-10 {sum(scores) / len(scores):.3f} "
          f"(1-3 {sum(scores[:3]) / 3:.3f}) NLL {rows.mean():.4f} trim {trimmed_mean(rows, TRIM):.4f} "
          f"train {seconds:.0f}s ep {post.metadata.get('epochs_run')} | " + " ".join(f"{c:.3f}" for c in scores),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
