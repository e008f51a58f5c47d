"""Checks of what users pass in: arrays of real numbers (:func:`real_tensor`), class labels (:func:`class_labels`)
and configuration field types (:func:`check_types`), each refusing a bad value with an error that names it.

Configurations arrive from JSON files, ``--config key=value`` options and dicts; without these checks a string
where a number belongs fails later as ``'<' not supported between instances of 'str' and 'int'``, naming nothing.
:func:`check_types` is called first in each configuration dataclass' ``__post_init__``: it checks every field whose
annotation is ``int``, ``float``, ``str`` or ``bool`` (optionally ``| None``) and normalises numbers (numpy scalars
to Python ones, ``1`` to ``1.0`` for a float field; ``4.0`` is not an integer: nothing is truncated or guessed).
Fields of other types (nested configurations, dicts) are left to their own checks.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     blocks: int = 2
    ...     def __post_init__(self):
    ...         check_types(self)
    >>> Opt(blocks=np.int64(4)).blocks
    4
    >>> Opt(blocks="4")
    Traceback (most recent call last):
    ...
    TypeError: Opt: blocks must be an integer, got '4' (str)
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_types", "class_labels", "real_tensor"]

_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_types(config) -> None:
    """Check (and normalise in place) the simple-typed fields of the dataclass instance ``config``."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        kind, optional = _simple(hints.get(field.name))
        if kind is None:
            continue
        value = getattr(config, field.name)
        if value is None and optional:
            continue
        object.__setattr__(config, field.name, _coerce(value, kind, f"{type(config).__name__}: {field.name}", optional))


def _simple(hint) -> tuple[type | None, bool]:
    """``(int, False)`` for ``int``, ``(int, True)`` for ``int | None``; ``(None, _)`` for anything else."""
    if hint in _KINDS:
        return hint, False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in _KINDS and len(typing.get_args(hint)) == 2:
            return args[0], True
    return None, False


def _coerce(value, kind: type, where: str, optional: bool):
    def refuse():
        none = " or null" if optional else ""
        raise TypeError(f"{where} must be {_KINDS[kind]}{none}, got {value!r} ({type(value).__name__})")

    if kind is bool:
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            refuse()
        return bool(value)
    if kind is str:
        if not isinstance(value, str):
            refuse()
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        refuse()
    if kind is int:
        if not isinstance(value, numbers.Integral):
            refuse()
        return int(value)
    return float(value)


def real_tensor(name: str, value) -> Tensor:
    """``value`` (a tensor or array-like) as a real tensor, integers and booleans as float32; complex values are
    refused naming ``name``, not cast (the imaginary part would be lost)."""
    if isinstance(value, Tensor):
        t = value.detach()
    else:
        try:
            a = np.asarray(value)
        except ValueError as err:  # ragged nested lists
            raise ValueError(f"{name} must be a rectangular array of numbers, got a ragged "
                             f"{type(value).__name__} ({err})") from None
        if a.dtype.kind not in "biufc":
            raise TypeError(f"{name} must be numbers, got {type(value).__name__} of dtype {a.dtype}"
                            + (" (ragged or mixed values?)" if a.dtype.kind == "O" else ""))
        t = torch.as_tensor(a)
    if t.is_complex():
        raise TypeError(f"{name} must be real numbers, got dtype {t.dtype} (the imaginary part would be lost)")
    return t if torch.is_floating_point(t) else t.to(torch.float32)


def class_labels(labels, name: str = "labels", *, num_classes: int | None = None, n: int | None = None) -> Tensor:
    """Integer class labels ``(N,)`` in ``[0, C)`` as int64 on the CPU.

    Integer dtypes only: floats, even whole-valued ones, are refused like ``4.0`` for an integer field (a float array
    passed as labels is more often the features or probabilities than labels). ``num_classes`` bounds the values,
    ``n`` fixes ``N`` (e.g. one label per row of a probability matrix); ``TypeError`` / ``ValueError`` name ``name``.
    """
    if isinstance(labels, Tensor):
        t = labels.detach()
    else:
        a = np.asarray(labels)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be integers, got {type(labels).__name__} of dtype {a.dtype}")
        t = torch.as_tensor(a)
    if t.dtype == torch.bool or t.is_complex() or torch.is_floating_point(t):
        raise TypeError(f"{name} must be integers (class indices 0..C-1), got dtype {t.dtype}")
    if n is not None and tuple(t.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per row), got {tuple(t.shape)}")
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    t = t.to(torch.int64).cpu()
    bad = (t < 0) if num_classes is None else (t < 0) | (t >= num_classes)
    if bad.any():
        where = "[0, C)" if num_classes is None else f"[0, {num_classes})"
        raise ValueError(f"{name} must lie in {where}, got {t[bad][:5].tolist()}")
    return t
