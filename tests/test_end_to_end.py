"""The main job, ``studies/end_to_end.py`` (README command 1), as a smoke run: its numbers, outputs and refusals."""

import json
from pathlib import Path

import pytest
from _studies import load_study

from simulators import get_simulator


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("end_to_end") / "run"
    summary = load_study("end_to_end").main(["--quick", "--out", str(out), "--quiet", "--seed", "0"])
    return out, summary


def test_quick_run_numbers_are_those_of_a_working_pipeline(quick_run):
    out, summary = quick_run
    data = json.loads((out / "summary.json").read_text())
    assert data["settings"]["quick"] and data["settings"]["num_simulations"] == 4000
    # a broken pipeline (untrained flow, samples of the wrong observation, prior draws) scores C2ST ~0.98 against
    # this thin posterior and a re-simulation error near that of prior draws (~0.9); the smoke run scores ~0.8
    # and ~0.15
    assert 0.5 <= data["c2st"]["mean"] < 0.93
    assert data["headline"] == f"C2ST against the exact posterior: {data['c2st']['mean']:.2f} (0.50 = " \
                               "indistinguishable, 1.00 = completely different)"
    resim = data["resimulation_error"]
    assert resim["prior_samples_mean"] > 0.5
    assert resim["mean"] < 0.25 * resim["prior_samples_mean"]
    # the exact posterior re-simulates to within the noise: ||noise|| for sigma = 0.01 in 2-D averages 0.0125
    assert 0.008 < resim["reference_observations"]["exact_posterior_mean"] < 0.02
    calib = data["calibration_error"]
    assert calib["median"] < 0.12                       # an over- or under-dispersed posterior scores 0.2-0.5
    assert 0.01 < calib["floor_for_perfect_calibration"]["mean"] < 0.08    # 50 observations: about 0.037
    assert data["training"]["epochs_run"] == 40 and data["data"]["num_rows"] == 4000
    for name in ("data", "posterior", "corner", "arm", "calibration", "summary"):
        assert Path(data["outputs"][name]).stat().st_size > 1000, name
    assert summary["c2st"] == data["c2st"]


def test_a_second_run_refuses_to_overwrite_without_force(quick_run):
    out, _ = quick_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(SystemExit, match="--force"):
        load_study("end_to_end").main(["--quick", "--out", str(out), "--quiet"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_simulation_file_of_another_run_is_refused_and_replaced_with_force(tmp_path):
    script = load_study("end_to_end")
    sim = get_simulator("inverse_kinematics", noise=script.NOISE)
    path = tmp_path / "inverse_kinematics.h5"
    assert script.simulate(sim, 300, path, 0, False, False)["num_rows"] == 300
    assert script.simulate(sim, 300, path, 0, False, False)["num_new"] == 0           # the same run: reused
    with pytest.raises(SystemExit, match="holds a run of 300 simulations, this run asks for 500"):
        script.simulate(sim, 500, path, 0, False, False)
    with pytest.raises(SystemExit, match="other settings"):
        script.simulate(sim, 300, path, 1, False, False)
    assert script.simulate(sim, 500, path, 0, True, False)["num_rows"] == 500
    assert script.simulate(sim, 500, path, 1, True, False)["num_new"] == 500


@pytest.mark.slow
def test_the_same_seed_gives_the_same_numbers(quick_run, tmp_path):
    _, first = quick_run
    second = load_study("end_to_end").main(["--quick", "--out", str(tmp_path / "again"), "--quiet", "--seed", "0"])
    for key in ("c2st", "calibration_error", "resimulation_error", "training"):
        assert second[key] == first[key], key
