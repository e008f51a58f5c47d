"""The data-parallel training command, ``torchrun --nproc_per_node N -m sbi_inn.cli.ddp DATA.h5 -o MODEL.sbi``.

The options are those of ``sbi-inn train`` (the same parser) plus ``--timeout`` and ``--backend``; what changes
under DDP is explained in :mod:`sbi_inn.ddp`, which this command drives (it lives beside the other commands so that
the training loop, which uses :mod:`sbi_inn.ddp`, never imports the command line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from sbi_inn.ddp import _ENV, DEFAULT_TIMEOUT_S, Distributed, RankFailedError, process_group


# -- command line: torchrun -m sbi_inn.cli.ddp ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The options of ``sbi-inn train`` (the same parser) plus ``--timeout`` and ``--backend``."""
    from sbi_inn.cli.models import _add_train
    from sbi_inn.cli.options import _positive

    sub = argparse.ArgumentParser().add_subparsers()
    _add_train(sub)
    p = sub.choices["train"]
    p.prog = "torchrun --nproc_per_node N -m sbi_inn.cli.ddp"
    p.description = ("Train a posterior on DATA.h5 with data-parallel processes (DistributedDataParallel), as "
                     "`sbi-inn train` does in one: --batch-size is the global batch, split over the processes. "
                     "Rank 0 checks the output before training and alone writes checkpoints and MODEL.sbi. "
                     + p.description.partition(". ")[2])
    for action in p._actions:
        if action.dest == "batch_size":
            action.help = "samples per gradient step over all processes (each takes batch / processes)"
    p.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds a process waits for the others before failing (default: {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--backend", choices=("nccl", "gloo"),
                   help="nccl (one CUDA device per process) or gloo (CPU); default: nccl when CUDA is available")
    p.set_defaults(func=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command (under ``torchrun``); returns the exit code: 0, 2 for bad input (every rank, one line on
    rank 0's stderr) or 130 when interrupted."""
    import math
    import time

    from sbi_inn.cli.models import _fit_config
    from sbi_inn.cli.options import _BAD_INPUT, _check_output, torch_threads
    from sbi_inn.fit import fit_posterior

    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    missing = [k for k in _ENV if k not in os.environ]
    if missing and not (dist.is_available() and dist.is_initialized()):
        print(f"sbi_inn.cli.ddp: error: {', '.join(missing)} not set; start it with `torchrun --nproc_per_node N -m "
              "sbi_inn.cli.ddp ...`", file=sys.stderr)
        return 2
    try:
        with torch_threads(args.threads), process_group(args.backend, args.timeout) as group:
            if args.seed < 0:
                raise ValueError(f"--seed must be >= 0, got {args.seed}")
            group.agree(lambda: _inputs_ok(args, _check_output), main_only=True)  # before training, on rank 0
            device = args.device if args.device == "auto" else _device_for(args.device, group)
            t0 = time.perf_counter()
            posterior = fit_posterior(data=args.data, method=args.method, device=device, seed=args.seed,
                                      config=_fit_config(args), show_progress=not args.quiet and group.is_main,
                                      checkpoint_dir=args.checkpoint_dir, distributed=True)
            path = group.agree(lambda: posterior.save(args.output, overwrite=args.force), main_only=True)
            if group.is_main and not args.quiet:
                history = posterior.history
                vals = [h["val_loss"] for h in history if math.isfinite(h.get("val_loss", math.nan))]
                best = f"; best validation loss {min(vals):.4g} (saved)" if vals else ""
                print(f"trained a {args.method} posterior on {group.world_size} {group.backend} processes: "
                      f"{len(history)} epochs in {time.perf_counter() - t0:.1f} s{best}")
                print(f"saved to {path}")
        return 0
    except KeyboardInterrupt:
        if rank == 0:
            print("sbi_inn.cli.ddp: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except (*_BAD_INPUT, RankFailedError) as err:
        if rank == 0:
            print(f"sbi_inn.cli.ddp: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _inputs_ok(args: argparse.Namespace, check_output: Callable) -> None:
    from pathlib import Path

    if not Path(args.data).is_file():
        raise FileNotFoundError(f"no such simulation file: {args.data!r}")
    check_output(args.output, [args.data, args.checkpoint_dir], args.force)


def _device_for(name: str, group: Distributed) -> torch.device:
    if name == "cuda" and group.device.type != "cuda":
        raise ValueError("--device cuda needs the nccl backend (one CUDA device per process); drop --backend gloo "
                         "or run where CUDA is available")
    if name == "cpu" and group.device.type != "cpu":
        raise ValueError("--device cpu needs --backend gloo")
    return group.device


if __name__ == "__main__":
    sys.exit(main())
