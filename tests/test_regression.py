"""Point-estimate regressor and its Kendall & Gal variant against the linear-Gaussian posterior (known answer)."""

import math

import pytest
import torch

from sbi_inn.regression import Regressor, RegressorConfig, fit_regressor

SIGMA = 0.5  # y = x + SIGMA eps, x ~ N(0, 1): p(x | y) = N(y / (1 + SIGMA^2), SIGMA^2 / (1 + SIGMA^2))
POST_SLOPE, POST_STD = 1 / (1 + SIGMA**2), math.sqrt(SIGMA**2 / (1 + SIGMA**2))
SMALL = {"hidden": 32, "num_layers": 2, "epochs": 12, "batch_size": 256, "lr": 3e-3, "lr_final": 3e-4}


def _data(n: int = 4000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    return x, x + SIGMA * torch.randn(n, 1, generator=g)


@pytest.fixture(scope="module")
def hetero():
    x, y = _data()
    return fit_regressor(x, y, config={**SMALL, "heteroscedastic": True}, seed=0, show_progress=False)


def test_mse_regressor_learns_the_posterior_mean():
    x, y = _data()
    reg = fit_regressor(x, y, config=SMALL, seed=0, show_progress=False)
    grid = torch.linspace(-1.5, 1.5, 7)[:, None]
    assert torch.allclose(reg.predict(grid), POST_SLOPE * grid, atol=0.06)   # not the identity (slope 1)
    with pytest.raises(ValueError, match="point estimate"):
        reg.sample_batched((10,), grid)


def test_heteroscedastic_head_learns_the_posterior_std(hetero):
    grid = torch.linspace(-1.5, 1.5, 7)[:, None]
    std = hetero.predict_std(grid)
    assert torch.allclose(std, torch.full_like(std, POST_STD), rtol=0.12)
    s = hetero.sample_batched((4000,), grid, seed=3)                            # (n, B, D), aleatoric noise only
    assert s.shape == (4000, 7, 1)
    assert torch.allclose(s.std(0), std, rtol=0.06)
    assert torch.allclose(s.mean(0), hetero.predict(grid), atol=0.03)
    assert torch.equal(s, hetero.sample_batched((4000,), grid, seed=3))         # seeded
    assert not torch.equal(s, hetero.sample_batched((4000,), grid, seed=4))


def test_mc_dropout_masks_vary_per_draw_and_are_seeded():
    x, y = _data(3000)
    reg = fit_regressor(x, y, config={**SMALL, "epochs": 5, "dropout": 0.2}, seed=1, show_progress=False)
    s = reg.sample_batched((200,), torch.zeros(3, 1), seed=0)
    assert s.shape == (200, 3, 1)
    assert (s.std(0) > 1e-3).all()                                              # epistemic spread from the masks
    assert (s[:, 0] != s[:, 1]).any()                                           # a mask per draw and observation
    assert torch.equal(s, reg.sample_batched((200,), torch.zeros(3, 1), seed=0))


def test_training_is_reproducible_and_leaves_the_global_rng_alone():
    x, y = _data(1000)
    state = torch.random.get_rng_state()
    a = fit_regressor(x, y, config={**SMALL, "epochs": 2}, seed=5, show_progress=False)
    assert torch.equal(state, torch.random.get_rng_state())
    b = fit_regressor(x, y, config={**SMALL, "epochs": 2}, seed=5, show_progress=False)
    grid = torch.linspace(-1, 1, 5)[:, None]
    assert torch.equal(a.predict(grid), b.predict(grid))
    assert isinstance(a, Regressor) and len(a.history) == 2


def test_bad_input_is_named():
    x, y = _data(100)
    with pytest.raises(ValueError, match="same number of rows"):
        fit_regressor(x, y[:50], show_progress=False)
    with pytest.raises(ValueError, match="finite"):
        fit_regressor(x, y.masked_fill(y > 1, math.nan), show_progress=False)
    with pytest.raises(TypeError):
        fit_regressor(x, y, config={"hiden": 3}, show_progress=False)
    with pytest.raises(ValueError, match="dropout"):
        RegressorConfig(dropout=1.0)
    reg = fit_regressor(x, y, config={**SMALL, "epochs": 1}, show_progress=False)
    with pytest.raises(ValueError, match=r"shape \(B, M\)"):
        reg.predict(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        reg.predict(torch.tensor([[math.nan]]))
    with pytest.raises(ValueError, match="heteroscedastic"):
        reg.predict_std(torch.zeros(1, 1))
