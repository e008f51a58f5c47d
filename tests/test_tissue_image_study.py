"""studies/tissue_image_maps.py as a smoke run (a 16 x 16 image), and its scores against known answers."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from _studies import load_study

from sbi_inn.priors import support_bounds
from simulators.tissue_image import tissue_layout
from simulators.tissue_spectra import TissueSpectra


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tissue_image_maps") / "run"
    summary = load_study("tissue_image_maps").main(["--quick", "--out", str(out), "--quiet", "--seed", "0"])
    return out, summary


def test_quick_run_writes_sane_outputs(quick_run):
    out, summary = quick_run
    data = json.loads((out / "tissue_image_maps.json").read_text())
    assert data["settings"]["quick"] and data["settings"]["num_samples"] == 64
    assert data["problem"]["image"]["height"] == 16 and data["training"]["epochs_run"] == 2
    for name in ("image", "posterior", "maps", "figure"):
        assert Path(data["outputs"][name]).stat().st_size > 1000, name
    assert (out / "tissue_image_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sim = TissueSpectra()
    with h5py.File(out / "maps.h5", "r") as f, h5py.File(out / "tissue_image.h5", "r") as g:
        median, width, q = f["median"][()], f["width68"][()], f["quantiles"][()]
        truth = g["truth"][()]
    assert median.shape == truth.shape == (16, 16, 6) and q.shape == (2, 16, 16, 6)
    lo, hi = (b.numpy() for b in support_bounds(sim.prior))
    assert ((median > lo) & (median < hi)).all() and (width > 0).all() and (q[0] <= q[1]).all()
    # the JSON's numbers are those of the files
    so2 = data["scores"]["per_parameter"]["sO2"]
    assert so2["median_abs_error"] == pytest.approx(float(np.median(np.abs(median[..., 0] - truth[..., 0]))))
    inside = (q[0, ..., 0] <= truth[..., 0]) & (truth[..., 0] <= q[1, ..., 0])
    assert so2["coverage68"] == pytest.approx(float(inside.mean()))
    assert all(0 <= s["coverage68"] <= 1 for s in data["scores"]["per_parameter"].values())
    assert data["seconds"]["maps"] > 0 and data["pixels_per_second"] > 0
    assert summary["headline"] == data["headline"]
    control = data["control_prior_draws"]
    assert control["pixels"] == 256 and set(control["per_parameter"]) == set(sim.param_names)
    assert all(0 <= s["coverage68"] <= 1 for s in control["per_parameter"].values())
    with h5py.File(out / "prior_maps.h5", "r") as f, h5py.File(out / "prior_image.h5", "r") as g:
        err = np.abs(f["median"][()][..., 0] - g["truth"][()][..., 0])
    assert control["per_parameter"]["sO2"]["median_abs_error"] == pytest.approx(float(np.median(err)))


def test_a_second_run_refuses_then_reuses_the_posterior_with_the_same_maps(quick_run, tmp_path):
    out, _ = quick_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(SystemExit, match="--force"):
        load_study("tissue_image_maps").main(["--quick", "--out", str(out), "--quiet"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    other = tmp_path / "again"
    load_study("tissue_image_maps").main(["--quick", "--out", str(other), "--quiet", "--posterior",
                                          str(out / "tissue_spectra.sbi")])
    assert not (other / "tissue_spectra.sbi").exists()
    with h5py.File(out / "maps.h5", "r") as f, h5py.File(other / "maps.h5", "r") as g:
        assert np.array_equal(f["median"][()], g["median"][()])       # same image, posterior and seed


def test_score_against_known_answers():
    study = load_study("tissue_image_maps")
    sim = TissueSpectra()
    h = w = 24
    layout = tissue_layout(h, w, seed=0)
    rng = np.random.default_rng(0)
    lo, hi = (b.numpy() for b in support_bounds(sim.prior))
    truth = rng.uniform(lo, hi, (h, w, 6))
    truth = truth.astype(np.float32)
    lower, upper = truth - 0.01, truth + 0.01
    upper[: h // 4] = truth[: h // 4] - 0.005          # a quarter of the rows: truth above the interval
    maps = {"median": truth + 0.02, "mean": truth - 0.03, "point": truth + 0.02, "width68": upper - lower,
            "quantiles": np.stack([lower, upper]), "levels": np.array([0.16, 0.84])}
    s = study.score(maps, truth, sim, layout)
    so2 = s["per_parameter"]["sO2"]
    assert so2["median_abs_error"] == pytest.approx(0.02, abs=1e-6)
    assert so2["median_abs_error_of_mean"] == pytest.approx(0.03, abs=1e-6)
    assert so2["coverage68"] == pytest.approx(0.75)
    assert s["per_parameter"]["a_mie"]["median_abs_error_relative_to_prior_width"] == pytest.approx(0.02 / 45, 1e-3)
    expected = float(np.median(np.abs(0.5 - truth[..., 0])))
    assert so2["median_abs_error_of_prior_mean"] == pytest.approx(expected)
    veins = s["sO2_by_region"]["veins"]
    assert veins["pixels"] == int((layout.vein.numpy() > 0.8).sum()) > 0
    assert veins["median_abs_error"] == pytest.approx(0.02, abs=1e-6)


def test_bad_arguments_are_named(tmp_path):
    study = load_study("tissue_image_maps")
    with pytest.raises(SystemExit):
        study.main(["--size", "4", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        study.main(["--posterior", str(tmp_path / "missing.sbi"), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
