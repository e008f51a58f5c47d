"""What the study scripts share: refusing to write over an earlier run's outputs, the ``variants/<tag>`` name of a
non-default run, and turning results into JSON types. (A temporary torch thread count is the CLI's
``sbi_inn.cli.options.torch_threads``.)

``studies/`` is a folder of scripts, not a package, and the tests load a study from its file (``tests/_studies.py``),
where the folder is not on ``sys.path``. So a study imports this file after
``sys.path.insert(0, str(Path(__file__).resolve().parent))``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def prepare_output(out: Path, names: Iterable[str], force: bool) -> None:
    """Stop when ``out`` holds any of ``names`` and ``force`` is off; otherwise create ``out``."""
    existing = [name for name in names if (out / name).exists()]
    if existing and not force:
        raise SystemExit(f"{out} already holds the results of a run ({', '.join(existing)}); pass --force to "
                         "overwrite them, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def refuse_existing_file(parser: argparse.ArgumentParser, path: Path, force: bool) -> None:
    """``parser.error`` when ``path`` exists and ``force`` is off."""
    if path.exists() and not force:
        parser.error(f"{path} exists; pass --force to write over it")


def variant_tag(parser: argparse.ArgumentParser, args: argparse.Namespace, ignore: Iterable[str]) -> str:
    """The options of ``args`` (but ``ignore``) that differ from ``parser``'s defaults, as ``k=v`` joined by ``_``
    (``quick`` alone as its name), sorted; ``""`` when none differs."""
    ignore = set(ignore)
    changed = sorted(k for k, v in vars(args).items() if k not in ignore and v != parser.get_default(k))
    return "_".join(k if k == "quick" else f"{k}={getattr(args, k)}" for k in changed)


def to_json_types(obj: Any, *, nonfinite_as_none: bool = True, other_as_text: bool = False) -> Any:
    """``obj`` with dict keys as text, tuples as lists, numpy arrays and scalars and torch tensors as Python lists
    and numbers, NaN and infinities as ``None`` (unless ``nonfinite_as_none`` is off), recursively; any other object
    is left as it is, or with ``other_as_text`` turned into ``str(obj)``."""
    if isinstance(obj, dict):
        return {str(k): to_json_types(v, nonfinite_as_none=nonfinite_as_none, other_as_text=other_as_text)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_types(v, nonfinite_as_none=nonfinite_as_none, other_as_text=other_as_text) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return to_json_types(obj.tolist(), nonfinite_as_none=nonfinite_as_none, other_as_text=other_as_text)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj) and nonfinite_as_none:
        return None
    if other_as_text and not (obj is None or isinstance(obj, (bool, int, float, str))):
        return str(obj)
    return obj
