"""The tissue-oxygenation study (thesis 4.2.3, Table 4.2, Figs. 4.8 / 4.10): its --quick run end to end."""

import json
import math

import pytest
from _studies import load_study

SMALL_ROWS = ["INN", "INN, only L_y, L_z", "INN, only L_x", "INN, noise as parameters", "cINN", "NN", "NN + dropout",
              "ABC", "MCMC", "simulation noise"]
LARGE_ROWS = ["INN", "INN, noise as parameters", "cINN", "NN", "NN + dropout", "ABC", "simulation noise"]
METRICS = ["map_error_sO2", "map_error_recoverable", "map_resim_error", "calibration_error"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("tissue") / "quick"
    mod = load_study("tissue_oxygenation")
    return mod, out, mod.main(["--quick", "--quiet", "--out", str(out)])


def test_quick_run_writes_every_row_and_figure(quick):
    mod, out, res = quick
    for name in ("table.md", "results.json", "fig_4_8_posterior.png", "fig_4_10_calibration.png",
                 "fig_4_10_calibration_large.png"):
        assert (out / name).stat().st_size > 1000, name
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["tables"]) == ["2000", "4000"]
    for budget, expected in (("2000", SMALL_ROWS), ("4000", LARGE_ROWS)):
        rows = {r["method"]: r for r in saved["tables"][budget]}
        assert list(rows) == expected
        for name, row in rows.items():
            if name == "simulation noise":
                assert math.isfinite(row["map_resim_error"]) and row["map_error_sO2"] is None
                continue
            for col in METRICS + ["train_s", "infer_s", "simulations"]:
                if col == "calibration_error" and name == "NN":
                    assert row[col] is None                      # a point estimate has no posterior to calibrate
                    continue
                assert row[col] is not None and math.isfinite(row[col]), (budget, name, col)
                assert row[col] >= 0, (budget, name, col)
    # ABC at the networks' budget: q = 0.005 of 2000 simulations, the same calls as the training set
    assert saved["abc"]["2000"] == {"accepted_per_obs": 10, "simulations": 2000}
    table = (out / "table.md").read_text()
    for name in SMALL_ROWS:
        assert f"| {name} |" in table
    rec = saved["recoverability"]
    assert rec["source"] == "MCMC" and "sO2" in rec["recoverable"] and len(rec["contraction"]) == 6
    assert set(saved["calibration_curves"]["2000"]) == set(SMALL_ROWS) - {"NN", "MCMC", "simulation noise"}


def test_noise_draws_are_the_simulators_own(quick):
    # y = ybar(x) exp(sigma eps): the draws recovered from (x, y) are the simulator's standard normals, and the
    # augmented prior is the box times N(0, I)
    import torch

    from sbi_inn.priors import support_bounds
    from simulators import get_simulator

    mod = quick[0]
    sim = get_simulator("tissue_spectra")
    g = torch.Generator().manual_seed(3)
    x = sim.sample_prior(4000, generator=g)
    y = sim.simulate(x, generator=g)
    eps = mod.noise_draws(sim, x, y)
    assert eps.shape == (4000, sim.obs_dim)
    # a wrong ybar (e.g. bands not normalised) would shift the means by its log-ratio / sigma
    assert eps.mean(0).abs().max() < 0.06 and (eps.std(0) - 1).abs().max() < 0.05
    assert torch.corrcoef(eps.T).fill_diagonal_(0).abs().max() < 0.07  # independent bands
    # the very standard normals TissueSpectra.simulate drew after the prior sample (diffusion mode draws nothing
    # else from the generator); a wrong ybar or sigma would move every one of them
    g = torch.Generator().manual_seed(3)
    sim.sample_prior(4000, generator=g)
    assert torch.allclose(eps, torch.randn(y.shape, generator=g, dtype=x.dtype), atol=1e-4)
    prior = mod.noise_prior(sim)
    draws = prior.sample((20_000,))
    assert draws.shape == (20_000, sim.param_dim + sim.obs_dim)
    assert torch.allclose(draws[:, sim.param_dim:].std(0), torch.ones(sim.obs_dim), atol=0.03)
    lo, hi = support_bounds(sim.prior)
    assert ((draws[:, :sim.param_dim] >= lo) & (draws[:, :sim.param_dim] <= hi)).all()


def test_resimulation_noise_floor_is_sigma_times_chi(quick):
    # true parameters re-simulated noise-free in log space: sigma * ||eps||, E = 0.05 * E chi_8 = 0.05 * 2.74
    _, _, res = quick
    noise = {r["method"]: r for r in res["tables"]["2000"]}["simulation noise"]["map_resim_error"]
    assert noise == pytest.approx(0.05 * 2.7393, rel=0.08)


def test_calibration_floor_matches_the_exact_posterior_value():
    # README: an exactly calibrated posterior scores 0.82 % on average with 1000 observations and 4 parameters
    study = load_study("tissue_oxygenation")
    floor = study.calibration_floor(1000, 4, reps=100, seed=0)
    assert 0.65 < floor["mean"] < 1.0 and floor["q90"] > floor["mean"]
    assert study.calibration_floor(16000, 4, reps=30, seed=0)["mean"] < 0.5 * floor["mean"]  # ~ 1 / sqrt(B)


def test_existing_results_are_refused_without_force(quick):
    mod, out, _ = quick
    with pytest.raises(SystemExit):
        mod.parse_args(["--quick", "--out", str(out)])
    assert mod.parse_args(["--quick", "--out", str(out), "--force"]).force
