"""The safe file format of trained models (posteriors, classifiers): weights plus a JSON header, no pickle.

A model file is ``torch.save({"header": json.dumps(header), "state_dict": {name: tensor}})``, read back with
``torch.load(weights_only=True)``, so loading a file never runs code from it. :func:`write_model_file` writes one
atomically and never over an existing file unless asked; :func:`read_model_file` opens one and checks everything
that does not depend on the model kind (readable, the expected format and version, only tensors, no NaN weights)
before the caller checks its own header fields and builds the model.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.sbi")
    >>> _ = write_model_file(path, {"format": "demo", "format_version": 1}, {"w": torch.ones(2)})
    >>> header, state = read_model_file(path, format_name="demo", format_version=1, what="demo model")
    >>> header["format"], state["w"].tolist()
    ('demo', [1.0, 1.0])
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from sbi_inn._version import __version__

__all__ = ["HeaderBounds", "nonfinite_weights", "read_model_file", "write_model_file"]


def write_model_file(path: str | os.PathLike, header: dict, state: dict[str, Tensor], *,
                     overwrite: bool = False) -> Path:
    """Write ``header`` (JSON) and ``state`` (tensors, moved to CPU) to ``path`` through ``<path>.tmp``.

    Raises:
        IsADirectoryError: ``path`` is a directory. FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name such as {path / 'model.sbi'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"header": json.dumps(header), "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, tmp)
    tmp.replace(path)
    return path


def read_model_file(path: str | os.PathLike, *, format_name: str, format_version: int,
                    what: str) -> tuple[dict, dict[str, Tensor]]:
    """``(header, state)`` of the model file ``path`` of format ``format_name`` / ``format_version``; ``what``
    (``"posterior"``, ``"classifier"``) names the kind in errors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable (truncated, foreign), another format or version, weights that are not tensors or
            hold NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(blob["header"])
        state = blob["state_dict"]
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ValueError(f"{path} is not a readable sbi_inn {what} file (corrupted or another format): "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(header, dict) or not isinstance(state, dict):
        raise ValueError(f"{path}: not an sbi_inn {what} file (header or weights missing)")
    if header.get("format") != format_name:
        raise ValueError(f"{path} is not an sbi_inn {what} (format {header.get('format')!r})")
    if header.get("format_version") != format_version:
        raise ValueError(f"{path} was written in {what} format {header.get('format_version')} by sbi_inn "
                         f"{header.get('package_version')}; this sbi_inn ({__version__}) reads format "
                         f"{format_version}")
    not_tensors = [str(k) for k, t in state.items() if not isinstance(t, Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: the weights {', '.join(not_tensors[:3])} are not tensors; the file is damaged")
    bad = nonfinite_weights(state)
    if bad:
        raise ValueError(f"{path}: the weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or inf "
                         f"(saved from a diverged training run, or damaged); this {what} cannot be used")
    return header, state


def nonfinite_weights(state: dict[str, Tensor]) -> list[str]:
    """Names of the state-dict entries holding NaN, or inf anywhere but the support bounds (``support.lo`` /
    ``support.hi`` are infinite on unbounded sides)."""
    bounds = ("support.lo", "support.hi")
    return [name for name, t in state.items() if t.is_floating_point()
            and (torch.isnan(t).any() or (torch.isinf(t).any() and not name.endswith(bounds)))]


class HeaderBounds:
    """Bounds on what a model header may ask for, from the weights its file holds.

    A model is built from its header before the weights are loaded, so a crafted header (``num_blocks`` of 10^8,
    ``hidden`` of 2^31) would hang or exhaust memory. No size may exceed the number of weights stored; a coupling
    flow of ``blocks`` blocks whose subnets have ``layers`` hidden layers of width ``hidden`` holds at least
    ``blocks * (layers - 1) * hidden**2`` weights (``blocks * hidden * layers`` with at most one hidden layer), and
    each block at least one tensor. Errors name the header field (``model.<where>``).
    """

    def __init__(self, path, state: dict[str, Tensor]):
        self.path, self.weights, self.tensors = path, sum(t.numel() for t in state.values()), len(state)

    def _refuse(self, what: str) -> None:
        raise ValueError(f"{self.path}: header field model.{what}; the header is damaged or crafted")

    def size(self, where: str, value, minimum: int = 1) -> int:
        """``value`` as a size: an integer ``>= minimum`` and at most the number of stored weights."""
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{self.path}: header field model.{where} must be an integer >= {minimum}, got "
                             f"{value!r}")
        if value > self.weights:
            self._refuse(f"{where} = {value} exceeds the {self.weights} weights the file holds")
        return value

    def network(self, where: str, blocks: int, layers: int, hidden: int) -> None:
        """A network of ``blocks`` x ``layers`` hidden layers of width ``hidden`` must fit in the stored weights."""
        need = blocks * (layers - 1) * hidden**2 if layers > 1 else blocks * hidden * layers
        if need > self.weights:
            self._refuse(f"{where} asks for a network of at least {need} weights, the file holds {self.weights}")

    def flow(self, where: str, flow: dict) -> tuple[int, int, int]:
        """``(num_blocks, hidden, num_layers)`` of the flow configuration ``flow`` at ``model.<where>``, bounded."""
        blocks, hidden, layers = (self.size(f"{where}.{k}", flow.get(k)) for k in ("num_blocks", "hidden",
                                                                                   "num_layers"))
        if blocks > self.tensors:
            self._refuse(f"{where}.num_blocks = {blocks} exceeds the {self.tensors} weight tensors the file holds")
        self.network(where, blocks, layers, hidden)
        return blocks, hidden, layers
