"""sbi_inn: simulation-based inference with invertible neural networks."""

from sbi_inn._version import __version__
from sbi_inn.batch import posterior_maps, sample_to_hdf5
from sbi_inn.classifier import fit_classifier, load_classifier
from sbi_inn.config import DataConfig, FitConfig
from sbi_inn.data import HDF5Dataset, hdf5_info, load_hdf5, simulate_to_hdf5
from sbi_inn.ensemble import fit_ensemble
from sbi_inn.fit import fit_posterior
from sbi_inn.flows import FlowConfig
from sbi_inn.images import read_observation_image, write_observation_image
from sbi_inn.inn import INNConfig
from sbi_inn.posterior import Posterior, load_posterior
from sbi_inn.priors import BoxUniform, IndependentPrior
from sbi_inn.simulation import SeedTree
from sbi_inn.train import TrainConfig

__all__ = ["__version__", "BoxUniform", "IndependentPrior",
           "HDF5Dataset", "simulate_to_hdf5", "load_hdf5", "hdf5_info",
           "fit_posterior", "fit_ensemble", "FitConfig", "INNConfig", "FlowConfig", "TrainConfig", "DataConfig",
           "SeedTree",
           "Posterior", "load_posterior", "fit_classifier", "load_classifier",
           "posterior_maps", "sample_to_hdf5", "write_observation_image", "read_observation_image"]
