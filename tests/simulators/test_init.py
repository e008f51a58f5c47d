"""The simulator registry of simulators/__init__.py: list_simulators and get_simulator."""

import json

import pytest

from simulators import Simulator, get_simulator, list_simulators

NAMES = ["ddm", "gaussian_mixture", "gaussian_sets", "inverse_kinematics", "tissue_spectra"]


def test_list_simulators_is_sorted_and_complete():
    assert list_simulators() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_get_simulator_builds_each_and_its_config_rebuilds_it(name):
    sim = get_simulator(name)
    assert isinstance(sim, Simulator) and sim.name == name
    assert len(sim.param_names) == sim.prior.event_shape[0] and len(sim.obs_names) == sim.obs_dim > 0
    again = get_simulator(name, **json.loads(json.dumps(sim.config())))
    assert type(again) is type(sim) and again.config() == sim.config()


def test_unknown_names_and_keywords_raise():
    with pytest.raises(KeyError, match="unknown simulator 'no_such_thing'; known simulators: ddm, gaussian_mixture"):
        get_simulator("no_such_thing")
    with pytest.raises(TypeError, match="nosie"):
        get_simulator("inverse_kinematics", nosie=0.1)
