"""Tests for the model subcommands of ``sbi-inn``: train, sample and diagnose (sbi_inn.cli).

One tiny inverse-kinematics file and a tiny model (a few epochs, one torch thread) run the whole chain
simulate -> train -> sample -> diagnose through ``main([...])``, as a user's shell would.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from sbi_inn import HDF5Dataset, diagnostics, load_hdf5, load_posterior
from sbi_inn.cli import main
from sbi_inn.registry import load_simulator

SMALL = ["--blocks", "2", "--hidden", "32", "--batch-size", "256", "--threads", "1", "--quiet"]
NAMES = ["rail", "angle1", "angle2", "angle3"]


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A training file, a test file and a cINN trained on the first with a checkpoint directory."""
    d = tmp_path_factory.mktemp("cli_models")
    train_h5, test_h5 = d / "ik.h5", d / "ik_test.h5"
    assert run("simulate", "inverse_kinematics", "-n", 2000, "-o", train_h5, "--config", "noise=0.01",
               "--quiet") == 0
    assert run("simulate", "inverse_kinematics", "-n", 200, "-o", test_h5, "--config", "noise=0.01", "--seed", 1,
               "--quiet") == 0
    model = d / "ik.sbi"
    train_argv = ["train", train_h5, "-o", model, "--epochs", 3, "--checkpoint-dir", d / "ckpt", *SMALL]
    assert run(*train_argv) == 0
    return {"dir": d, "train": train_h5, "test": test_h5, "model": model, "train_argv": train_argv}


def test_train_prints_a_summary_and_resumes_from_its_checkpoint(files, tmp_path, capsys):
    again = tmp_path / "again.sbi"
    argv = [a if a != files["model"] else again for a in files["train_argv"] if a != "--quiet"]
    assert run(*argv) == 0  # the checkpoint is complete: nothing left to train, same weights
    out = capsys.readouterr().out
    assert "3 epochs" in out and "validation loss" in out and str(again) in out
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for model, path in ((files["model"], a), (again, b)):
        assert run("sample", model, "--obs", files["test"], "-n", 20, "-o", path, "--seed", 3, "--quiet") == 0
    np.testing.assert_array_equal(np.load(a), np.load(b))


def test_train_the_bidirectional_inn(files, tmp_path, capsys):
    model = tmp_path / "inn.sbi"
    assert run("train", files["train"], "-o", model, "--method", "inn", "--epochs", 2, "--lr", "2e-3",
               *SMALL[:-1]) == 0
    assert "inn posterior" in capsys.readouterr().out
    out = tmp_path / "s.npy"
    assert run("sample", model, "--obs", files["test"], "--rows", "0:4", "-n", 10, "-o", out, "--quiet") == 0
    assert np.load(out).shape == (10, 4, 4)


def test_sample_reads_npy_csv_and_hdf5_and_writes_npy_csv_and_hdf5(files, tmp_path, capsys):
    y = np.array([[0.5, 1.5], [0.1, 1.0], [-0.2, 1.8]], dtype=np.float32)
    np.save(tmp_path / "one.npy", y[0])
    np.save(tmp_path / "three.npy", y)
    (tmp_path / "obs.csv").write_text("end_x,end_y\n" + "\n".join(f"{a},{b}" for a, b in y) + "\n")
    model = files["model"]

    assert run("sample", model, "--obs", tmp_path / "three.npy", "-n", 50, "-o", tmp_path / "s.npy") == 0
    assert "(50, 3, 4)" in capsys.readouterr().out
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (50, 3, 4) and np.isfinite(s).all()

    assert run("sample", model, "--obs", tmp_path / "one.npy", "-n", 50, "-o", tmp_path / "one_s.npy",
               "--quiet") == 0
    assert np.load(tmp_path / "one_s.npy").shape == (50, 1, 4)

    assert run("sample", model, "--obs", tmp_path / "obs.csv", "-n", 40, "-o", tmp_path / "s.csv", "--quiet") == 0
    df = pd.read_csv(tmp_path / "s.csv")
    assert list(df.columns) == ["observation", *NAMES] and len(df) == 40 * 3
    assert sorted(df["observation"].unique()) == [0, 1, 2]

    assert run("sample", model, "--obs", files["test"], "--split", "test", "--rows", "2:7", "-n", 30, "-o",
               tmp_path / "s.h5", "--quiet") == 0
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["samples"].shape == (30, 5, 4)
        assert list(f.attrs["param_names"]) == NAMES

    same = tmp_path / "again.npy"  # same seed, same samples
    assert run("sample", model, "--obs", tmp_path / "three.npy", "-n", 50, "-o", same, "--quiet") == 0
    np.testing.assert_array_equal(np.load(same), s)


def test_diagnose_writes_the_report(files, tmp_path, capsys):
    report = tmp_path / "report"
    assert run("diagnose", files["model"], "--data", files["test"], "-o", report, "--num-obs", 40,
               "--num-samples", 100, "--threads", 1, "--quiet") == 0
    out = capsys.readouterr().out
    assert "| parameter |" in out and "| all |" in out and "resim_mean" in out
    for name in ("metrics.json", "metrics.csv", "metrics.md", "calibration.png", "sbc.png", "corner.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("calibration_error_median", "calibration_error_mean", "calibration_error_signed",
                "calibration_curve", "sbc_p_values", "zscore_mean", "contraction_mean", "map_error",
                "resimulation_error_mean", "resimulation_error_median", "notes"):
        assert key in metrics, key
    assert metrics["num_observations"] == 40 and metrics["num_samples"] == 100
    assert metrics["point_estimate"] == "mean_shift"
    assert metrics["simulator"]["name"] == "inverse_kinematics" and metrics["simulator"]["config"]["noise"] == 0.01
    assert set(metrics["sbc_p_values"]) == set(NAMES)
    table = pd.read_csv(report / "metrics.csv", index_col="parameter")
    assert list(table.index) == [*NAMES, "all"] and "calib_median" in table.columns

    # the same numbers from the same samples (`sample` with the same seed), computed directly
    assert run("sample", files["model"], "--obs", files["test"], "--rows", "0:40", "-n", 100, "-o",
               tmp_path / "s.npy", "--quiet") == 0
    samples = torch.from_numpy(np.load(tmp_path / "s.npy"))
    test = load_hdf5(files["test"])
    x, y = test["x"][:40], test["y"][:40]
    calib = diagnostics.calibration_summary(samples, x)
    assert metrics["calibration_error_median"] == pytest.approx(calib["median"], abs=1e-12)
    assert metrics["calibration_error_signed"] == pytest.approx(calib["signed_mean"], abs=1e-12)
    simulate = load_simulator("inverse_kinematics", noise=0.01).simulate
    resim = diagnostics.resimulation_error(simulate, samples, y, generator=torch.Generator().manual_seed(0))
    assert metrics["resimulation_error_mean"] == pytest.approx(float(resim.mean()), rel=1e-6)
    assert metrics["resimulation_error_median"] == pytest.approx(float(resim.median()), rel=1e-6)

    with pytest.raises(SystemExit) as exc:  # an earlier report is not overwritten without --force
        run("diagnose", files["model"], "--data", files["test"], "-o", report, "--num-obs", 5, "--num-samples", 10)
    assert exc.value.code == 2 and "--force" in capsys.readouterr().err
    assert json.loads((report / "metrics.json").read_text()) == metrics


def test_diagnose_on_the_training_file_says_so_and_rebuilds_a_named_simulator(files, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "corner.png").write_text("an earlier report's figure")
    assert run("diagnose", files["model"], "--data", files["train"], "-o", tmp_path / "r", "--num-obs", 150,
               "--num-samples", 20, "--simulator", "inverse_kinematics", "--config", "noise=0.01", "--force",
               "--quiet") == 0
    out = capsys.readouterr().out
    assert "the file the model was trained on" in out
    assert (tmp_path / "r" / "corner.png").read_bytes()[:4] == b"\x89PNG"  # replaced with --force
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["point_estimate"] == "median" and metrics["num_observations"] == 150


def _bad_inputs(tmp, model):
    wide = tmp / "wide.npy"
    np.save(wide, np.zeros((2, 3), np.float32))
    text = tmp / "words.csv"
    text.write_text("a,b\nc,d\n")
    np.save(tmp / "complex.npy", np.zeros((2, 2), np.complex64) + 1j)
    broken = load_posterior(model)
    with torch.no_grad():
        next(p for p in broken.model.parameters() if p.ndim == 2).fill_(float("nan"))
    broken.save(tmp / "nan.sbi")
    return wide, text


@pytest.mark.parametrize("argv, message", [
    (["train", "{tmp}/missing.h5", "-o", "{tmp}/m.sbi"], "no such simulation file"),
    (["train", "{train}", "-o", "{tmp}/m.sbi", "--method", "nf"], "invalid choice: 'nf'"),
    (["train", "{train}", "-o", "{tmp}/m.sbi", "--epochs", "0"], "expected a positive int"),
    (["sample", "{tmp}/missing.sbi", "--obs", "{test}", "-n", "5", "-o", "{tmp}/s.npy"], "no posterior file"),
    (["sample", "{model}", "--obs", "{tmp}/missing.npy", "-n", "5", "-o", "{tmp}/s.npy"], "no such file"),
    (["sample", "{model}", "--obs", "{tmp}/wide.npy", "-n", "5", "-o", "{tmp}/s.npy"],
     "observations have shape (3,) but the model takes (2,)"),
    (["sample", "{model}", "--obs", "{tmp}/words.csv", "-n", "5", "-o", "{tmp}/s.npy"], "cannot read the CSV"),
    (["sample", "{model}", "--obs", "{test}", "-n", "5", "-o", "{tmp}/s.txt"], "-o must end in .npy"),
    (["sample", "{model}", "--obs", "{test}", "--rows", "500:600", "-n", "5", "-o", "{tmp}/s.npy"],
     "selects none of the 200"),
    (["sample", "{model}", "--obs", "{test}", "--rows", "x", "-n", "5", "-o", "{tmp}/s.npy"], "--rows expects"),
    (["sample", "{model}", "--obs", "{test}", "-n", "5", "-o", "{tmp}/s.npy", "--device", "tpu"],
     "invalid choice: 'tpu'"),
    (["diagnose", "{model}", "--data", "{tmp}/missing.h5", "-o", "{tmp}/r"], "no such simulation file"),
    (["diagnose", "{model}", "--data", "{test}", "-o", "{tmp}/r", "--simulator", "nope"], "unknown simulator"),
    (["diagnose", "{model}", "--data", "{test}", "-o", "{tmp}/r", "--config", "noise=1"], "--config needs"),
    (["train", "{train}", "-o", "{tmp}/m.sbi", "--checkpoint-dir", "{tmp}/words.csv"], "is a file, not a directory"),
    (["sample", "{model}", "--obs", "{tmp}/complex.npy", "-n", "5", "-o", "{tmp}/s.npy"], "expected real numbers"),
    (["sample", "{tmp}/nan.sbi", "--obs", "{test}", "-n", "5", "-o", "{tmp}/s.npy"], "hold NaN or inf"),
])
def test_bad_input_exits_with_code_2_and_one_clear_line(files, tmp_path, capsys, argv, message):
    _bad_inputs(tmp_path, files["model"])
    words = (tmp_path / "words.csv").read_bytes()
    argv = [a.format(tmp=tmp_path, train=files["train"], test=files["test"], model=files["model"]) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert message in err, err
    assert "Traceback" not in err
    assert (tmp_path / "words.csv").read_bytes() == words and not (tmp_path / "s.npy").exists()


def test_no_command_writes_over_a_file_without_force_and_never_over_its_inputs(files, tmp_path, capsys):
    """train and sample refuse an existing output unless --force, and refuse to write over their own inputs (the
    simulation file, the model, the observations) even with it, before any work; the victims stay byte-identical."""
    victims = {p: p.read_bytes() for p in (files["train"], files["model"], files["test"])}
    existing = tmp_path / "mine.npy"
    existing.write_bytes(b"a user's file")
    cases = [
        (["train", files["train"], "-o", files["train"], "--epochs", 1, *SMALL], "inputs"),
        (["train", files["train"], "-o", files["train"], "--epochs", 1, "--force", *SMALL], "inputs"),
        (["train", files["train"], "-o", files["model"], "--epochs", 1, *SMALL], "exists; pass --force"),
        (["train", files["train"], "-o", tmp_path, "--epochs", 1, *SMALL], "is a directory"),
        (["sample", files["model"], "--obs", files["test"], "-n", 5, "-o", existing, "--quiet"], "exists"),
        (["sample", files["model"], "--obs", files["test"], "-n", 5, "-o", files["test"], "--force"], "inputs"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            run(*argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err, (argv, err)
    assert all(p.read_bytes() == content for p, content in victims.items())
    assert existing.read_bytes() == b"a user's file"
    assert run("sample", files["model"], "--obs", files["test"], "-n", 5, "-o", existing, "--force", "--quiet") == 0
    assert np.load(existing).shape == (5, 200, 4)  # replaced on request


@pytest.mark.parametrize("command, words", [
    ("train", ["--method", "--minutes", "--epochs", "--checkpoint-dir", "--seed", "--quiet"]),
    ("sample", ["--obs", "--rows", "--split", "--seed", ".npy", ".h5", ".csv"]),
    ("diagnose", ["--data", "--num-obs", "--num-samples", "--simulator", "--config", "--seed"]),
])
def test_help(command, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sbi-inn {command}")
    for word in words:
        assert word in out, word


def test_set_valued_files_sample_and_diagnose_without_resimulation(tmp_path, capsys):
    data, model = tmp_path / "sets.h5", tmp_path / "sets.sbi"
    assert run("simulate", "gaussian_sets", "-n", 400, "-o", data, "--quiet") == 0
    assert run("train", data, "-o", model, "--epochs", 1, "--blocks", 2, "--hidden", 16, "--threads", 1,
               "--quiet") == 0
    padded = np.full((2, 5, 1), np.nan, np.float32)  # two sets of sizes 3 and 5, NaN rows as padding
    padded[0, :3], padded[1] = [[0.1], [0.2], [0.3]], [[1.0], [1.1], [0.9], [1.2], [1.0]]
    np.save(tmp_path / "sets.npy", padded)
    assert run("sample", model, "--obs", tmp_path / "sets.npy", "-n", 10, "-o", tmp_path / "s.npy", "--quiet") == 0
    assert np.load(tmp_path / "s.npy").shape == (10, 2, 2)
    assert run("diagnose", model, "--data", data, "--split", "test", "--num-obs", 30, "--num-samples", 40, "-o",
               tmp_path / "r", "--threads", 1, "--quiet") == 0
    assert "re-simulation skipped: set-valued" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["resimulation_error_mean"] is None
    # the calibration of the same samples (`sample` with the same seed and rows), computed directly
    assert run("sample", model, "--obs", data, "--split", "test", "--rows", "0:30", "-n", 40, "-o",
               tmp_path / "test_s.npy", "--quiet") == 0
    samples = torch.from_numpy(np.load(tmp_path / "test_s.npy"))
    x = HDF5Dataset(data, "test").get_batch(list(range(30)))[0]
    calib = diagnostics.calibration_summary(samples, x)
    assert metrics["calibration_error_median"] == pytest.approx(calib["median"], abs=1e-12)
    assert list(metrics["calibration_error_per_parameter"].values()) == pytest.approx(
        calib["median_per_parameter"].tolist(), abs=1e-12)
