"""Simulators found through the ``sbi_inn.simulators`` entry-point group.

Any installed package can register simulators for the command line (``sbi-inn list``, ``simulate``, ``diagnose``)
by naming them in its ``pyproject.toml``::

    [project.entry-points."sbi_inn.simulators"]
    my_model = "my_package.models:MyModel"

An entry point names a class or factory; ``load_simulator("my_model", **config)`` calls it with the configuration
keywords. This package's own simulators (``simulators/``) are registered the same way, so ``sbi_inn`` never imports
them.

Example:
    >>> "inverse_kinematics" in available_simulators()
    True
    >>> load_simulator("inverse_kinematics", noise=0.01).config()["noise"]
    0.01
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points

GROUP = "sbi_inn.simulators"

__all__ = ["GROUP", "available_simulators", "load_simulator"]


def _entry_points() -> dict[str, EntryPoint]:
    """name -> entry point of the group; where two distributions register one name, the first found wins."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def available_simulators() -> list[str]:
    """Sorted names of the simulators registered in the ``sbi_inn.simulators`` entry-point group."""
    return sorted(_entry_points())


def load_simulator(name: str, **config):
    """Build the simulator registered as ``name`` with the keyword configuration ``config``.

    Raises:
        KeyError: for a name no installed package registers (the message lists the known ones).
        TypeError: for a configuration keyword the simulator does not take (the message names it).
    """
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none (is the package installed, e.g. pip install -e .?)"
        raise KeyError(f"unknown simulator {name!r}; known simulators: {known}")
    factory = eps[name].load()
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        params = None
    if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                         inspect.Parameter.KEYWORD_ONLY)]
        unknown = [k for k in config if k not in accepted]
        if unknown:
            raise TypeError(f"simulator {name!r} takes no configuration {', '.join(map(repr, unknown))}; it takes: "
                            f"{', '.join(accepted) or 'no configuration'}")
    return factory(**config)
