"""sbi_inn: simulation-based inference with invertible neural networks."""

from sbi_inn._version import __version__
from sbi_inn.data import HDF5Dataset, hdf5_info, load_hdf5, simulate_to_hdf5
from sbi_inn.fit import FitConfig, fit_posterior
from sbi_inn.posterior import Posterior, load_posterior
from sbi_inn.priors import BoxUniform, IndependentPrior

__all__ = ["__version__", "BoxUniform", "IndependentPrior",
           "HDF5Dataset", "simulate_to_hdf5", "load_hdf5", "hdf5_info",
           "fit_posterior", "FitConfig", "Posterior", "load_posterior"]
