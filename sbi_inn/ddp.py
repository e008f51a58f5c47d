"""Data-parallel training with ``torch.nn.parallel.DistributedDataParallel``: one process per GPU (or CPU processes).

Launch with ``torchrun``, which starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` for each::

    torchrun --nproc_per_node 2 -m sbi_inn.cli.ddp sims.h5 -o model.sbi --epochs 100 --checkpoint-dir ckpt/

The options are those of ``sbi-inn train`` plus ``--timeout`` and ``--backend`` (the command is
:mod:`sbi_inn.cli.ddp`). From a script run under
``torchrun``::

    from sbi_inn import fit_posterior
    from sbi_inn.ddp import process_group

    with process_group() as dist:                      # nccl with CUDA (rank on cuda:LOCAL_RANK), else gloo
        posterior = fit_posterior(data="sims.h5", distributed=True, checkpoint_dir="ckpt/", seed=0)
        if dist.is_main:
            posterior.save("model.sbi")

What changes under DDP, and what does not (the loop is ``sbi_inn.train.train``, the fit path ``sbi_inn.fit``):

* Every rank builds the same model (same ``init`` seed; DDP also broadcasts rank 0's weights when it wraps it) and
  reads the same simulations, split and standardisation (simulations in memory and fresh simulations per epoch are
  simulated on every rank: deterministic in the seed, so identical, but not divided among the ranks). The loss is
  computed inside a small module's ``forward`` (:class:`LossModule`), so that the backward pass all-reduces the
  gradients whatever model methods the loss calls.
* The batch size is global: each epoch's shuffled order (seeded by the run seed and the epoch, identical on every
  rank) is cut into the single-process batches, and each batch into ``world_size`` disjoint shards, one per rank
  (:func:`sbi_inn.train.epoch_batches`). Each rank's shard loss is weighted by its share of the batch, so the
  averaged gradient is that of the whole batch: for a loss that is a mean over rows (the cINN's NLL), a step on
  ``W`` ranks is the single-process step up to floating point. Batch statistics (the INN's MMD) are taken per shard.
* Noise drawn by losses and subnet dropout come from per-rank streams (rank 0 uses the single-process stream).
* Validation rows are sharded too; the per-row losses are gathered (or the batch sums all-reduced), so every rank
  gets the same validation loss and takes the same schedule, early-stopping and best-epoch decisions. A step is
  skipped on all ranks when the loss is non-finite on any.
* Only rank 0 takes the checkpoint directory's lock, writes ``fit.json``, the checkpoints and (in the command) the
  model file; every rank resumes from rank 0's checkpoint, so the directory must be readable by all ranks (one
  machine, or a shared file system). Resuming with another number of processes works (the global batch is the same)
  but is not bit-identical to an uninterrupted run.
* Setup errors (a missing file, an existing output, a locked checkpoint directory, ranks holding different data or
  settings) are agreed on collectively: every rank raises (the failing rank its own error, the others
  :class:`RankFailedError` naming it) instead of waiting for a partner that will never come. Collectives time out
  after ``timeout`` seconds, so a rank that dies during training ends the others with an error rather than a hang
  (``torchrun`` also stops the remaining processes when one fails).

References:
    Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel Training" (DDP's gradient
    all-reduce); the training itself is thesis sec. 3.5 / app. B.5.1 as in ``sbi_inn.train``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Distributed", "LossModule", "RankFailedError", "current", "process_group"]

DEFAULT_TIMEOUT_S = 600.0
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankFailedError(RuntimeError):
    """Another rank of the process group failed; the message names it and its error."""


class LossModule(nn.Module):
    """``forward(batch, step) = loss_fn(model, batch, step)``: the loss as a module's forward, which is what
    ``DistributedDataParallel`` needs to all-reduce the gradients of a loss calling methods other than ``forward``."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: tuple[Tensor, ...], step) -> tuple[Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch, step)


@dataclass(frozen=True)
class Distributed:
    """This process' place in an initialised ``torch.distributed`` process group, and the collectives training
    needs (each is called by every rank in the same order).

    Attributes:
        rank: this process (0 writes files). world_size: number of processes. local_rank: index on this machine.
        device: where this rank trains (``cuda:local_rank`` with nccl, else CPU). backend: ``"nccl"`` or ``"gloo"``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes checkpoints and outputs."""
        return self.rank == 0

    def wrap_loss(self, model: nn.Module, loss_fn: Callable) -> Callable:
        """``loss_fn`` computed through a ``DistributedDataParallel`` copy of ``model`` (same parameters), so that
        ``loss.backward()`` all-reduces (averages) the gradients over the ranks. Wrapping broadcasts rank 0's
        parameters and buffers; buffers are not broadcast again (they are fixed standardisation constants)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapper = nn.parallel.DistributedDataParallel
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(wrapper).parameters
                   else {"broadcast_buffers": False})  # the name before and after torch 2.13
        ddp = wrapper(LossModule(model, loss_fn), device_ids=ids, **no_sync)
        return lambda m, batch, step: ddp(batch, step)

    def _tensor(self, values, dtype=torch.float64) -> Tensor:
        return torch.as_tensor(values, dtype=dtype, device=self.device if self.backend == "nccl" else "cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks of ``values`` (the same length on every rank)."""
        t = self._tensor(list(values))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        t = self._tensor([value])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t[0])

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        t = self._tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t[0])

    def gather(self, rows: Tensor) -> Tensor:
        """All ranks' 1-D ``rows`` (any lengths, possibly 0) concatenated in rank order, on every rank (CPU)."""
        rows = rows.detach().reshape(-1).to(self._tensor([]).device, torch.float64)
        sizes = self._tensor([len(rows) if r == self.rank else 0 for r in range(self.world_size)], torch.int64)
        dist.all_reduce(sizes, op=dist.ReduceOp.SUM)
        sizes = sizes.tolist()
        padded = torch.full((max(max(sizes), 1),), float("nan"), dtype=torch.float64, device=rows.device)
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu()

    def agree(self, fn: Callable[[], object], *, main_only: bool = False):
        """Run ``fn()`` (on rank 0 only with ``main_only``) and return its result, or raise on every rank when it
        raised on any: the failing rank re-raises its own error, the others a :class:`RankFailedError` naming the
        lowest failing rank and its message. Setup steps use this, so one rank's error never leaves the others
        waiting in a collective."""
        result, error = None, None
        if self.is_main or not main_only:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - re-raised below, on this rank and (named) on the others
                error = err
        messages: list = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if error is not None:
            raise error
        if failed:
            rank, message = failed[0]
            raise RankFailedError(f"rank {rank} of {self.world_size} failed, so every rank stops: {message}")
        return result

    def check_same(self, text: str, what: str) -> None:
        """Raise on every rank unless ``text`` is the same on all of them (compared by a 62-bit hash)."""
        digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2
        lo, hi = self._tensor([digest], torch.int64), self._tensor([-digest], torch.int64)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MIN)
        if int(lo[0]) != -int(hi[0]):
            raise ValueError(f"the ranks disagree about {what}; every rank must train on the same simulations with "
                             "the same settings (same file contents, seed and configuration)")

    def barrier(self) -> None:
        dist.barrier()


def current() -> Distributed:
    """The :class:`Distributed` of the initialised default process group (see :func:`process_group`).

    Raises:
        RuntimeError: no process group is initialised.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed training needs an initialised torch.distributed process group: run the "
                           "script under `torchrun --nproc_per_node N` inside `with sbi_inn.ddp.process_group():`")
    backend = str(dist.get_backend())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[Distributed]:
    """Initialise the default process group from the ``torchrun`` environment for the ``with`` block, then destroy
    it (an already initialised group is used as is and left alone).

    Args:
        backend: ``"nccl"`` (CUDA; each rank on ``cuda:LOCAL_RANK``) or ``"gloo"`` (CPU); ``None`` picks nccl when
            CUDA is available, else gloo.
        timeout: seconds any collective may wait for the other ranks before failing (so a dead rank never leaves
            the others hanging).

    Yields:
        This process' :class:`Distributed`.
    """
    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"environment variables {', '.join(missing)} are not set: start the processes with "
                           "`torchrun --nproc_per_node N ...`")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise ValueError(f"backend 'nccl' needs a CUDA device per process; LOCAL_RANK {local_rank} but "
                             f"{torch.cuda.device_count()} CUDA devices here (use backend='gloo' on CPU)")
        torch.cuda.set_device(local_rank)
    kwargs = {"device_id": torch.device("cuda", local_rank)} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout)), **kwargs)
    try:
        yield current()
    finally:
        dist.destroy_process_group()
