"""A short, resumable training loop shared by the cINN and the bidirectional INN.

Adam with an exponentially decaying learning rate (thesis app. B.5.1: "decaying learning rate from 1e-3 to 1e-5"),
gradient-norm clipping (thesis sec. 3.5: "vital for the stability"; the thesis gives no norm, the default of 8 comes
from the authors' public code), non-finite losses skipped instead of corrupting the weights, early stopping on a
validation split, a checkpoint after every epoch holding the optimizer state, so an interrupted run resumes where it
stopped and ends with the same weights as an uninterrupted one.

Every epoch draws its shuffling and the noise the loss needs from the ``train`` stream of the seed tree
(``sbi_inn.simulation.SeedTree(seed)``, epoch ``e``): the loss gets a seeded ``torch.Generator`` in its
:class:`Step`, which is what makes resumed and uninterrupted runs identical. Subnet dropout, which can only draw
from torch's global RNG, runs inside a forked global state seeded from the same stream, so the caller's global
random state is never changed.

With ``distributed=`` (a :class:`sbi_inn.ddp.Distributed`) the same loop runs data-parallel: each rank takes a
disjoint shard of every batch (:func:`epoch_batches`), gradients are all-reduced through DDP, and every decision
(skipped steps, validation loss, schedule, early stopping) is taken on all-reduced numbers; ``sbi_inn.ddp`` explains
the rest.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sbi_inn.checks import check_types
from sbi_inn.simulation import SeedTree

if TYPE_CHECKING:
    from sbi_inn.ddp import Distributed


@dataclass(frozen=True)
class Step:
    """Where in training a loss is evaluated, and the generator its noise comes from.

    Attributes:
        epoch: the epoch (from 0). batch: the batch within it. num_batches: batches per training epoch.
        generator: a seeded ``torch.Generator`` on the training device for any noise the loss draws.
    """

    epoch: int
    batch: int
    num_batches: int
    generator: torch.Generator

    @property
    def progress(self) -> float:
        """Epochs of training done before this step, fractional (e.g. for a weight ramped up over epochs)."""
        return self.epoch + self.batch / self.num_batches


# A batch is a tuple of tensors; the loss returns the scalar to minimise and named float parts for the history.
LossFn = Callable[[nn.Module, tuple[Tensor, ...], Step], tuple[Tensor, dict[str, float]]]


LR_SCHEDULES = ("exponential", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: maximum number of passes over the training data.
        batch_size: samples per gradient step; ``None`` sizes it to the training set (:func:`batch_size_for`: a
            small simulation budget then still gets about 8 steps per epoch).
        lr, lr_final: learning rate at the first and the last epoch (exponential decay in between), or, with
            ``lr_schedule="plateau"``, the starting rate and the floor below which training stops.
        lr_schedule: ``"exponential"`` (the default): the rate decays from ``lr`` to ``lr_final`` over ``epochs`` (or
            the epochs a ``max_time`` budget plans); ``"plateau"``: the rate stays at ``lr`` and is multiplied by
            ``lr_factor`` after every ``lr_patience`` epochs without a counted validation improvement (see
            ``min_delta``), training going on from the weights of the best validation epoch so far, and stops
            when the rate would fall below ``lr_final``; ``epochs`` is then only a cap.
            The exponential decay ties the rate to the cap, so a task that is still improving at the cap stops
            under-trained while one that overfits early stops at a high rate; the plateau rule decays when the
            validation loss says so.
        lr_patience, lr_factor: the plateau rule's epochs without improvement before each reduction and its factor.
        weight_decay: Adam weight decay.
        grad_clip: maximum gradient norm (``None`` disables clipping).
        patience: epochs without validation improvement before stopping (``None`` disables early stopping).
        min_delta: an improvement counts towards ``patience`` only if the loss falls more than this below the last
            one that counted (the best weights are still kept whatever the margin); 0 counts every improvement.
        val_trim: fraction of validation rows with the largest losses left out of the validation loss (at least
            one row when positive; see :func:`trimmed_mean`), so that a few rows the model extrapolates to cannot
            steer early stopping. Needs a validation loss that returns one value per row; 0 averages everything.
        max_time: wall-clock budget in seconds (``None``: none, the default, so results do not depend on the
            machine). With a budget the number of epochs is planned from the first epoch's duration,
            ``min(epochs, floor(max_time / t_first))``, and the learning rate decays to ``lr_final`` over the planned
            epochs; training also stops after any epoch that passes the budget.
        ema: decay ``d`` of an exponential moving average of the weights, updated after every step
            (``w_ema <- d w_ema + (1 - d) w``; 0, the default, disables it). With it, validation, early stopping
            and the returned weights use the average (Polyak averaging), which smooths the noise of the last steps;
            ``1 / (1 - d)`` is about the number of steps averaged.
        num_workers: DataLoader workers for datasets streamed from disk.
        seed: root of the seed tree whose ``train`` stream seeds shuffling and the noise drawn by losses.

    Example:
        >>> cfg = TrainConfig(epochs=50, patience=None)
        >>> cfg.batch_size, cfg.grad_clip, cfg.to_dict()["epochs"]
        (256, 8.0, 50)
        >>> TrainConfig(val_trim=0.5)
        Traceback (most recent call last):
        ...
        ValueError: TrainConfig: val_trim must be in [0, 0.5), got 0.5
    """

    epochs: int = 200
    batch_size: int | None = 256
    lr: float = 1e-3
    lr_final: float = 1e-5
    lr_schedule: str = "exponential"
    lr_patience: int = 5
    lr_factor: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float | None = 8.0
    patience: int | None = 20
    min_delta: float = 0.0
    val_trim: float = 0.0
    max_time: float | None = None
    ema: float = 0.0
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self):
        check_types(self)  # a JSON value of the wrong type is named here
        if self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError(f"TrainConfig: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and self.lr_final > 0):
            raise ValueError(f"TrainConfig: learning rates must be positive, got {self.lr}, {self.lr_final}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig: grad_clip must be positive or None, got {self.grad_clip}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig: lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_patience < 1 or not 0 < self.lr_factor < 1:
            raise ValueError(f"TrainConfig: lr_patience must be >= 1 and lr_factor in (0, 1), got {self.lr_patience}, "
                             f"{self.lr_factor}")
        if not self.min_delta >= 0:
            raise ValueError(f"TrainConfig: min_delta must be >= 0, got {self.min_delta}")
        if not 0 <= self.val_trim < 0.5:
            raise ValueError(f"TrainConfig: val_trim must be in [0, 0.5), got {self.val_trim}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig: patience must be >= 1 or None, got {self.patience}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"TrainConfig: ema must be in [0, 1) (0 disables it), got {self.ema}")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"TrainConfig: max_time must be positive or None, got {self.max_time}")

    def to_dict(self) -> dict:
        return asdict(self)


AUTO_BATCH_MIN, AUTO_BATCH_MAX = 64, 256


def batch_size_for(config: TrainConfig, num_rows: int) -> int:
    """``config.batch_size``, or when it is ``None``: ``num_rows // 8`` clipped to ``[64, 256]``.

    Small simulation budgets get about 8 steps per epoch, which gave better posteriors than batches of 256 on the
    benchmark simulators; from about 2000 rows on, 256 keeps epochs cheap (``benchmarks/results/design_notes.md``).

    Example:
        >>> auto = TrainConfig(batch_size=None)
        >>> batch_size_for(auto, 1000), batch_size_for(auto, 100), batch_size_for(auto, 100_000)
        (125, 64, 256)
        >>> batch_size_for(TrainConfig(batch_size=32), 1000)
        32
    """
    if config.batch_size is not None:
        return int(config.batch_size)
    return int(min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, num_rows // 8)))


def epoch_batches(num_rows: int, batch_size: int, generator: torch.Generator | None, *, shuffle: bool = True,
                  rank: int = 0, world_size: int = 1) -> list[Tensor]:
    """Row indices of one epoch's batches, or of rank ``rank``'s shards of them.

    A permutation of ``range(num_rows)`` from ``generator`` (or the identity without ``shuffle``) is cut into
    :func:`num_batches` batches of equal size (to one row); with ``world_size > 1`` each batch is cut again into
    ``world_size`` contiguous shards of equal size (to one row) and rank ``rank`` gets its shard of every batch.
    With the same generator state on every rank the shards of a batch are disjoint and together are the
    single-process batch, so every epoch covers each row exactly once over all ranks.

    Example:
        >>> [b.tolist() for b in epoch_batches(10, 5, None, shuffle=False)]
        [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
        >>> [b.tolist() for b in epoch_batches(10, 5, None, shuffle=False, rank=1, world_size=2)]
        [[3, 4], [8, 9]]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    order = torch.randperm(num_rows, generator=generator) if shuffle else torch.arange(num_rows)
    batches = list(torch.tensor_split(order, num_batches(num_rows, batch_size)))
    if world_size > 1:
        batches = [torch.tensor_split(b, world_size)[rank] for b in batches]
    return batches


def iterate_batches(data, batch_size: int, generator: torch.Generator | None, *, shuffle: bool = True,
                    num_workers: int = 0, rank: int = 0, world_size: int = 1) -> Iterable[tuple[Tensor, ...]]:
    """Minibatches from a tuple of equally long tensors (fast slicing) or from a torch ``Dataset``.

    The rows are cut into :func:`num_batches` batches of equal size (to one row): the remainder of ``n / batch_size``
    is spread over the batches instead of forming a short last batch, which costs a whole step for a few rows and
    gives a noisy gradient. Tensors and datasets with the same rows give the same batches in the same order. With
    ``world_size > 1`` only rank ``rank``'s shard of each batch is yielded (:func:`epoch_batches`).
    """
    n = _num_rows(data)
    batches = epoch_batches(n, batch_size, generator, shuffle=shuffle, rank=rank, world_size=world_size)
    batches = [b for b in batches if len(b)]  # a rank's shard of fewer rows than ranks (validation) may be empty
    if isinstance(data, (tuple, list)):
        for idx in batches:
            yield tuple(t[idx.to(t.device)] for t in data)
    elif isinstance(data, Dataset):
        # a generator of its own: without one the loader draws its workers' base seed from the global RNG
        loader = DataLoader(data, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
                            persistent_workers=False, generator=torch.Generator().manual_seed(0))
        for batch in loader:
            yield tuple(batch)
    else:
        raise TypeError(f"training data must be a tuple of tensors or a torch Dataset, got {type(data).__name__}")


def num_batches(num_rows: int, batch_size: int) -> int:
    """Batches per epoch over ``num_rows`` tensor rows: ``num_rows // batch_size``, at least 1."""
    return max(1, num_rows // batch_size)


def _num_rows(data) -> int:
    return data[0].shape[0] if isinstance(data, (tuple, list)) else len(data)


def train(model: nn.Module, loss_fn: LossFn, train_data, val_data, config: TrainConfig, *,
          device: torch.device, checkpoint_path: str | Path | None = None, show_progress: bool = True,
          val_loss_fn: LossFn | None = None, distributed: Distributed | None = None) -> list[dict]:
    """Train ``model`` in place and return the history (one dict per epoch).

    Args:
        model: the module to optimise (already on ``device``).
        loss_fn: ``loss_fn(model, batch, step) -> (loss, parts)``; noise it draws comes from ``step.generator``.
        train_data, val_data: tuples of tensors or torch Datasets (``val_data`` may be ``None``); ``train_data`` may
            also be a function ``epoch -> tuple of tensors`` giving fresh training data for every epoch (simulating
            on the fly); it must be deterministic in ``epoch`` so that resumed runs see the same data.
        config: optimisation settings.
        checkpoint_path: where to write the checkpoint after every epoch; an existing checkpoint is resumed.
        val_loss_fn: loss used on validation data (defaults to ``loss_fn``); it may return one loss per row
            ``(n,)`` instead of a scalar, which the validation loss then averages over all rows (``config.val_trim``
            of them left out).
        distributed: train data-parallel in an initialised process group (``sbi_inn.ddp``; every rank calls
            ``train`` with the same arguments): ``config.batch_size`` is then the global batch, only rank 0 writes
            the checkpoint (every rank resumes from it) and shows progress.

    Returns:
        A list of per-epoch records: ``epoch``, ``train_loss``, ``val_loss``, ``lr``, ``seconds``,
        ``skipped_steps`` and the averaged named parts. The model ends with the weights of the best validation
        epoch (the last epoch when there is no validation data).
    """
    val_loss_fn = val_loss_fn or loss_fn
    fresh = callable(train_data) and not isinstance(train_data, (tuple, list, Dataset))

    def epoch_data(epoch: int):
        return train_data(epoch) if fresh else train_data

    first = epoch_data(0)  # sizes the batches, then serves as epoch 0's data (a stream is not drawn twice)
    num_rows = _num_rows(first)
    if num_rows == 0:
        raise ValueError("no training data")
    config = replace(config, batch_size=batch_size_for(config, num_rows))
    world = 1 if distributed is None else distributed.world_size
    if min(num_rows, config.batch_size) < world:
        raise ValueError(f"data-parallel training on {world} processes needs batches of at least {world} rows; "
                         f"got batch_size {config.batch_size} and {num_rows} training rows")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adam(params, config)
    plateau = config.lr_schedule == "plateau"  # the rate then changes only in _reduce_on_plateau
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=_decay(config, config.epochs))
    average = _Average(params, config.ema) if config.ema > 0 else None
    history: list[dict] = []
    best = {"val": math.inf, "state": None, "epoch": -1}
    counted = {"val": math.inf, "epoch": -1}  # the last improvement larger than min_delta (patience counts from it)
    reduced = -1  # the epoch of the plateau rule's last reduction of the learning rate
    start_epoch, elapsed, planned = 0, 0.0, config.epochs

    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, elapsed = int(state["epoch"]) + 1, float(state["elapsed"])
        planned = int(state.get("planned_epochs", config.epochs))
        if average is not None:
            average.load(state["ema"])
        history = [dict(zip(state["history_keys"], row)) for row in state["history_rows"].tolist()]
        best = {"val": float(state["best_val"]), "state": state.get("best_state"), "epoch": int(state["best_epoch"])}
        counted = {"val": float(state.get("counted_val", best["val"])),
                   "epoch": int(state.get("counted_epoch", best["epoch"]))}
        reduced = int(state.get("reduced_epoch", -1))
        if state.get("finished", False):
            start_epoch = planned
    writes = distributed is None or distributed.is_main
    step_loss = loss_fn if distributed is None else distributed.wrap_loss(model, loss_fn)

    tree = SeedTree(config.seed)
    bar = tqdm(total=planned, initial=start_epoch, disable=not (show_progress and writes), desc="training",
               unit="epoch")
    epoch = start_epoch
    while epoch < planned:
        t0 = time.perf_counter()
        shuffle_seed, noise_seed, dropout_seed = tree.seeds("train", epoch, n=3)  # the shuffle is the same on all ranks
        if distributed is not None and distributed.rank > 0:  # noise and dropout: a stream of each rank's own
            noise_seed, dropout_seed = tree.seeds("train", epoch, distributed.rank, n=2)
        shuffle = torch.Generator().manual_seed(shuffle_seed)
        noise = torch.Generator(device=device).manual_seed(noise_seed)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(dropout_seed)  # subnet dropout draws from the global RNG (module docstring)
            data, first = (first if epoch == 0 else epoch_data(epoch)), None  # drop epoch 0's data once used
            record = _run_epoch(model, step_loss, data, optimizer, config, device, shuffle, noise, epoch, distributed,
                                average)
            with average.swapped_in() if average is not None else contextlib.nullcontext():
                if val_data is not None and _num_rows(val_data) > 0:
                    record["val_loss"] = _evaluate(model, val_loss_fn, val_data, config, device, noise, epoch,
                                                   distributed)
                monitored = record.get("val_loss", record["train_loss"])
                if monitored < best["val"]:  # with an average, the averaged weights are the ones kept
                    best = {"val": monitored, "epoch": epoch,
                            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        seconds = time.perf_counter() - t0  # the slowest rank's, so that time budgets decide alike everywhere
        seconds = seconds if distributed is None else distributed.max(seconds)
        record.update(epoch=epoch, lr=optimizer.param_groups[0]["lr"], seconds=seconds)
        if epoch == 0 and config.max_time is not None:  # plan the epochs that fit the budget (TrainConfig.max_time)
            planned = max(1, min(config.epochs, int(config.max_time // max(record["seconds"], 1e-9))))
            scheduler.gamma = _decay(config, planned)
            bar.total = planned
        scheduler.step()
        elapsed += record["seconds"]
        record["planned_epochs"] = planned
        history.append(record)

        if monitored < counted["val"] - config.min_delta:
            counted = {"val": monitored, "epoch": epoch}
        exhausted = False
        if plateau and epoch - max(counted["epoch"], reduced) >= config.lr_patience:
            exhausted, reduced = not _reduce_on_plateau(optimizer, config), epoch
            if not exhausted and best["state"] is not None and val_data is not None:
                model.load_state_dict(best["state"])  # go on from the best weights, at the lower rate
                if average is not None:
                    average.load([p.detach() for p in params])
        stop = (config.patience is not None and epoch - counted["epoch"] >= config.patience) or (
            config.max_time is not None and elapsed >= config.max_time) or epoch + 1 >= planned or exhausted
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_loss")})
        if ckpt is not None and writes:
            _save_checkpoint(ckpt, model, optimizer, scheduler, epoch, elapsed, history, best, counted, planned,
                             finished=stop, average=average, reduced=reduced)
        epoch += 1
        if stop:
            break
    bar.close()

    if best["state"] is not None and (val_data is not None or average is not None):
        model.load_state_dict(best["state"])
    return history


class _Average:
    """Exponential moving average of trained weights (``TrainConfig.ema``)."""

    def __init__(self, params: list[Tensor], decay: float):
        self.params, self.decay = params, decay
        self.values = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for avg, p in zip(self.values, self.params):
            avg.lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in the model for the duration of the block, the trained ones restored after."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, avg in zip(self.params, self.values):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, trained):
                    p.copy_(w)

    def state(self) -> list[Tensor]:
        return [v.clone() for v in self.values]

    def load(self, values: list[Tensor]) -> None:
        with torch.no_grad():
            for avg, v in zip(self.values, values):
                avg.copy_(v)


def _decay(config: TrainConfig, epochs: int) -> float:
    """Per-epoch factor taking the learning rate from ``lr`` to ``lr_final`` over ``epochs`` epochs; 1 under the
    plateau rule, whose reductions are made by :func:`_reduce_on_plateau`."""
    if config.lr_schedule == "plateau":
        return 1.0
    return (config.lr_final / config.lr) ** (1.0 / max(1, epochs - 1))


def _reduce_on_plateau(optimizer: torch.optim.Optimizer, config: TrainConfig) -> bool:
    """Multiply the learning rate by ``config.lr_factor``; ``False`` (rate unchanged) when that would take it below
    ``config.lr_final``, which ends training (``TrainConfig.lr_schedule="plateau"``)."""
    lr = optimizer.param_groups[0]["lr"] * config.lr_factor
    if lr < config.lr_final * (1 - 1e-9):
        return False
    for group in optimizer.param_groups:
        group["lr"] = lr
    return True


def _adam(params, config: TrainConfig) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for the device (on CPU the per-tensor update loop was a sizeable
    part of a small fit: ``benchmarks/results/design_notes.md``), else the multi-tensor (foreach) update. Same
    algorithm either way."""
    try:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def clip_grad_norm(params: list[Tensor], max_norm: float) -> float:
    """Scale the gradients of ``params`` to a total 2-norm of at most ``max_norm``; return the norm before clipping.

    The same rule as ``torch.nn.utils.clip_grad_norm_`` (factor ``max_norm / (norm + 1e-6)`` when the norm exceeds
    ``max_norm``), with the norm taken over the concatenated gradients in one reduction, which is cheaper on CPU for
    the many small tensors of a default flow than one norm per tensor (``benchmarks/results/design_notes.md``).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])))
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm


def _run_epoch(model, loss_fn, data, optimizer, config, device, shuffle, noise, epoch, distributed=None,
               average: _Average | None = None) -> dict:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    totals: dict[str, float] = {}
    steps = skipped = 0
    n = _num_rows(data)
    nb = num_batches(n, config.batch_size)
    rank, world = (0, 1) if distributed is None else (distributed.rank, distributed.world_size)
    for i, batch in enumerate(iterate_batches(data, config.batch_size, shuffle, num_workers=config.num_workers,
                                              rank=rank, world_size=world)):
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        optimizer.zero_grad(set_to_none=True)
        loss, parts = loss_fn(model, batch, Step(epoch, i, nb, noise))
        weight = 1.0
        if distributed is not None:  # this shard's share of the batch: DDP's mean of the ranks' gradients is then
            weight = world * batch[0].shape[0] / (n // nb + (i < n % nb))  # the gradient of the batch mean
            loss = loss * weight
        finite = bool(torch.isfinite(loss))
        if not (finite if distributed is None else distributed.all_true(finite)):
            skipped += 1
            continue
        loss.backward()
        if config.grad_clip is not None:
            norm = clip_grad_norm(params, config.grad_clip)
            if not math.isfinite(norm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
        optimizer.step()
        if average is not None:
            average.update()
        steps += 1
        totals["train_loss"] = totals.get("train_loss", 0.0) + float(loss.detach())
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + weight * float(v)
    if distributed is not None:  # the mean over ranks of the weighted shard losses is the batch loss
        keys = sorted(totals)
        totals = dict(zip(keys, (v / world for v in distributed.sum([totals[k] for k in keys]))))
    if steps == 0:
        raise FloatingPointError(f"every training step of this epoch had a non-finite loss ({skipped} skipped); "
                                 "lower the learning rate or check the data for outliers")
    record = {k: v / steps for k, v in totals.items()}
    record["skipped_steps"] = skipped
    return record


def trimmed_mean(values: Tensor, trim: float) -> float:
    """Mean of ``values`` ``(n,)`` without the ``k = min(n - 1, ceil(trim * n))`` largest (NaN counts as largest).

    A robust estimate of an expected loss whose per-row values are heavy-tailed: a few validation rows in the prior's
    tail, where the flow extrapolates, can otherwise dominate the validation loss and stop training early with poor
    weights (measured on inverse kinematics: ``benchmarks/results/design_notes.md``). Any non-finite value left after
    trimming gives ``inf``.

    Example:
        >>> trimmed_mean(torch.tensor([1.0, 2.0, 3.0, 1e9]), 0.25)  # k = 1: the 1e9 is left out
        2.0
        >>> with_nan = torch.tensor([1.0, float("nan"), 3.0])  # NaN counts as largest
        >>> trimmed_mean(with_nan, 0.1), trimmed_mean(with_nan, 0.0)
        (2.0, inf)
    """
    n = values.numel()
    k = min(n - 1, math.ceil(trim * n)) if trim > 0 else 0
    kept = torch.nan_to_num(values.double(), nan=math.inf, posinf=math.inf).sort().values[: n - k]
    mean = float(kept.mean()) if n else math.inf
    return mean if math.isfinite(mean) else math.inf


@torch.no_grad()
def _evaluate(model, loss_fn, data, config, device, noise, epoch, distributed=None) -> float:
    """Validation loss: the row-weighted mean of scalar batch losses (non-finite batches skipped), or the trimmed
    mean (``config.val_trim``) over all rows when ``loss_fn`` returns one loss per row. Distributed, each rank
    evaluates its shards of the rows and the per-row losses are gathered (the sums all-reduced), so every rank
    returns the same value."""
    model.eval()
    total, count, rows, batch_statistic = 0.0, 0, [], False
    size = max(config.batch_size, 1024)
    nb = num_batches(_num_rows(data), size)
    rank, world = (0, 1) if distributed is None else (distributed.rank, distributed.world_size)
    for i, batch in enumerate(iterate_batches(data, size, None, shuffle=False, num_workers=config.num_workers,
                                              rank=rank, world_size=world)):
        batch = tuple(t.to(device) for t in batch)
        loss, _ = loss_fn(model, batch, Step(epoch, i, nb, noise))
        if loss.ndim == 1:
            rows.append(loss.detach().cpu())
            continue
        batch_statistic = True
        if torch.isfinite(loss):
            total += float(loss) * batch[0].shape[0]
            count += batch[0].shape[0]
    model.train()
    rows = torch.cat(rows) if rows else torch.zeros(0)
    if distributed is not None:  # every rank takes part in both, whatever its shard held
        rows = distributed.gather(rows)
        total, count = distributed.sum([total, count])
        batch_statistic = not distributed.all_true(not batch_statistic)
    if batch_statistic and config.val_trim > 0:
        raise ValueError("TrainConfig.val_trim needs a validation loss with one value per row; this model's "
                         "validation loss is a batch statistic (set val_trim=0)")
    if len(rows):
        return trimmed_mean(rows, config.val_trim)
    return total / count if count else math.inf


def _save_checkpoint(path: Path, model, optimizer, scheduler, epoch, elapsed, history, best, counted, planned, *,
                     finished, average: _Average | None = None, reduced: int = -1) -> None:
    keys = sorted({k for rec in history for k in rec})
    rows = torch.tensor([[float(rec.get(k, math.nan)) for k in keys] for rec in history], dtype=torch.float64)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "elapsed": elapsed, "history_keys": keys, "history_rows": rows,
             "best_val": best["val"], "best_epoch": best["epoch"], "best_state": best["state"], "finished": finished,
             "counted_val": counted["val"], "counted_epoch": counted["epoch"], "planned_epochs": planned,
             "reduced_epoch": reduced}
    if average is not None:
        state["ema"] = average.state()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interruption never leaves a half-written checkpoint


def clone_state(model: nn.Module) -> dict:
    """A deep copy of a model's state dict (handy for tests comparing weights)."""
    return copy.deepcopy(model.state_dict())
