"""Ensembles of conditional INNs: several flows trained in one call on the same simulations, then mixed with equal
weights or the best one kept by validation loss.

The mixture (:class:`sbi_inn.mixture.MixtureModel`) keeps the exact density and the posterior API of a single cINN.
Cost: training is ``K`` times that of one fit (the members train one after another on the same simulations; no
extra simulations); sampling about that of one member, ``log_prob`` ``K`` times one member's (``sbi_inn.mixture``).

Members differ by their seed (``members=K``: the fit's own seed for the first, so member 0 is exactly
``fit_posterior(..., seed=seed)``, then seeds from the ``ensemble`` stream of the seed tree), which changes their
initialisation, shuffling and training/validation split; or by their configuration (``members=[config, ...]``, all
with the fit's seed and hence the same split). ``combine="best"`` keeps the member of lowest best validation loss;
it needs a shared validation split, so it takes a list of configurations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from sbi_inn.config import DataConfig, FitConfig, as_config
from sbi_inn.fit import _fit, _training_data  # the one fit path
from sbi_inn.mixture import MixtureModel
from sbi_inn.posterior import Posterior, resolve_device
from sbi_inn.simulation import SeedTree, check_seed

__all__ = ["fit_ensemble"]

COMBINE = ("mixture", "best")


def fit_ensemble(simulate: Callable | None = None, prior=None, *, num_simulations: int | None = None, data=None,
                 members: int | Sequence = 3, combine: str = "mixture", summary: str = "auto",
                 device: str | torch.device = "auto", seed: int = 0, config=None, data_config=None,
                 show_progress: bool = True) -> Posterior:
    """Train several conditional INNs on the same simulations and mix them (or keep the best).

    Args:
        simulate, prior, num_simulations, data, summary, device, data_config, show_progress: as for
            :func:`sbi_inn.fit_posterior` (``method="cinn"``); the simulations are made or read once.
        members: ``K >= 1`` (the same configuration ``config`` with ``K`` seeds) or a list of configurations
            (:class:`~sbi_inn.config.FitConfig` or dicts, each trained with ``seed``).
        combine: ``"mixture"`` (equal weights) or ``"best"`` (the member of lowest best validation loss; needs a
            list of configurations, which share the validation split).
        seed: root of the seed tree; member 0 trains with ``seed`` itself, member ``k`` of ``members=K`` with
            ``SeedTree(seed).seed("ensemble", k)``.
        config: the configuration of every member for ``members=K`` (``None``: the defaults).

    Members are not checkpointed (there is no ``checkpoint_dir``): an interrupted call trains them again, on the
    same simulations when ``data`` names a file (which resumes as in ``fit_posterior``).

    Returns:
        A :class:`~sbi_inn.posterior.Posterior` over a :class:`MixtureModel` (``combine="mixture"``) or over the kept
        member's model; ``metadata["ensemble"]`` records the members' seeds, configurations, best validation losses
        and training seconds.
    """
    seed = check_seed(seed)
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    if isinstance(members, bool) or not isinstance(members, (int, list, tuple)):
        raise TypeError(f"members must be an integer K >= 1 or a list of configurations, got {members!r}")
    if isinstance(members, int):
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if combine == "best":
            raise ValueError("combine='best' compares validation losses, which needs one validation split: give a "
                             "list of configurations (members=[config_a, config_b, ...]), trained with one seed")
        tree = SeedTree(seed)
        plan = [(seed if k == 0 else tree.seed("ensemble", k), as_config(config, FitConfig, "config"))
                for k in range(members)]
    else:
        if config is not None:
            raise TypeError("give the configurations in members=[...] or one config= with members=K, not both")
        if not members:
            raise ValueError("members is an empty list")
        plan = [(seed, as_config(m, FitConfig, f"members[{k}]")) for k, m in enumerate(members)]
    dconf = as_config(data_config, DataConfig, "data_config")
    dev = resolve_device(device)
    sims = _training_data(simulate, prior, num_simulations, data, dconf, seed, show_progress)
    fits = [_fit(sims, "cinn", cfg, dconf, summary, dev, member_seed, show_progress, None)
            for member_seed, cfg in plan]
    records = [{"seed": s, "config": f.metadata["config"], "best_val_loss": _best_val(f),
                "train_seconds": f.metadata["train_seconds"], "epochs_run": f.metadata["epochs_run"]}
               for (s, _), f in zip(plan, fits)]
    info = {"combine": combine, "members": records,
            "train_seconds": sum(r["train_seconds"] for r in records)}
    if combine == "best":
        kept = min(range(len(fits)), key=lambda k: records[k]["best_val_loss"])
        chosen = fits[kept]
        chosen.metadata["ensemble"] = {**info, "kept": kept}
        return chosen
    model = MixtureModel([f.model for f in fits])
    first = fits[0]
    metadata = {**first.metadata, "method": "cinn_mixture", "ensemble": info,
                "train_seconds": info["train_seconds"], "history": first.metadata["history"]}
    return Posterior(model, param_names=first.param_names, obs_shape=first.obs_shape,
                     is_set_valued=first.is_set_valued, metadata=metadata)


def _best_val(posterior: Posterior) -> float:
    """The lowest validation loss of a fit's history (the weights it kept); ``inf`` without validation."""
    vals = [r["val_loss"] for r in posterior.metadata["history"] if r.get("val_loss") is not None]
    return float(min(vals)) if vals else math.inf
