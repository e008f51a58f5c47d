"""Configurations of :func:`sbi_inn.fit_posterior`: the data settings both methods share, and the cINN's settings.

``fit_posterior(..., data_config=DataConfig(...), config=...)`` takes one :class:`DataConfig` for how simulations are
made, held and split, whatever the method, and one method configuration: :class:`FitConfig` for ``method="cinn"``
or ``sbi_inn.inn.INNConfig`` for ``method="inn"``; each carries its flow (``sbi_inn.flows.FlowConfig``) and its
optimisation (``sbi_inn.train.TrainConfig``). All are frozen dataclasses; a dict of their fields is accepted
everywhere and a wrong key raises ``TypeError`` naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sbi_inn.checks import check_types
from sbi_inn.cinn import PRECONDITIONS
from sbi_inn.flows import FlowConfig
from sbi_inn.summary import POOLS
from sbi_inn.train import TrainConfig
from sbi_inn.transforms import INTERVAL_MAPS


def override(default, d: dict, what: str):
    """``default`` (a dataclass instance) with the fields named in ``d`` replaced; unknown keys raise naming them."""
    if not isinstance(d, dict):
        raise TypeError(f"{what} must be a dict or {type(default).__name__}, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TypeError(f"{what}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return dataclasses.replace(default, **d)


def as_config(value, cls, what: str):
    """``value`` as an instance of the dataclass ``cls``: ``None`` gives the defaults, a dict overrides them."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value)
    raise TypeError(f"{what} must be a {cls.__name__} or a dict, got {type(value).__name__}")


@dataclass(frozen=True)
class DataConfig:
    """How ``fit_posterior`` makes, holds and splits its simulations (the same for ``method="cinn"`` and ``"inn"``).

    Attributes:
        chunk_size: simulations per call of the simulator (and per HDF5 chunk); with the seed it fixes which
            simulations are drawn, in memory and in a file alike (``sbi_inn.simulation``).
        pilot_size: simulations run up front to check the simulator and prior before any real work.
        max_invalid_fraction: a pilot with a larger fraction of NaN/inf outputs is an error.
        validation_fraction: fraction of the simulations held out for early stopping (0: none; training then runs
            all epochs and keeps the last weights).
        max_memory_bytes: simulation files larger than this are streamed from disk instead of loaded; the split and
            the training order are the same either way.
        fresh_simulations: train every epoch after the first on new simulations (as many as the training split,
            from the ``fresh`` stream of the seed tree; the validation split stays fixed). For cheap simulators this
            removes overfitting at no simulation cost worth counting; needs a simulator.

    Example:
        >>> DataConfig.from_dict({"validation_fraction": 0.2}).chunk_size
        10000
    """

    chunk_size: int = 10_000
    pilot_size: int = 64
    max_invalid_fraction: float = 0.5
    validation_fraction: float = 0.1
    max_memory_bytes: int = 2 * 1024**3
    fresh_simulations: bool = False

    def __post_init__(self):
        check_types(self)  # a JSON value of the wrong type is named here
        for name in ("chunk_size", "pilot_size", "max_memory_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DataConfig: {name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.max_invalid_fraction <= 1:
            raise ValueError(f"DataConfig: max_invalid_fraction must be in [0, 1], got {self.max_invalid_fraction}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"DataConfig: validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not isinstance(self.fresh_simulations, bool):
            raise TypeError(f"DataConfig: fresh_simulations must be True or False, got {self.fresh_simulations!r}")

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        return override(cls(), d, "DataConfig")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The optimisation of the cINN: batches sized to the data (sbi_inn.train.batch_size_for); the learning rate starts at
# 1e-3 and is halved, training going on from the best weights, after every 10 epochs without a validation loss 1e-3
# nats per dimension below the last counted one (TrainConfig.lr_schedule="plateau"); training stops after 20 such
# epochs, when the rate would fall below 1e-5, or at 400 epochs. The validation loss leaves out the 1 % worst rows
# (sbi_inn.train.trimmed_mean says why). Until issue 15 the rate decayed exponentially over a 150-epoch cap, which
# left SIR and Lotka-Volterra under-trained at the cap and the fits that overfit early stopped at a high rate; the
# plateau rule was better or level on all five benchmark tasks at two seeds (benchmarks/results/design_notes.md).
DEFAULT_TRAIN = TrainConfig(epochs=400, batch_size=None, lr=1e-3, lr_final=1e-5, lr_schedule="plateau", lr_patience=10,
                            lr_factor=0.5, patience=20, min_delta=1e-3, val_trim=0.01, max_time=None)
# Small simulation budgets (fewer than SMALL_DATA_ROWS training simulations) overfit: default_flow adds subnet dropout
# and training starts at twice the learning rate, decays exponentially over 150 epochs and stops after 10 epochs
# without improvement (default_train; the plateau rule, with its 10-epoch wait, is not measured there).
SMALL_DATA_ROWS = 2000
SMALL_DATA_DROPOUT = 0.1
SMALL_DATA_TRAIN = dataclasses.replace(DEFAULT_TRAIN, epochs=150, lr=2e-3, lr_schedule="exponential", patience=10)


@dataclass(frozen=True)
class FitConfig:
    """Settings of the conditional INN (``method="cinn"``); a wrong keyword raises ``TypeError``.

    Attributes:
        flow: coupling-flow architecture for ``D`` parameters and ``n`` training simulations: ``None`` (the
            default) is ``default_flow(D, n)``, a dict overrides some of its fields (``{"dropout": 0.0}``), a
            ``FlowConfig`` is used as given.
        train: optimisation: ``None`` is ``default_train(n)``, a dict overrides some of its fields
            (``{"patience": 40}`` keeps the automatic batch size and the rest), a ``TrainConfig`` is used as given;
            its ``seed`` is replaced by the ``seed`` of ``fit_posterior``.
        summary_dim: number of learned summary features (default 32; ignored for ``summary="none"``).
        summary_hidden, summary_layers, summary_activation: width, hidden layers and nonlinearity of the summary
            network (for deep sets: of each of ``psi`` and ``rho``); ``summary_layers=None`` is 2 for the MLP and 1 for
            the deep set (``sbi_inn.cinn.ConditionalINN``).
        summary_pool: the deep set's pool over set members, ``"mean_std"`` (mean and spread of the member features,
            the default) or ``"mean"`` (thesis sec. 3.8.6, eq. 3.14, alone); see ``sbi_inn.summary.DeepSetSummary``.
        spline_bins: bins of the exact 1-D spline flow used for one-parameter problems.
        precondition: ``"none"``, ``"shift"`` or ``"linear"``: the flow models the posterior's departure from a
            linear model of its mean (``"shift"``) or a linear-Gaussian model (``"linear"``), fitted by ridge
            regression on the training simulations (``sbi_inn.cinn.ConditionalINN``).
        interval_map: ``"probit"`` (the default) or ``"logit"``: how a parameter whose prior is bounded on both
            sides (a box) is mapped to the real line before the flow (``sbi_inn.transforms.SupportTransform``). The
            probit map was better on every box-prior problem measured (``benchmarks/results/design_notes.md``);
            models saved before the option use the logit map.

    Example:
        >>> cfg = FitConfig.from_dict({"flow": {"num_blocks": 4}, "train": {"epochs": 50}, "summary_dim": 16})
        >>> cfg.flow_for(6, 10_000).num_blocks, cfg.flow_for(6, 10_000).hidden, cfg.summary_dim
        (4, 64, 16)
        >>> cfg.train_for(10_000).epochs, cfg.train_for(10_000).lr, cfg.train_for(900).lr
        (50, 0.001, 0.002)
    """

    flow: FlowConfig | dict | None = None
    train: TrainConfig | dict | None = None
    summary_dim: int | None = None
    summary_hidden: int = 128
    summary_layers: int | None = None
    summary_activation: str = "relu"
    summary_pool: str = "mean_std"
    spline_bins: int = 8
    precondition: str = "none"
    interval_map: str = "probit"

    def __post_init__(self):
        check_types(self)  # a JSON value of the wrong type is named here
        if isinstance(self.flow, dict):
            override(default_flow(2), self.flow, "FitConfig.flow")  # checks keys and values; flow_for applies it
        if isinstance(self.train, dict):
            override(DEFAULT_TRAIN, self.train, "FitConfig.train")  # train_for applies it to default_train(n)
        if not isinstance(self.flow, FlowConfig | dict | None) or not isinstance(self.train, TrainConfig | dict | None):
            raise TypeError("FitConfig: flow must be a FlowConfig, a dict or None, and train a TrainConfig, a dict or "
                            "None")
        if self.summary_dim is not None and self.summary_dim < 1:
            raise ValueError(f"FitConfig: summary_dim must be >= 1 or None, got {self.summary_dim}")
        if self.summary_hidden < 1 or (self.summary_layers or 0) < 0 or self.spline_bins < 2:
            raise ValueError("FitConfig: summary_hidden >= 1, summary_layers >= 0 and spline_bins >= 2 required")
        if self.precondition not in PRECONDITIONS:
            raise ValueError(f"FitConfig: precondition must be one of {PRECONDITIONS}, got {self.precondition!r}")
        if self.interval_map not in INTERVAL_MAPS:
            raise ValueError(f"FitConfig: interval_map must be one of {INTERVAL_MAPS}, got {self.interval_map!r}")
        if self.summary_pool not in POOLS:
            raise ValueError(f"FitConfig: summary_pool must be one of {POOLS}, got {self.summary_pool!r}")

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        """Build from a (possibly nested) dict; unknown keys raise ``TypeError`` naming them."""
        return override(cls(), d, "FitConfig")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flow_for(self, param_dim: int, num_train: int | None = None) -> FlowConfig:
        """The coupling flow for ``param_dim`` parameters and ``num_train`` training simulations (see ``flow``)."""
        if isinstance(self.flow, FlowConfig):
            return self.flow
        return dataclasses.replace(default_flow(param_dim, num_train), **(self.flow or {}))

    def train_for(self, num_train: int) -> TrainConfig:
        """The optimisation settings for ``num_train`` training simulations (see ``train``)."""
        if isinstance(self.train, TrainConfig):
            return self.train
        return dataclasses.replace(default_train(num_train), **(self.train or {}))


def default_train(num_train: int) -> TrainConfig:
    """The cINN's optimisation for ``num_train`` training simulations when ``FitConfig.train`` is ``None``:
    ``DEFAULT_TRAIN`` (the plateau schedule), or below ``SMALL_DATA_ROWS`` simulations ``SMALL_DATA_TRAIN`` (learning
    rate 2e-3 decaying over 150 epochs, patience 10), which overfits less on small budgets
    (``benchmarks/results/history.md``)."""
    return SMALL_DATA_TRAIN if num_train < SMALL_DATA_ROWS else DEFAULT_TRAIN


def default_flow(param_dim: int, num_train: int | None = None) -> FlowConfig:
    """The cINN's coupling flow for ``param_dim`` parameters and ``num_train`` training simulations (``None``: many)
    when ``FitConfig.flow`` is ``None``.

    Subnets of one hidden layer of 64 units; 8 coupling blocks, or 4 for two parameters (where every block transforms
    both coordinates); below ``SMALL_DATA_ROWS`` training simulations the subnets get dropout ``SMALL_DATA_DROPOUT``.
    Chosen on ``benchmarks/bench_vs_sbi.py`` for sampling speed at equal accuracy: the condition is projected once per
    observation, so each block costs a few hundred operations per sample. The measurements behind each choice are in
    ``benchmarks/results/history.md``.
    """
    small = num_train is not None and num_train < SMALL_DATA_ROWS
    return FlowConfig(num_blocks=4 if param_dim == 2 else 8, hidden=64, num_layers=1,
                      dropout=SMALL_DATA_DROPOUT if small else 0.0)
