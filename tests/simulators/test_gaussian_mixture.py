"""The eight-mode Gaussian mixture with grouped labels (thesis sec. 4.2.1, Fig. 4.2): exact likelihood and posterior."""

import math

import pytest
import torch

from simulators import get_simulator


@pytest.fixture
def sim():
    return get_simulator("gaussian_mixture")


def test_eight_modes_on_a_circle_with_thesis_labels(sim):
    assert sim.means.shape == (8, 2)
    assert torch.allclose(sim.means.norm(dim=1), torch.full((8,), 3.0))
    # clockwise from the top: the second mode lies to the right of the first
    assert sim.means[0, 1] > 2.9 and sim.means[2, 0] > 2.9
    assert sim.labels == (0, 0, 0, 0, 1, 1, 2, 3)
    assert sim.obs_dim == 4


def test_labels_of_mode_centres(sim, gen):
    y = sim.simulate(sim.means, generator=gen)
    assert torch.equal(y.argmax(1), torch.tensor([0, 0, 0, 0, 1, 1, 2, 3]))
    assert torch.equal(y.sum(1), torch.ones(8))


def test_label_frequencies_follow_the_grouping(sim, gen):
    x = sim.sample_prior(80_000, generator=gen)
    freq = sim.simulate(x, generator=gen).mean(0)
    assert torch.allclose(freq, torch.tensor([0.5, 0.25, 0.125, 0.125]), atol=0.01)


def test_exact_posterior_matches_rejection_from_the_joint(sim, gen):
    """Samples of p(x | y) equal prior samples whose simulated label is y (the definition of the posterior)."""
    x = sim.sample_prior(100_000, generator=gen)
    y = sim.simulate(x, generator=gen)
    for label in range(4):
        onehot = torch.nn.functional.one_hot(torch.tensor(label), 4).float()
        ref = x[y.argmax(1) == label]
        post = sim.sample_posterior(onehot, 20_000, generator=gen)
        assert torch.allclose(post.mean(0), ref.mean(0), atol=0.08)
        assert torch.allclose(post.std(0), ref.std(0), atol=0.08)


def test_log_likelihood_is_log_of_label_probability(sim, gen):
    x = sim.sample_prior(50, generator=gen)
    probs = torch.stack([sim.log_likelihood(torch.nn.functional.one_hot(torch.tensor(l), 4).float(), x).exp()
                         for l in range(4)], 1)
    assert torch.allclose(probs.sum(1), torch.ones(50), atol=1e-5)
    # the midpoint between modes 3 (label 0) and 4 (label 1) is ambiguous: half-half
    mid = 0.5 * (sim.means[3] + sim.means[4])
    assert math.isclose(sim.log_likelihood(torch.tensor([1.0, 0, 0, 0]), mid[None]).exp().item(), 0.5, abs_tol=1e-4)


def test_config_round_trip_and_custom_layout():
    sim = get_simulator("gaussian_mixture", radius=2.0, sigma=0.1, labels=(0, 1, 1, 2))
    again = get_simulator("gaussian_mixture", **sim.config())
    assert again.config() == sim.config() == {"radius": 2.0, "sigma": 0.1, "labels": [0, 1, 1, 2]}
    assert sim.obs_dim == 3 and torch.allclose(sim.means.norm(dim=1), torch.full((4,), 2.0))
    assert torch.allclose(sim.means[1], torch.tensor([2.0, 0.0]), atol=1e-6)  # clockwise: the second mode to the right


def test_bad_inputs(sim):
    with pytest.raises(ValueError, match="one-hot"):
        sim.sample_posterior(torch.ones(3), 10)
    with pytest.raises(ValueError, match="shape"):
        sim.simulate(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="radius"):
        get_simulator("gaussian_mixture", radius=-1)
    with pytest.raises(ValueError, match="labels"):
        get_simulator("gaussian_mixture", labels=(0, 2, 2))
