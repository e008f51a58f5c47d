"""diagnostics.compare: the side-by-side table of posteriors against references."""

import math

import pandas as pd
import pytest
import torch

from sbi_inn import diagnostics

from .test_metrics import NOISE, POST_STD, conjugate


class _ExactPosterior:
    """A posterior object with the package's sample_batched contract (exact conjugate posterior)."""

    def sample_batched(self, sample_shape, y, *, seed=None):
        mean = torch.as_tensor(y) / (1 + NOISE**2)
        g = torch.Generator().manual_seed(seed)
        return mean + POST_STD * torch.randn(*sample_shape, *mean.shape, generator=g)


def test_compare_builds_the_table():
    samples, x, y, mean = conjugate(6, 60)
    g = torch.Generator().manual_seed(9)
    reference = mean + POST_STD * torch.randn(60, 6, 2, generator=g)
    narrow = mean + 0.3 * (samples - mean)
    df = diagnostics.compare(
        {"exact": samples, "narrow": narrow.numpy(), "object": _ExactPosterior()}, y, x_true=x, reference=reference,
        simulate=lambda t: t, num_samples=60, wall_times={"exact": 1.5}, simulations_used={"exact": 1000},
        point="mean", c2st_options={"folds": 2, "max_iter": 50, "early_stopping": False}, num_bootstrap=20)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == ["exact", "narrow", "object"]
    for col in ["c2st", "c2st_se", "mmd", "mmd_se", "resim_error_mean", "resim_error_mean_se", "resim_error_median",
                "map_resim_error", "calibration_error", "calibration_error_se", "map_error", "map_error_se",
                "wall_time", "simulations"]:
        assert col in df.columns, col
    assert df.loc["exact", "wall_time"] == 1.5 and math.isnan(df.loc["narrow", "wall_time"])
    assert df.loc["narrow", "calibration_error"] > df.loc["exact", "calibration_error"]
    # standard errors come from resampling observations, exactly as bootstrap() over (samples, x_true) does
    expected = diagnostics.bootstrap(diagnostics.calibration_error, samples, x, num_resamples=20, seed=0)
    assert (df.loc["exact", "calibration_error"], df.loc["exact", "calibration_error_se"]) == pytest.approx(expected)
    rmse = diagnostics.map_error(samples.mean(0), x)
    assert df.loc["exact", "map_error"] == pytest.approx(rmse)
    assert df.loc["narrow", "resim_error_mean"] < df.loc["exact", "resim_error_mean"]
    md = diagnostics.to_markdown(df)
    assert md.splitlines()[0].startswith("| method | c2st | mmd |") and "±" in md
    assert len(md.splitlines()) == 2 + 3


def test_compare_with_named_references_and_minimal_columns(tmp_path):
    samples, _, y, _ = conjugate(3, 20)
    df = diagnostics.compare({"a": samples}, y, reference={"abc": samples + 0.1}, two_sample_observations=1,
                             c2st_options={"folds": 2, "max_iter": 30}, num_bootstrap=10)
    assert list(df.columns) == ["c2st_abc", "c2st_abc_se", "mmd_abc", "mmd_abc_se"]
    diagnostics.to_csv(df, tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv", index_col="method")
    assert list(back.index) == ["a"] and back.shape == df.shape
    with pytest.raises(ValueError, match="B = 3 observations"):
        diagnostics.compare({"a": samples[:, :2]}, y)
    with pytest.raises(TypeError, match="sample_batched"):
        diagnostics.compare({"a": object()}, y)
    with pytest.raises(ValueError, match="reference has shape"):
        diagnostics.compare({"a": samples}, y, reference=samples[:, :, :1])
