"""An equal-weight mixture of conditional INNs, ``q(x | y) = (1/K) sum_k q_k(x | y)``: a normalised density when each
member is one, so it keeps the exact ``log_prob`` of a single cINN (thesis ch. 3). :class:`MixtureModel` implements
the model protocol of :mod:`sbi_inn.posterior` and is wrapped, saved and loaded as an ordinary
:class:`~sbi_inn.posterior.Posterior`; :func:`sbi_inn.ensemble.fit_ensemble` trains one.

Sampling costs about one member's inverse pass per sample (each sample picks its member first and is decoded by
that member only), plus the conditions of all ``K`` members per observation; ``log_prob`` costs ``K`` forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sbi_inn.cinn import ConditionalINN, _row_seeds

__all__ = ["MixtureModel"]


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
        self._widths = [m.cond_dim for m in members]

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
        if K == 1:
            return self.members[0].decode(z, c).reshape(n, B, D)
        pick = pick.transpose(0, 1).reshape(n * B)
        obs = torch.arange(n * B, device=c.device) % B
        x = torch.empty_like(z)
        for k, (m, ck) in enumerate(zip(self.members, self._split(c))):
            rows = (pick == k).nonzero().squeeze(1)
            if rows.numel():
                x[rows] = m.decode(z[rows], ck[obs[rows]])
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
