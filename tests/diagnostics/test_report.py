"""The diagnostics report (sbi_inn.diagnostics.report) on a conjugate Normal model whose exact posterior is known.

``x ~ N(0, I_2)``, ``y = x + N(0, 0.5^2 I)``: the posterior is ``N(y / 1.25, 0.2 I)``. A fake posterior object
draws from it (optionally shifted or narrowed), so the report's numbers have known answers.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from sbi_inn import diagnostics
from sbi_inn.diagnostics.report import FILES, Report, report

NOISE = 0.5
POST_STD = math.sqrt(NOISE**2 / (1 + NOISE**2))  # sqrt(0.2)
COLUMNS = ["calib_median", "calib_mean", "calib_signed", "sbc_p", "z_mean", "z_std", "contraction", "map_rmse"]


class GaussianPosterior:
    """The exact posterior of the conjugate model, its mean moved by ``shift`` posterior stds and its std scaled
    by ``widen``; ``prior=True`` ignores the observation and draws from the prior."""

    param_names = ["a", "b"]

    def __init__(self, shift: float = 0.0, widen: float = 1.0, prior: bool = False):
        self.shift, self.widen, self.prior = shift, widen, prior

    def sample_batched(self, sample_shape, Y, *, sizes=None, seed=None, show_progress=False):
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(sample_shape[0], *Y.shape, generator=g)
        if self.prior:
            return eps
        return Y / (1 + NOISE**2) + POST_STD * (self.shift + self.widen * eps)


def simulate(x, *, generator=None):
    return x + NOISE * torch.randn(x.shape, generator=generator)


def data(num_obs: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_obs, 2, generator=g)
    return x, simulate(x, generator=g), torch.randn(20_000, 2, generator=g)


@pytest.fixture(scope="module")
def exact():
    x, y, prior = data(500)
    return x, y, prior, report(GaussianPosterior(), x, y, simulate=simulate, prior_samples=prior, num_samples=400,
                               seed=3, show_progress=False)


def test_metrics_equal_the_diagnostics_computed_directly_from_the_same_samples(exact):
    x, y, prior, rep = exact
    samples = GaussianPosterior().sample_batched((400,), y, seed=3)
    m = rep.metrics
    calib = diagnostics.calibration_summary(samples, x)
    assert m["calibration_error_median"] == calib["median"] and m["calibration_error_mean"] == calib["mean"]
    assert m["calibration_error_signed"] == calib["signed_mean"] and m["calibration_error_max"] == calib["max"]
    assert list(m["calibration_error_per_parameter"].values()) == calib["median_per_parameter"].tolist()
    alphas, inl = diagnostics.calibration_curve(samples, x)
    assert m["calibration_curve"]["alphas"] == alphas.tolist()
    assert m["calibration_curve"]["alpha_inl"]["b"] == inl[:, 1].tolist()
    p = diagnostics.sbc_uniformity(diagnostics.sbc_ranks(samples, x), 400)
    assert list(m["sbc_p_values"].values()) == p.tolist() and m["sbc_min_p_value"] == float(p.min())
    z = diagnostics.posterior_zscore(samples, x)
    assert list(m["zscore_mean"].values()) == z.mean(0).tolist()
    assert list(m["zscore_std"].values()) == z.std(0).tolist()
    c = diagnostics.posterior_contraction(samples, prior.var(0)).mean(0)
    assert list(m["contraction_mean"].values()) == c.tolist()
    assert m["point_estimate"] == "median"  # auto: more than 100 observations
    x_hat = diagnostics.point_estimate(samples, "median")
    assert m["map_error"] == diagnostics.map_error(x_hat, x)
    assert list(m["map_error_per_parameter"].values()) == diagnostics.map_error_per_parameter(x_hat, x).tolist()
    g = torch.Generator().manual_seed(3)
    resim = diagnostics.resimulation_error(simulate, samples, y, generator=g)
    assert m["resimulation_error_mean"] == float(resim.mean())
    assert m["resimulation_error_median"] == float(resim.median())
    assert m["map_resimulation_error"] == float(diagnostics.map_resimulation_error(simulate, x_hat, y,
                                                                                   generator=g).mean())
    assert m["num_observations"] == 500 and m["num_samples"] == 400 and m["seed"] == 3
    json.dumps(m, allow_nan=False)  # JSON-ready


def test_the_exact_posterior_passes_where_shifted_or_narrow_samples_fail():
    """Known answers: calibration error near 0, z-scores N(0, 1), contraction 1 / (1 + s^2) = 0.8, MAP RMSE of the
    posterior mean = the posterior std; a one-std shift or a 0.6-times narrower posterior breaks them."""
    x, y, prior = data(500, seed=1)
    kw = dict(simulate=simulate, prior_samples=prior, num_samples=300, point="mean", seed=0, show_progress=False)
    good = report(GaussianPosterior(), x, y, **kw).metrics
    assert good["calibration_error_median"] < 0.03 and good["sbc_min_p_value"] > 1e-3
    for j in "ab":
        assert abs(good["zscore_mean"][j]) < 0.15 and abs(good["zscore_std"][j] - 1) < 0.1
        assert abs(good["contraction_mean"][j] - 1 / (1 + NOISE**2)) < 0.02
        assert abs(good["map_error_per_parameter"][j] - POST_STD) < 0.05
    shifted = report(GaussianPosterior(shift=1.0), x, y, **kw).metrics
    narrow = report(GaussianPosterior(widen=0.6), x, y, **kw).metrics
    for m in (shifted, narrow):
        assert m["calibration_error_median"] > 0.1 and m["sbc_min_p_value"] < 1e-10
    assert narrow["calibration_error_signed"] < -0.1 and narrow["zscore_std"]["a"] > 1.4  # over-confident
    assert abs(shifted["zscore_mean"]["a"] - 1) < 0.15  # z = (mean - truth) / std, the mean moved up by one std
    prior_only = report(GaussianPosterior(prior=True), x, y, **kw).metrics  # re-simulating prior draws
    assert good["resimulation_error_mean"] < 0.7 * prior_only["resimulation_error_mean"]
    assert prior_only["contraction_mean"]["a"] == pytest.approx(0.0, abs=0.05)


def test_table_rows_columns_and_figures(exact):
    x, y, prior, rep = exact
    assert isinstance(rep, Report) and isinstance(rep.table, pd.DataFrame)
    assert list(rep.table.index) == ["a", "b", "all"] and rep.table.index.name == "parameter"
    assert list(rep.table.columns) == [*COLUMNS, "resim_mean", "resim_median"]
    assert rep.table.loc["all", "resim_mean"] == rep.metrics["resimulation_error_mean"]
    assert rep.table[["resim_mean", "resim_median"]].loc[["a", "b"]].isna().all().all()
    assert rep.table.loc["b", "calib_median"] == rep.metrics["calibration_error_per_parameter"]["b"]
    assert rep.table.loc["all", "sbc_p"] == rep.metrics["sbc_min_p_value"]
    assert rep.table.loc["all", "map_rmse"] == rep.metrics["map_error"]
    assert set(rep.figures) == {"calibration", "sbc", "corner"}
    assert all(isinstance(f, Figure) for f in rep.figures.values())
    assert len(rep.figures["sbc"].axes) == 4 and len(rep.figures["corner"].axes) == 4  # 2 x D, D x D
    assert "| all |" in rep.markdown and "500 test observations, 400 posterior samples" in rep.markdown

    bare = report(GaussianPosterior(), x[:30], y[:30], num_samples=50, show_progress=False, source="f.h5",
                  info={"model": "m.sbi"}, notes=["a note"])
    assert list(bare.table.columns) == [c for c in COLUMNS if c != "contraction"]
    assert bare.metrics["resimulation_error_mean"] is None and bare.metrics["contraction_mean"] is None
    assert bare.notes == ("a note", "contraction left out: no prior samples given")
    assert next(iter(bare.metrics)) == "model" and bare.metrics["point_estimate"] == "mean_shift"
    assert "30 test observations of f.h5" in bare.markdown and "- a note" in bare.markdown


def test_write_writes_every_file_and_refuses_to_overwrite(exact, tmp_path):
    rep = exact[3]
    out = tmp_path / "r" / "deep"
    paths = rep.write(out)
    assert [p.name for p in paths] == list(FILES)
    assert all(p.stat().st_size > 0 for p in paths)
    assert json.loads((out / "metrics.json").read_text()) == rep.metrics
    table = pd.read_csv(out / "metrics.csv", index_col="parameter")
    pd.testing.assert_frame_equal(table, rep.table, check_exact=False, rtol=1e-12)
    assert (out / "metrics.md").read_text() == rep.markdown
    assert (out / "corner.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = {p.name: p.stat().st_mtime_ns for p in paths}
    with pytest.raises(FileExistsError, match="metrics.json exists.*overwrite=True"):
        rep.write(out)
    assert {p.name: p.stat().st_mtime_ns for p in paths} == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "sbc.png").write_text("mine")
    with pytest.raises(FileExistsError, match="sbc.png exists"):
        rep.write(other)
    assert sorted(p.name for p in other.iterdir()) == ["sbc.png"]  # nothing written
    rep.write(other, overwrite=True)
    assert (other / "sbc.png").read_bytes()[:4] == b"\x89PNG"


def test_report_is_exported_and_leaves_the_global_rng_alone():
    assert diagnostics.report is report and diagnostics.Report is Report
    x, y, prior = data(20)
    state = torch.get_rng_state()
    report(GaussianPosterior(), x, y, simulate=simulate, prior_samples=prior, num_samples=30, show_progress=False)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("change, message", [
    ({"x": torch.zeros(5, 3)}, "x has 3 parameters per row but the posterior infers 2"),
    ({"y": torch.zeros(4, 2)}, "x holds 5 ground truths but y holds 4"),
    ({"num_samples": 1}, "num_samples must be an integer >= 2"),
    ({"point": "mode"}, "point must be one of"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"sizes": torch.ones(5, dtype=torch.long), "simulate": simulate}, "pass simulate=None for set-valued"),
    ({"prior_samples": torch.zeros(10, 3)}, r"prior_samples must have shape \(N, 2\)"),
])
def test_bad_arguments_raise_naming_the_problem(change, message):
    kw = {"x": torch.zeros(5, 2), "y": torch.zeros(5, 2), "num_samples": 10, "show_progress": False, **change}
    with pytest.raises(ValueError, match=message):
        report(GaussianPosterior(), kw.pop("x"), kw.pop("y"), **kw)
