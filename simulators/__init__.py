"""Simulators for sbi_inn: a registry of named forward models with priors.

Example:
    >>> from simulators import get_simulator, list_simulators
    >>> sim = get_simulator("inverse_kinematics")
    >>> sim.simulate(sim.prior.mean[None]).tolist()
    [[0.0, 2.0]]
"""

from __future__ import annotations

import importlib

from simulators.base import Simulator

# name -> "module:Class"; modules are imported lazily so a broken optional simulator cannot break the others.
# pyproject.toml's [project.entry-points."sbi_inn.simulators"] names the same ones for sbi_inn's command line
# (sbi_inn.registry); tests/test_registry.py checks that the two agree.
_REGISTRY: dict[str, str] = {
    "gaussian_mixture": "simulators.gaussian_mixture:GaussianMixture",
    "inverse_kinematics": "simulators.inverse_kinematics:InverseKinematics",
    "tissue_spectra": "simulators.tissue_spectra:TissueSpectra",
    "gaussian_sets": "simulators.set_valued:ConjugateGaussianSets",
    "ddm": "simulators.set_valued:DriftDiffusion",
}


def list_simulators() -> list[str]:
    """Names accepted by :func:`get_simulator`."""
    return sorted(_REGISTRY)


def get_simulator(name: str, **config) -> Simulator:
    """Build the simulator registered as ``name`` with keyword configuration ``config``.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
        TypeError: for a configuration keyword the simulator does not take.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown simulator {name!r}; known simulators: {', '.join(list_simulators())}")
    module_name, cls_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**config)


__all__ = ["Simulator", "get_simulator", "list_simulators"]
