"""Re-simulation error, point estimates and their errors, z-score, contraction, bootstrap."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn import diagnostics
from simulators.inverse_kinematics import InverseKinematics

NOISE = 0.5
POST_STD = math.sqrt(NOISE**2 / (1 + NOISE**2))


def conjugate(num_obs: int, num_samples: int, dim: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_obs, dim, generator=g)
    y = x + NOISE * torch.randn(num_obs, dim, generator=g)
    mean = y / (1 + NOISE**2)
    return mean + POST_STD * torch.randn(num_samples, num_obs, dim, generator=g), x, y, mean


# -- re-simulation error ---------------------------------------------------------------------------------------------
def test_resimulation_error_is_zero_for_exact_inverses_and_chunked():
    sim = InverseKinematics()
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(7, 3, 4, generator=g)                                         # (n, B, D)
    y_obs = sim.forward_kinematics(x[0])                                               # (B, M)
    d = diagnostics.resimulation_error(sim.simulate, x, y_obs, chunk_size=4)
    assert d.shape == (7, 3)
    assert d[0].abs().max() < 1e-6
    manual = (sim.forward_kinematics(x.reshape(-1, 4)).reshape(7, 3, 2) - y_obs).norm(dim=-1)
    torch.testing.assert_close(d, manual)
    single = diagnostics.resimulation_error(sim, x[:, 1], y_obs[1])
    torch.testing.assert_close(single, manual[:, 1])
    m = diagnostics.map_resimulation_error(sim.simulate, x[2], y_obs)
    torch.testing.assert_close(m, manual[2])


def test_resimulation_error_accepts_numpy_simulators_and_checks_shapes():
    d = diagnostics.resimulation_error(lambda x: np.asarray(x) * 2.0, np.ones((4, 2, 1)), np.full((2, 1), 5.0))
    assert isinstance(d, torch.Tensor) and torch.allclose(d, torch.full((4, 2), 3.0, dtype=d.dtype))
    with pytest.raises(ValueError, match=r"y_obs must have shape \(B, M\) with B = 2"):
        diagnostics.resimulation_error(lambda x: x, torch.ones(4, 2, 1), torch.ones(3, 1))
    with pytest.raises(ValueError, match="simulate returns observations of dimension 1"):
        diagnostics.resimulation_error(lambda x: x, torch.ones(4, 2, 1), torch.ones(2, 3))
    with pytest.raises(ValueError, match="samples contains NaN"):
        diagnostics.resimulation_error(lambda x: x, torch.full((4, 2, 1), math.nan), torch.ones(2, 1))
    with pytest.raises(ValueError, match="samples is empty"):
        diagnostics.resimulation_error(lambda x: x, torch.ones(0, 2, 1), torch.ones(2, 1))


# -- point estimates -------------------------------------------------------------------------------------------------
def test_map_error_is_rmse_over_the_chosen_subspace():
    x_map = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    x_true = torch.tensor([[3.0, 4.0, 1.0], [1.0, 1.0, 3.0]])
    assert diagnostics.map_error(x_map, x_true) == pytest.approx(math.sqrt((25 + 1 + 4) / 2))
    assert diagnostics.map_error(x_map, x_true, params=[0, 1]) == pytest.approx(math.sqrt(25 / 2))
    assert diagnostics.map_error(x_map, x_true, params=[0]) == pytest.approx(math.sqrt(9 / 2))
    per = diagnostics.map_error_per_parameter(x_map, x_true)
    torch.testing.assert_close(per, torch.tensor([math.sqrt(4.5), math.sqrt(8.0), math.sqrt(2.5)]))
    with pytest.raises(ValueError, match="same shape"):
        diagnostics.map_error(x_map, x_true[:1])
    with pytest.raises(ValueError, match="params must be"):
        diagnostics.map_error(x_map, x_true, params=[5])


def test_mean_shift_finds_the_highest_mode():
    g = torch.Generator().manual_seed(0)
    # 70 % of mass around +2, 30 % around -2, for two observations, 2-D
    comp = (torch.rand(2000, 2, 1, generator=g) < 0.7).float()
    samples = comp * 2.0 + (1 - comp) * -2.0 + 0.3 * torch.randn(2000, 2, 2, generator=g)
    mode = diagnostics.mean_shift(samples)
    assert mode.shape == (2, 2)
    assert (mode - 2.0).abs().max() < 0.15
    # the mean lies between the modes, the median near the bigger one
    assert (diagnostics.point_estimate(samples, "mean") - 0.8).abs().max() < 0.15
    assert diagnostics.point_estimate(samples, "median").shape == (2, 2)
    with pytest.raises(ValueError, match="method must be"):
        diagnostics.point_estimate(samples, "mode")


def test_zscore_and_contraction_of_conjugate_posterior():
    samples, x, _, _ = conjugate(2000, 200)
    z = diagnostics.posterior_zscore(samples, x)
    assert z.shape == (2000, 2)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1       # calibrated: z ~ N(0, 1)
    prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    c = diagnostics.posterior_contraction(samples, prior)
    expected = 1 - POST_STD**2
    assert abs(c.mean() - expected) < 0.02
    torch.testing.assert_close(c, diagnostics.posterior_contraction(samples, torch.ones(2)))
    with pytest.raises(ValueError, match=r"prior variance must have shape \(D,\)"):
        diagnostics.posterior_contraction(samples, torch.ones(3))


# -- bootstrap -------------------------------------------------------------------------------------------------------
def test_bootstrap_std_error_of_a_mean_matches_analytic():
    g = torch.Generator().manual_seed(0)
    values = 2.0 * torch.randn(400, generator=g, dtype=torch.float64)
    value, se = diagnostics.bootstrap(lambda v: v.mean(), values, num_resamples=1000, seed=1)
    assert isinstance(value, float) and isinstance(se, float)
    assert value == pytest.approx(float(values.mean()))
    analytic = float(values.std()) / math.sqrt(len(values))
    assert se == pytest.approx(analytic, rel=0.1)
    again = diagnostics.bootstrap(lambda v: v.mean(), values.numpy(), num_resamples=1000, seed=1)
    assert again == (value, se)


def test_bootstrap_resamples_observations_of_samples_and_truth_together():
    samples, x, _, _ = conjugate(100, 50)
    value, se = diagnostics.bootstrap(diagnostics.calibration_error, samples, x, num_resamples=20)
    assert value == pytest.approx(diagnostics.calibration_error(samples, x))
    assert 0 < se < 0.1
    vec, vec_se = diagnostics.bootstrap(lambda v: v.mean(0), x, num_resamples=50)
    assert vec.shape == vec_se.shape == (2,)
    with pytest.raises(ValueError, match="share the test-set axis"):
        diagnostics.bootstrap(diagnostics.calibration_error, samples, x[:10])
