"""The 4-DoF inverse-kinematics arm (thesis sec. 4.2.2, eqs. 4.3-4.4; app. B.3)."""

import math

import pytest
import torch

from simulators import get_simulator


def test_zero_pose_ends_at_0_2():
    sim = get_simulator("inverse_kinematics")
    assert torch.allclose(sim.simulate(torch.zeros(1, 4)), torch.tensor([[0.0, 2.0]]))


def test_known_poses_match_eqs_4_3_4_4():
    sim = get_simulator("inverse_kinematics")
    # rail shift moves the end point horizontally; a first joint of +90 degrees lays the whole arm to the right
    y = sim.simulate(torch.tensor([[0.3, 0.0, 0.0, 0.0], [0.0, math.pi / 2, math.pi / 2, 0.0]]))
    # second row: a2 = x3 - x2 = 0 (segment 2 points up), a3 = x4 - x2 - x3 = -pi (segment 3 points down)
    expected = torch.tensor([[0.3, 2.0], [0.5, 0.5 - 1.0]])
    assert torch.allclose(y, expected, atol=1e-6)


def test_joint_positions_end_at_simulated_point(gen):
    sim = get_simulator("inverse_kinematics")
    x = sim.sample_prior(100, generator=gen)
    joints = sim.joint_positions(x)
    assert joints.shape == (100, 4, 2)
    assert torch.allclose(joints[:, -1], sim.simulate(x), atol=1e-6)
    seg = (joints[:, 1:] - joints[:, :-1]).norm(dim=-1)
    assert torch.allclose(seg, torch.tensor([0.5, 0.5, 1.0]).expand(100, 3), atol=1e-5)


def test_prior_scales_from_appendix_b3(gen):
    sim = get_simulator("inverse_kinematics")
    x = sim.sample_prior(200_000, generator=gen)
    assert torch.allclose(x.std(0), torch.tensor([0.25, 0.5, 0.5, 0.5]), rtol=0.01)


def test_determinism_and_noise(gen):
    sim = get_simulator("inverse_kinematics", noise=0.05)
    x = sim.sample_prior(1000, generator=gen)
    a = sim.simulate(x, generator=torch.Generator().manual_seed(3))
    b = sim.simulate(x, generator=torch.Generator().manual_seed(3))
    c = sim.simulate(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    resid = a - sim.forward_kinematics(x)
    assert abs(resid.std().item() - 0.05) < 0.005


def test_log_likelihood_is_gaussian_and_needs_noise(gen):
    sim = get_simulator("inverse_kinematics", noise=0.1)
    x = sim.sample_prior(5, generator=gen)
    y = sim.forward_kinematics(x[:1])[0] + torch.tensor([0.1, -0.2])
    ll = sim.log_likelihood(y, x[:1])
    expected = torch.distributions.Normal(sim.forward_kinematics(x[:1])[0], 0.1).log_prob(y).sum()
    assert torch.allclose(ll, expected[None], atol=1e-5)
    assert sim.log_likelihood(y, x).shape == (5,)
    with pytest.raises(NotImplementedError, match="noise"):
        get_simulator("inverse_kinematics").log_likelihood(y, x)
    with pytest.raises(NotImplementedError):
        sim.sample_posterior(y, 10)


@pytest.mark.parametrize("bad", [torch.zeros(3, 5), torch.zeros(4), torch.full((2, 4), float("nan")),
                                 torch.zeros(2, 4, dtype=torch.long)])
def test_bad_parameters_raise(bad):
    sim = get_simulator("inverse_kinematics")
    with pytest.raises((ValueError, TypeError), match="inverse_kinematics"):
        sim.simulate(bad)


@pytest.mark.parametrize("cfg", [{"noise": -1.0}, {"noise": float("nan")}, {"lengths": (1.0, -1.0, 1.0)},
                                 {"prior_scales": (1.0, 1.0)}])
def test_bad_config_raises(cfg):
    with pytest.raises(ValueError, match="inverse_kinematics"):
        get_simulator("inverse_kinematics", **cfg)


def test_config_round_trip():
    sim = get_simulator("inverse_kinematics", noise=0.02, lengths=(0.4, 0.6, 1.0))
    again = get_simulator("inverse_kinematics", **sim.config())
    x = torch.randn(10, 4)
    assert torch.equal(sim.forward_kinematics(x), again.forward_kinematics(x))
    assert again.config() == sim.config()
