"""Ensembles of conditional INNs: several flows trained in one call on the same simulations, then mixed with equal
weights or the best one kept by validation loss.

An equal-weight mixture ``q(x | y) = (1/K) sum_k q_k(x | y)`` of normalised densities is a normalised density, so the
mixture keeps the exact ``log_prob`` of a single cINN (thesis ch. 3) and the posterior API is unchanged:
:class:`MixtureModel` implements the model protocol of :mod:`sbi_inn.posterior` and is wrapped in an ordinary
:class:`~sbi_inn.posterior.Posterior`, which saves and loads it like any other.

Cost: training is ``K`` times that of one fit (the members train one after another on the same simulations; no
extra simulations). Sampling costs about one member's inverse pass per sample (each sample picks its member first and
is decoded by that member only), plus the conditions of all ``K`` members per observation; ``log_prob`` costs ``K``
forward passes.

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
from torch import Tensor, nn

from sbi_inn.cinn import ConditionalINN, _row_seeds
from sbi_inn.config import DataConfig, FitConfig, as_config
from sbi_inn.flows import CouplingFlow
from sbi_inn.posterior import Posterior, resolve_device
from sbi_inn.simulation import SeedTree, check_seed

__all__ = ["MixtureModel", "fit_ensemble"]

COMBINE = ("mixture", "best")


class MixtureModel(nn.Module):
    """Equal-weight mixture of conditional INNs with the same parameters, observations and prior support.

    Implements the :mod:`sbi_inn.posterior` model protocol: ``condition`` concatenates the members' conditions,
    ``log_prob_given`` is ``logsumexp_k log q_k - log K``, ``sample_given`` draws each sample's member uniformly.

    Args:
        members: at least one :class:`~sbi_inn.cinn.ConditionalINN` (e.g. ``posterior.model`` of several fits).
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("MixtureModel: needs at least one member")
        for k, m in enumerate(members):
            if not isinstance(m, ConditionalINN):
                raise TypeError(f"MixtureModel: member {k} is a {type(m).__name__}; only conditional INNs "
                                "(method='cinn') can be mixed")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            same = (m.param_dim == first.param_dim and tuple(m.obs_shape) == tuple(first.obs_shape)
                    and m.is_set_valued == first.is_set_valued
                    and torch.equal(m.support.lo, first.support.lo) and torch.equal(m.support.hi, first.support.hi))
            if not same:
                raise ValueError(f"MixtureModel: member {k} differs from member 0 in its parameters, observations or "
                                 "prior support; members must be fits of the same problem")
        self.members = nn.ModuleList(members)
        self.param_dim, self.obs_shape, self.is_set_valued = first.param_dim, first.obs_shape, first.is_set_valued
        self.support = first.support
        self.flow_config = first.flow_config
        self.summary_kind = first.summary_kind
        self._widths = [m.summary_dim for m in members]

    @property
    def num_members(self) -> int:
        return len(self.members)

    def _split(self, c: Tensor) -> list[Tensor]:
        return list(torch.split(c, self._widths, dim=1))

    # -- the Posterior protocol ----------------------------------------------------------------------------------
    def condition(self, y: Tensor, sizes: Tensor | None = None) -> Tensor:
        """The members' conditions side by side, ``(B, sum_k C_k)``."""
        return torch.cat([m.condition(y, sizes) for m in self.members], dim=1)

    def log_prob_given(self, x: Tensor, c: Tensor) -> Tensor:
        """``log (1/K) sum_k q_k(x | y)`` ``(N,)`` for ``x`` ``(N, D)``, ``c`` ``(N, C)`` or ``(1, C)``."""
        logq = torch.stack([m.log_prob_given(x, ck) for m, ck in zip(self.members, self._split(c))])
        return torch.logsumexp(logq, 0) - math.log(self.num_members)

    def sample_given(self, c: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``(n, B, D)`` for each of the ``B`` conditions ``c``.

        Each observation draws, from its own generator seeded in observation order (as
        :meth:`ConditionalINN.sample_given`, so chunking does not change the samples), its latents and then each
        sample's member; a one-member mixture draws exactly its member's samples.
        """
        B, D, K = c.shape[0], self.param_dim, self.num_members
        z = torch.empty(B, n, D, device=c.device, dtype=c.dtype)
        pick = torch.zeros(B, n, dtype=torch.long, device=c.device)
        gen = torch.Generator(device=c.device)
        for b, seed in enumerate(_row_seeds(generator, B)):
            gen.manual_seed(seed)
            torch.randn(n, D, generator=gen, out=z[b])
            if K > 1:
                torch.randint(K, (n,), generator=gen, out=pick[b])
        z = z.transpose(0, 1).reshape(n * B, D)  # rows (n, B): row r belongs to observation r % B
        pick = pick.transpose(0, 1).reshape(n * B)
        obs = torch.arange(n * B, device=c.device) % B
        x = torch.empty_like(z)
        for k, (m, ck) in enumerate(zip(self.members, self._split(c))):
            rows = (pick == k).nonzero().squeeze(1) if K > 1 else None
            if rows is None:
                x = _decode(m, z, ck)
            elif rows.numel():
                x[rows] = _decode(m, z[rows], ck[obs[rows]])
        return x.reshape(n, B, D)

    # -- configuration ----------------------------------------------------------------------------------------
    def config(self) -> dict:
        """JSON description; :meth:`from_config` rebuilds an untrained twin (weights: ``members.<k>.*``)."""
        return {"type": "mixture", "members": [m.config() for m in self.members]}

    @classmethod
    def from_config(cls, config: dict, summary: nn.Module | None = None) -> MixtureModel:
        if config.get("type") != "mixture":
            raise ValueError(f"MixtureModel.from_config: not a mixture configuration (type {config.get('type')!r})")
        if summary is not None:
            raise ValueError("summary= does not apply to a mixture posterior (its members' summaries are stored)")
        members = config.get("members")
        if not isinstance(members, list) or not members:
            raise ValueError("MixtureModel.from_config: 'members' must be a non-empty list of cinn configurations")
        return cls([ConditionalINN.from_config(m) for m in members])


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

    Returns:
        A :class:`~sbi_inn.posterior.Posterior` over a :class:`MixtureModel` (``combine="mixture"``) or over the kept
        member's model; ``metadata["ensemble"]`` records the members' seeds, configurations, best validation losses
        and training seconds.
    """
    from sbi_inn.fit import _fit, _training_data  # the one fit path; imported here as fit.py builds on posterior.py

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


def _decode(member: ConditionalINN, z: Tensor, c: Tensor) -> Tensor:
    """Parameters ``(N, D)`` of latents ``z`` ``(N, D)`` under conditions ``c`` ``(N, C)`` (or ``(B, C)``, ``B | N``):
    the inverse pass of :meth:`ConditionalINN.sample_given` without its noise."""
    if isinstance(member.flow, CouplingFlow):
        v = member.flow.sample_inverse(z, c)  # inverse(z, c, jac=False)[0] by the fast sampling path
    else:
        v, _ = member.flow.inverse(z, c, jac=False)
    return member.support(member.x_standardize.inverse(v))


def _best_val(posterior: Posterior) -> float:
    """The lowest validation loss of a fit's history (the weights it kept); ``inf`` without validation."""
    vals = [r["val_loss"] for r in posterior.metadata["history"] if r.get("val_loss") is not None]
    return float(min(vals)) if vals else math.inf
