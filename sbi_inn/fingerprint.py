"""Fingerprinted checkpoint directories, shared by ``fit_posterior`` and ``fit_classifier``.

A fit's settings and data are summarised as plain JSON (:func:`jsonable`), its *fingerprint*. The fingerprint is kept
in ``fit.json`` beside the training checkpoint, so an interrupted fit resumes from its directory, and a directory
that holds another fit's checkpoint is refused naming the fields that differ (:func:`differences`) instead of being
resumed into a different model.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> checkpoint_path(d, {"seed": 0, "train": {"epochs": 10}}).name
    'checkpoint.pt'
    >>> try:
    ...     checkpoint_path(d, {"seed": 1, "train": {"epochs": 20}})
    ... except ValueError as err:
    ...     print(str(err).split("(")[1].split(")")[0])
    differs in seed, train.epochs
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from torch import Tensor


def checkpoint_path(checkpoint_dir, fingerprint: dict) -> Path | None:
    """``checkpoint_dir/checkpoint.pt``; the fit's fingerprint is kept in ``fit.json`` beside it, and a directory
    whose fingerprint differs is refused with the fields that differ."""
    if checkpoint_dir is None:
        return None
    d = Path(checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    meta = d / "fit.json"
    if meta.is_file():
        changed = differences(json.loads(meta.read_text()), fingerprint)
        if changed:
            raise ValueError(f"checkpoint_dir {str(d)!r} holds a checkpoint of a different fit (differs in "
                             f"{', '.join(changed)}); use a new directory or delete it")
    else:
        meta.write_text(json.dumps(fingerprint, indent=1))
    return d / "checkpoint.pt"


def differences(old, new, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two JSON trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [name for k in sorted(set(old) | set(new))
                for name in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def jsonable(obj):
    """Plain JSON types (tensors and numpy scalars converted, tuples to lists)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if dataclasses.is_dataclass(obj):
        return jsonable(dataclasses.asdict(obj))
    return repr(obj)

