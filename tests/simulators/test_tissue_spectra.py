"""Tests for the multispectral tissue-reflectance simulator (thesis 4.2.3)."""

import json
import math

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import get_simulator
from simulators.photon_mc import photon_mc
from simulators.tissue_spectra import (
    C_HB,
    LAYER_PARAMS,
    M_HB,
    MU_A_FLOOR,
    diffuse_reflectance,
    load_hemoglobin_table,
    refractive_index_factor,
)

TYPICAL = [0.7, 0.05, 20.0, 1.3, 0.9, 0.05]  # sO2, v_hb, a_mie [cm^-1], b_mie, g, d [cm]
A14 = refractive_index_factor(1.4)


def typical(n: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(TYPICAL, dtype=dtype).repeat(n, 1)


def band(sim, nm: float) -> int:
    return sim.obs_names.index(f"band_{nm:g}nm")


# -- contract -------------------------------------------------------------------------------------------------------
def test_names_units_prior():
    sim = get_simulator("tissue_spectra")
    assert sim.name == "tissue_spectra"
    assert sim.param_names == ["sO2", "v_hb", "a_mie", "b_mie", "g", "d"]
    assert sim.param_units == ["", "", "cm^-1", "", "", "cm"]
    assert sim.obs_names == ["band_470nm", "band_480nm", "band_511nm", "band_560nm", "band_580nm", "band_600nm",
                             "band_660nm", "band_700nm"]
    assert sim.obs_units == ["relative"] * 8
    assert sim.prior.event_shape == (6,)
    assert torch.allclose(sim.prior.base_dist.low, torch.tensor([p[2] for p in LAYER_PARAMS]))
    assert torch.allclose(sim.prior.base_dist.high, torch.tensor([p[3] for p in LAYER_PARAMS]))
    sim2 = get_simulator("tissue_spectra", num_layers=2)
    assert sim2.param_names[:7] == ["sO2_1", "v_hb_1", "a_mie_1", "b_mie_1", "g_1", "d_1", "sO2_2"]
    assert len(sim2.param_units) == 12 and sim2.prior.event_shape == (12,)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_shapes(num_layers):
    sim = get_simulator("tissue_spectra", num_layers=num_layers)
    x = sim.sample_prior(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 6 * num_layers)
    y = sim.simulate(x, generator=torch.Generator().manual_seed(1))
    assert y.shape == (5, 8) and y.dtype == x.dtype
    assert sim.reflectance(x).shape == (5, len(sim.wavelengths))
    assert sim.reflectance(x, torch.tensor([500.0, 600.0])).shape == (5, 2)
    custom = get_simulator("tissue_spectra", band_centers=[500, 550, 600, 650], band_fwhm=[10, 20, 30, 40])
    assert custom.simulate(typical(3, torch.float32)).shape == (3, 4)


def test_determinism_under_seed():
    sim = get_simulator("tissue_spectra", noise=0.05)
    x = sim.sample_prior(64, generator=torch.Generator().manual_seed(0))
    y1 = sim.simulate(x, generator=torch.Generator().manual_seed(7))
    y2 = sim.simulate(x, generator=torch.Generator().manual_seed(7))
    y3 = sim.simulate(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)
    quiet = get_simulator("tissue_spectra", noise=0.0)
    assert torch.equal(quiet.simulate(x, generator=torch.Generator().manual_seed(1)),
                       quiet.simulate(x, generator=torch.Generator().manual_seed(2)))


def test_prior_draws_finite_positive_normalised():
    gen = torch.Generator().manual_seed(3)
    sim = get_simulator("tissue_spectra", noise=0.0)
    x = sim.sample_prior(10_000, generator=gen)
    y = sim.simulate(x)
    assert torch.isfinite(y).all() and (y > 0).all()
    assert torch.allclose(y.sum(-1), torch.ones(len(y)), atol=1e-5)
    r = sim.reflectance(x[:1000])
    assert ((r > 0) & (r < 1)).all()
    noisy = get_simulator("tissue_spectra", noise=0.05).simulate(x, generator=gen)
    assert torch.isfinite(noisy).all() and (noisy > 0).all()
    for num_layers, base in [(2, "semi_infinite"), (3, "ambient")]:
        sim = get_simulator("tissue_spectra", num_layers=num_layers, base=base, noise=0.0)
        y = sim.simulate(sim.sample_prior(2000, generator=gen))
        assert torch.isfinite(y).all() and (y > 0).all()
        assert torch.allclose(y.sum(-1), torch.ones(len(y)), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6), st.sampled_from(["semi_infinite", "ambient"]))
def test_random_parameters_in_prior_box_give_finite_outputs(u, base):
    sim = get_simulator("tissue_spectra", noise=0.0, base=base)
    lo, hi = sim.prior.base_dist.low.double(), sim.prior.base_dist.high.double()
    x = (lo + torch.tensor(u, dtype=torch.float64) * (hi - lo))[None]
    y = sim.simulate(x)
    assert torch.isfinite(y).all() and (y > 0).all()
    assert abs(float(y.sum()) - 1) < 1e-9


# -- haemoglobin table ----------------------------------------------------------------------------------------------
def _interp(lam_tab, eps, nm):
    return float(np.interp(nm, lam_tab.numpy(), eps.numpy()))


def _peak(lam_tab, eps, lo, hi):
    """Wavelength of the maximum in [lo, hi], refined by a parabola through the three nearest rows."""
    inside = (lam_tab >= lo) & (lam_tab <= hi)
    i = int(torch.nonzero(inside)[int(eps[inside].argmax())])
    y0, y1, y2 = float(eps[i - 1]), float(eps[i]), float(eps[i + 1])
    step = float(lam_tab[i + 1] - lam_tab[i])
    return float(lam_tab[i]) + 0.5 * step * (y0 - y2) / (y0 - 2 * y1 + y2)


def test_hemoglobin_table_sanity():
    lam, hbo2, hb = load_hemoglobin_table()
    assert float(lam[0]) <= 450 and float(lam[-1]) >= 720 and float(lam.diff().max()) <= 10
    assert (hbo2 > 0).all() and (hb > 0).all()
    for nm in (500, 530, 545, 570, 584):  # isosbestic points
        a, b = _interp(lam, hbo2, nm), _interp(lam, hb, nm)
        assert abs(a - b) / max(a, b) < 0.10, nm
    assert abs(_peak(lam, hbo2, 530, 560) - 542) < 3     # HbO2 alpha/beta bands
    assert abs(_peak(lam, hbo2, 565, 590) - 576) < 3
    assert abs(_peak(lam, hb, 545, 570) - 555) < 3       # Hb band
    assert 45_000 < float(hbo2[(lam >= 530) & (lam <= 590)].max()) < 65_000  # Q bands: ~5.3e4 and ~5.6e4
    red = (lam >= 600) & (lam <= 700)
    assert (hb[red] > 3 * hbo2[red]).all()
    # Prahl's conversion: whole blood (150 g/L) at 560 nm, deoxygenated, absorbs ~290 cm^-1
    mu_a = math.log(10) * _interp(lam, hb, 560) * 150 / 64500
    assert 250 < mu_a < 330


# -- photon transport -----------------------------------------------------------------------------------------------
def _col(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_semi_infinite_closed_form_and_layer_consistency():
    mu_a, mu_sp = _col(0.1, 1.0, 10.0, 80.0).T, _col(20.0, 20.0, 20.0, 40.0).T
    g, d = torch.full_like(mu_a, 0.9), torch.full_like(mu_a, 0.1)
    r = diffuse_reflectance(mu_a, mu_sp, g, d, A=A14)
    mu, dmu = torch.sqrt(3 * mu_a * (mu_a + mu_sp)), torch.sqrt(mu_a / (3 * (mu_a + mu_sp)))
    closed = mu_sp * (1 + g) / (mu_a + mu_sp * (1 + g) + mu) / (1 + 2 * A14 * dmu)
    assert torch.allclose(r, closed[0], rtol=1e-12)
    # splitting a homogeneous medium into layers changes nothing; a very thick slab is semi-infinite
    stacked = diffuse_reflectance(mu_a.expand(3, 4), mu_sp.expand(3, 4), g.expand(3, 4),
                                  torch.tensor([[0.01], [0.05], [0.1]]).expand(3, 4).double(), A=A14)
    assert torch.allclose(stacked, r, rtol=1e-10)
    thick = diffuse_reflectance(mu_a, mu_sp, g, torch.full_like(d, 50.0), A=A14, semi_infinite_base=False)
    assert torch.allclose(thick, r, rtol=1e-10)


def _finite_volume(mu_a, mu_sp, g, d, cells=20_000):
    """Brute-force 1-D diffusion solution for layers over an absorbing index-matched medium."""
    edges = np.cumsum([0.0, *d])
    h = edges[-1] / cells
    z = (np.arange(cells) + 0.5) * h
    k = np.searchsorted(edges[1:-1], z)
    ma, ms, gg = np.array(mu_a)[k], np.array(mu_sp)[k], np.array(g)[k]
    D, c = 1 / (3 * (ma + ms)), ma + ms * (1 + gg)
    q = ms * (1 + gg) * np.exp(-(np.cumsum(c * h) - c * h / 2))
    face = 2 * D[:-1] * D[1:] / (D[:-1] + D[1:]) / h
    main = ma * h
    main[:-1] += face
    main[1:] += face
    g_top = 1 / (2 * A14 + h / 2 / D[0])
    main[0] += g_top
    main[-1] += 1 / (2 + h / 2 / D[-1])
    phi = scipy.sparse.linalg.spsolve(scipy.sparse.diags([-face, main, -face], [-1, 0, 1], format="csc"), q * h)
    return g_top * phi[0]


@pytest.mark.parametrize("layers", [
    ([5.0, 0.5], [30.0, 15.0], [0.9, 0.85], [0.03, 0.08]),
    ([5.0, 0.5, 20.0], [30.0, 15.0, 40.0], [0.9, 0.85, 0.8], [0.01, 0.005, 0.1]),
])
def test_multilayer_matches_finite_volume_solution(layers):
    mu_a, mu_sp, g, d = layers
    ours = diffuse_reflectance(_col(*mu_a), _col(*mu_sp), _col(*g), _col(*d), A=A14, semi_infinite_base=False)
    assert float(ours) == pytest.approx(_finite_volume(mu_a, mu_sp, g, d), rel=2e-3)


def test_close_to_farrell_total_diffuse_reflectance():
    albedo = torch.linspace(0.9, 0.999, 50, dtype=torch.float64)[None]
    mu_sp = torch.full_like(albedo, 20.0)
    mu_a = mu_sp * (1 - albedo) / albedo
    s = torch.sqrt(3 * (1 - albedo))
    farrell = albedo / 2 * (1 + torch.exp(-4 / 3 * A14 * s)) * torch.exp(-s)
    for g in (0.8, 0.95):
        ours = diffuse_reflectance(mu_a, mu_sp, torch.full_like(mu_a, g), torch.ones_like(mu_a), A=A14)
        assert ((ours / farrell - 1).abs() < 0.2).all()


# -- physics a broken model fails -----------------------------------------------------------------------------------
def test_more_blood_darkens_green_relative_to_red():
    sim = get_simulator("tissue_spectra", noise=0.0)
    x = typical(12)
    x[:, 1] = torch.linspace(0.01, 0.3, 12)
    y = sim.simulate(x)
    green = y[:, band(sim, 560)] + y[:, band(sim, 580)]
    red = y[:, band(sim, 660)] + y[:, band(sim, 700)]
    ratio = green / red
    assert (ratio.diff() < 0).all() and ratio[-1] < 0.5 * ratio[0]


def test_oxygenation_shifts_560_600_ratios():
    sim = get_simulator("tissue_spectra", noise=0.0)
    x = typical(11)
    x[:, 0] = torch.linspace(0, 1, 11)
    y = sim.simulate(x)
    r600 = y[:, band(sim, 600)] / y[:, band(sim, 580)]
    r560 = y[:, band(sim, 560)] / y[:, band(sim, 580)]
    assert (r600.diff() > 0).all() and r600[-1] > 1.3 * r600[0]  # documented: both rise with sO2
    assert (r560.diff() > 0).all()


def test_reflectance_rises_with_scattering():
    sim = get_simulator("tissue_spectra")
    x = typical(10)
    x[:, 2] = torch.linspace(5, 50, 10)
    r = sim.reflectance(x)
    assert (r.diff(dim=0) > 0).all()
    assert ((r > 0) & (r < 1)).all()


def test_identifiability_sensitivities():
    """Jacobian of log y, scaled by the prior widths: sO2 strong; g below the noise; d none; v_hb ~ a_mie."""
    sim = get_simulator("tissue_spectra", noise=0.05)
    width = (sim.prior.base_dist.high - sim.prior.base_dist.low).double()
    jac = torch.autograd.functional.jacobian(lambda x: sim.band_intensities(x[None])[0].log(), typical()[0])
    cols = jac * width  # (M, D): change of log y over each parameter's whole prior range
    norm = dict(zip(sim.param_names, cols.norm(dim=0).tolist()))
    assert norm["sO2"] > 0.5 and norm["v_hb"] > 0.5 and norm["a_mie"] > 0.5
    assert norm["g"] < 0.1 * norm["sO2"] and float(cols[:, 4].abs().max()) < sim.noise
    assert norm["d"] < 1e-9  # one layer on a semi-infinite base: thickness has no effect
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(cols[:, 1], cols[:, 2], dim=0)) < -0.999  # only v_hb / a_mie is seen
    assert abs(float(cos(cols[:, 0], cols[:, 1], dim=0))) < 0.9
    # an upper layer's thickness matters while the layer is thin, hardly once it is thick
    two = get_simulator("tissue_spectra", num_layers=2)
    x2 = torch.tensor(TYPICAL + [0.3, 0.15, 30.0, 1.0, 0.85, 0.1], dtype=torch.float64)
    w2 = (two.prior.base_dist.high - two.prior.base_dist.low).double()
    sens = []
    for d1 in (0.01, 0.15):
        x2[5] = d1
        j2 = torch.autograd.functional.jacobian(lambda x: two.band_intensities(x[None])[0].log(), x2) * w2
        sens.append(float(j2[:, 5].norm()))
    assert sens[0] > 1.0 and sens[1] < 0.1 * sens[0]


# -- likelihood -----------------------------------------------------------------------------------------------------
def test_log_likelihood_peaks_near_truth_in_so2():
    sim = get_simulator("tissue_spectra", noise=0.05)
    x_true = typical()
    y = sim.simulate(x_true, generator=torch.Generator().manual_seed(11))[0]
    x = typical(101)
    x[:, 0] = torch.linspace(0, 1, 101)
    ll = sim.log_likelihood(y, x)
    assert abs(float(x[ll.argmax(), 0]) - TYPICAL[0]) < 0.1
    assert float(ll.max()) > float(ll[0]) + 10 and float(ll.max()) > float(ll[-1]) + 10
    exact = sim.log_likelihood(sim.band_intensities(x_true)[0], x)
    assert int(exact.argmax()) == 70


def test_log_likelihood_describes_the_simulated_noise():
    sim = get_simulator("tissue_spectra", noise=0.05)
    x = sim.sample_prior(20, generator=torch.Generator().manual_seed(0)).double()
    xs = x.repeat_interleave(200, 0)
    y = sim.simulate(xs, generator=torch.Generator().manual_seed(1))
    ybar = sim.band_intensities(xs)
    z = torch.log(y / ybar) / sim.noise
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03
    ref = scipy.stats.lognorm(s=sim.noise, scale=ybar[:50].numpy()).logpdf(y[:50].numpy()).sum(-1)
    np.testing.assert_allclose(sim.log_likelihood(y[:50], xs[:50]).numpy(), ref, rtol=1e-10)
    bad = typical(2)
    bad[1, 0] = 1.5  # sO2 > 1: zero likelihood instead of an error (MCMC proposals)
    ll = sim.log_likelihood(y[0], bad)
    assert math.isfinite(float(ll[0])) and float(ll[1]) == -math.inf
    assert float(sim.log_likelihood(-y[0], typical())[0]) == -math.inf


def test_no_likelihood_without_noise_and_no_analytic_posterior():
    sim = get_simulator("tissue_spectra", noise=0.0)
    with pytest.raises(NotImplementedError, match="noise=0"):
        sim.log_likelihood(torch.full((8,), 0.125), typical())
    with pytest.raises(NotImplementedError):
        get_simulator("tissue_spectra").sample_posterior(torch.full((8,), 0.125), 10)


# -- configuration and errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    {},
    {"num_layers": 2, "base": "ambient", "noise": 0.02, "refractive_index": 1.36},
    {"band_centers": [500, 550, 600], "band_fwhm": [15, 25, 35], "illumination": [[450, 0.5], [720, 1.5]],
     "wavelength_step": 2.0},
])
def test_config_round_trip(config):
    sim = get_simulator("tissue_spectra", **config)
    cfg = json.loads(json.dumps(sim.config()))
    again = get_simulator("tissue_spectra", **cfg)
    assert again.config() == sim.config()
    x = sim.sample_prior(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sim.simulate(x, generator=torch.Generator().manual_seed(5)),
                       again.simulate(x, generator=torch.Generator().manual_seed(5)))
    assert "TissueSpectra(" in repr(sim)


def test_illumination_weights_bands():
    flat = get_simulator("tissue_spectra", noise=0.0)
    also_flat = get_simulator("tissue_spectra", noise=0.0, illumination=[[400, 2.0], [800, 2.0]])
    tilted = get_simulator("tissue_spectra", noise=0.0, illumination=[[450, 0.1], [720, 3.0]])
    x = typical()
    assert torch.allclose(flat.simulate(x), also_flat.simulate(x), rtol=1e-12)
    assert not torch.allclose(flat.simulate(x), tilted.simulate(x), rtol=1e-4)


def test_bad_parameters_raise():
    sim = get_simulator("tissue_spectra")
    with pytest.raises(ValueError, match="shape"):
        sim.simulate(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="floating"):
        sim.simulate(torch.zeros(3, 6, dtype=torch.int64))
    x = typical()
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sim.simulate(x)
    for j, value in [(0, 1.2), (1, -0.1), (2, 0.0), (4, 1.0), (5, -0.01)]:
        x = typical()
        x[0, j] = value
        with pytest.raises(ValueError, match=sim.param_names[j]):
            sim.simulate(x)
    with pytest.raises(ValueError, match="wavelengths"):
        sim.reflectance(typical(), torch.tensor([400.0]))
    with pytest.raises(ValueError, match="observations"):
        get_simulator("tissue_spectra").log_likelihood(torch.ones(5), typical())


@pytest.mark.parametrize("config, match", [
    ({"noise": -0.1}, "noise"),
    ({"noise": float("nan")}, "noise"),
    ({"method": "mcml"}, "method"),
    ({"photons": 100}, "photons"),
    ({"method": "monte_carlo", "photons": 1}, "photons"),
    ({"method": "monte_carlo", "photons": 2.5}, "photons"),
    ({"base": "mirror"}, "base"),
    ({"num_layers": 4}, "num_layers"),
    ({"num_layers": 0}, "num_layers"),
    ({"band_centers": [500.0]}, "bands"),
    ({"band_centers": [500, 600], "band_fwhm": [10, 20, 30]}, "band_fwhm"),
    ({"band_centers": [300, 600]}, "band_centers"),
    ({"band_fwhm": -5}, "band_fwhm"),
    ({"refractive_index": 0.5}, "refractive_index"),
    ({"wavelength_step": 0.0}, "wavelength_step"),
    ({"illumination": [[450, -1.0], [700, 1.0]]}, "illumination"),
])
def test_bad_config_raises(config, match):
    with pytest.raises(ValueError, match=match):
        get_simulator("tissue_spectra", **config)


# -- Monte Carlo mode -----------------------------------------------------------------------------------------------
# much blood and little scattering keep the random walks short, so a few photons per wavelength run in seconds
BLOODY = [0.3, 0.3, 10.0, 1.0, 0.8, 0.02]


def test_monte_carlo_mode_contract():
    sim = get_simulator("tissue_spectra", method="monte_carlo", photons=30, noise=0.0)
    x = torch.tensor([BLOODY, [0.9] + BLOODY[1:]], dtype=torch.float64)
    y1 = sim.simulate(x, generator=torch.Generator().manual_seed(0))
    y2 = sim.simulate(x, generator=torch.Generator().manual_seed(0))
    y3 = sim.simulate(x, generator=torch.Generator().manual_seed(1))
    assert y1.shape == (2, 8) and y1.dtype == x.dtype
    assert torch.equal(y1, y2)  # the photons come from the generator
    assert not torch.equal(y1, y3)  # Monte Carlo noise is part of the simulation even with noise=0
    assert (y1 > 0).all() and torch.allclose(y1.sum(-1), torch.ones(2, dtype=x.dtype))
    assert sim.simulate(x.float(), generator=torch.Generator().manual_seed(0)).dtype == torch.float32
    assert sim.band_intensities(x, generator=torch.Generator().manual_seed(0)).shape == (2, 8)
    r = sim.reflectance(x, torch.tensor([560.0, 700.0]), generator=torch.Generator().manual_seed(0))
    assert r.shape == (2, 2) and (r[:, 0] < r[:, 1]).all()  # blood absorbs green far more than red
    assert sim.reflectance(x[:0]).shape == (0, len(sim.wavelengths))
    two = get_simulator("tissue_spectra", method="monte_carlo", photons=20, num_layers=2, base="ambient")
    y = two.simulate(torch.tensor([BLOODY + BLOODY], dtype=torch.float64), generator=torch.Generator().manual_seed(2))
    assert y.shape == (1, 8) and (y > 0).all()


@pytest.mark.parametrize("base", ["semi_infinite", "ambient"])
def test_monte_carlo_reflectance_is_photon_mc_of_the_documented_optics(base):
    """The simulator's Monte Carlo reflectance is photon_mc run on the module docstring's optical properties:
    ``n = refractive_index`` in air, semi-infinite base or an index-matched absorbing medium below."""
    sim = get_simulator("tissue_spectra", method="monte_carlo", photons=200, base=base, refractive_index=1.36)
    x = torch.tensor([BLOODY, [0.1, 0.2, 20.0, 1.5, 0.85, 0.01]], dtype=torch.float64)
    lam = torch.tensor([560.0, 700.0], dtype=torch.float64)
    ours = sim.reflectance(x, lam, generator=torch.Generator().manual_seed(3))
    tab_lam, eps_o, eps_d = load_hemoglobin_table()
    rows = [int((tab_lam == v).nonzero()) for v in lam]  # table rows at 10 nm: no interpolation
    so2, v_hb, a_mie, b_mie, g, d = (x[:, j, None] for j in range(6))
    mu_a = (v_hb * (math.log(10) * C_HB / M_HB) * (so2 * eps_o[rows] + (1 - so2) * eps_d[rows])).clamp_min(MU_A_FLOOR)
    mu_s = a_mie * (lam / 500.0) ** (-b_mie) / (1 - g)
    d = (torch.full_like(d, math.inf) if base == "semi_infinite" else d).expand(-1, 2)
    # photons: 200 at the brightest wavelength, more (up to 16x) where the diffusion estimate is dimmer
    pilot = diffuse_reflectance(mu_a[None], (mu_s * (1 - g))[None], g[None], d[None], A=refractive_index_factor(1.36),
                                semi_infinite_base=base == "semi_infinite")
    photons = (200 * (pilot.amax(-1, keepdim=True) / pilot).clamp(1, 16)).round().long().reshape(-1)
    assert int(photons.max()) > 400 and int(photons.min()) == 200
    ref = photon_mc(mu_a.reshape(-1, 1), mu_s.reshape(-1, 1), g.expand(-1, 2).reshape(-1, 1), 1.36,
                    d.reshape(-1, 1), photons=photons, generator=torch.Generator().manual_seed(3), n_below=1.36)
    torch.testing.assert_close(ours, ref.reflectance.reshape(2, 2))


def test_monte_carlo_config_likelihood_and_errors():
    sim = get_simulator("tissue_spectra", method="monte_carlo", photons=500, noise=0.02)
    cfg = json.loads(json.dumps(sim.config()))
    assert cfg["method"] == "monte_carlo" and cfg["photons"] == 500
    assert get_simulator("tissue_spectra", **cfg).config() == sim.config()
    assert "photons" not in get_simulator("tissue_spectra").config()  # diffusion configs are unchanged
    assert get_simulator("tissue_spectra", method="monte_carlo").photons == 1000  # the documented default
    with pytest.raises(NotImplementedError, match="monte_carlo"):
        sim.log_likelihood(torch.full((8,), 0.125), typical())
    with pytest.raises(ValueError, match="sO2"):
        sim.simulate(torch.tensor([[1.5] + BLOODY[1:]]))


@pytest.mark.slow
def test_monte_carlo_and_diffusion_agree_where_diffusion_holds():
    """Red light in a typical tissue (mu_s'/mu_a ~ 45 at 660 nm, ~65 at 700 nm): the 700/660 nm reflectance ratio of
    the two modes agrees within 5 % (measured 2.5 %) and diffusion is 0-12 % high at 700 nm (measured +9 %, as for
    g = 0.9 in test_photon_mc); in the green (560 nm, mu_s'/mu_a ~ 2) diffusion fails: over twice the reflectance."""
    mc = get_simulator("tissue_spectra", method="monte_carlo", photons=2000, noise=0.0)
    dif = get_simulator("tissue_spectra", noise=0.0)
    x = typical()
    r_mc = mc.reflectance(x, torch.tensor([560.0, 660.0, 700.0]), generator=torch.Generator().manual_seed(4))[0]
    r_dif = dif.reflectance(x, torch.tensor([560.0, 660.0, 700.0]))[0]
    assert abs(float(r_mc[2] / r_mc[1]) / float(r_dif[2] / r_dif[1]) - 1) < 0.05
    assert 0 < float(r_dif[2] / r_mc[2]) - 1 < 0.12
    assert float(r_dif[0] / r_mc[0]) > 2
