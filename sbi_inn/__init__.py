"""sbi_inn: simulation-based inference with invertible neural networks."""

from sbi_inn._version import __version__
from sbi_inn.priors import BoxUniform, IndependentPrior

__all__ = ["__version__", "BoxUniform", "IndependentPrior"]
