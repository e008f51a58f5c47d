"""Every plot renders, returns a Figure, and writes a non-empty PNG; bad input raises clear errors."""

import math

import pytest
import torch
from matplotlib.figure import Figure

from sbi_inn import diagnostics, plots
from simulators.gaussian_mixture import GaussianMixture
from simulators.inverse_kinematics import InverseKinematics


def _png_ok(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


def test_corner_plot_overlays_methods_with_truth_and_prior(tmp_path, g):
    samples = {"INN": torch.randn(500, 3, generator=g), "ABC": (0.5 * torch.randn(300, 3, generator=g) + 1).numpy()}
    fig = plots.corner_plot(samples, truth=torch.zeros(3), prior_samples=2 * torch.randn(800, 3, generator=g),
                            param_names=["a", "b", "c"], units=["m", "", "s"], path=tmp_path / "corner.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 9
    assert _png_ok(tmp_path / "corner.png")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["INN", "ABC", "truth", "prior"]
    assert fig.axes[6].get_xlabel() == "a [m]"
    one = plots.corner_plot(torch.randn(100, 1, generator=g))            # a single set, one parameter
    assert len(one.axes) == 1


def test_calibration_and_sbc_plots(tmp_path, g):
    samples = torch.randn(100, 200, 2, generator=g)
    x = torch.randn(200, 2, generator=g)
    alphas, inl = diagnostics.calibration_curve(samples, x)
    fig = plots.calibration_plot(alphas, inl - alphas[:, None], param_names=["p", "q"], path=tmp_path / "cal.png")
    assert isinstance(fig, Figure) and _png_ok(tmp_path / "cal.png")
    _, inl_narrow = diagnostics.calibration_curve(0.5 * samples, x)
    curves = {"good": inl - alphas[:, None], "narrow": inl_narrow - alphas[:, None]}
    fig = plots.calibration_plot(alphas, curves, path=tmp_path / "cal2.png")
    assert len(fig.axes) == 2 and _png_ok(tmp_path / "cal2.png")
    fig = plots.sbc_plot(diagnostics.sbc_ranks(samples, x), 100, path=tmp_path / "sbc.png")
    assert len(fig.axes) == 4 and _png_ok(tmp_path / "sbc.png")


def test_arm_and_mixture_plots(tmp_path):
    sim = InverseKinematics()
    x = sim.sample_prior(300, generator=torch.Generator().manual_seed(1))
    joints = sim.joint_positions(x)
    fig = plots.arm_plot(joints, torch.tensor([0.5, 1.5]), path=tmp_path / "arm.png", highlight=0, title="prior")
    assert isinstance(fig, Figure) and _png_ok(tmp_path / "arm.png")
    fig = plots.arm_plot({"ABC": joints[:50], "INN": joints[50:]}, torch.tensor([0.5, 1.5]))
    assert len(fig.axes) == 2
    gm = GaussianMixture()
    gen = torch.Generator().manual_seed(2)
    by_label = {f"label {i}": gm.sample_posterior(torch.eye(4)[i], 200, generator=gen) for i in range(4)}
    fig = plots.mixture_scatter(by_label, path=tmp_path / "mix.png")
    assert _png_ok(tmp_path / "mix.png")


def test_plots_reject_bad_input():
    with pytest.raises(ValueError, match="same D"):
        plots.corner_plot({"a": torch.zeros(10, 2), "b": torch.zeros(10, 3)})
    with pytest.raises(ValueError, match="truth must have shape"):
        plots.corner_plot({"a": torch.randn(10, 2)}, truth=torch.zeros(3))
    with pytest.raises(ValueError, match="contains NaN"):
        plots.corner_plot({"a": torch.full((10, 2), math.nan)})
    with pytest.raises(ValueError, match="rows for 3 alphas"):
        plots.calibration_plot(torch.tensor([0.1, 0.5, 0.9]), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\(n, 4, 2\)"):
        plots.arm_plot(torch.zeros(10, 3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="is empty"):
        plots.mixture_scatter({})
