"""Every plot renders, draws the data it is given where it belongs, and writes a PNG; bad input raises clear errors."""

import math

import numpy as np
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


# -- what is drawn -------------------------------------------------------------------------------------------------
def test_corner_plot_draws_the_truth_and_keeps_it_and_every_histogram_in_view(g):
    samples = torch.randn(2000, 2, generator=g)
    truth = torch.tensor([6.0, -0.5])                                   # far outside the samples in x_1
    fig = plots.corner_plot({"a": samples, "b": samples + 1}, truth=truth)
    axes = np.array(fig.axes).reshape(2, 2)
    pooled = torch.cat([samples, samples + 1]).numpy()
    for j in range(2):
        lo, hi = axes[1, j].get_xlim()
        assert lo <= min(np.quantile(pooled[:, j], 0.0025), truth[j]) and hi >= max(np.quantile(pooled[:, j], 0.9975),
                                                                                   truth[j])
        assert any(np.allclose(line.get_xdata(), truth[j]) for line in axes[j, j].lines)  # dashed truth line
        tallest = max(p.get_path().vertices[:, 1].max() for p in axes[j, j].patches)
        assert axes[j, j].get_ylim()[1] >= tallest                    # no histogram clipped at the top
    assert any(np.allclose(line.get_ydata(), truth[1]) for line in axes[1, 0].lines)


def test_calibration_plot_draws_the_curves_it_is_given(g):
    alphas = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    curves = 0.1 * torch.randn(19, 2, generator=g, dtype=torch.float64)
    fig = plots.calibration_plot(alphas, curves, param_names=["p", "q"])
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    for j, name in enumerate(["p", "q"]):
        np.testing.assert_allclose(lines[name].get_xdata(), alphas.numpy())
        np.testing.assert_allclose(lines[name].get_ydata(), curves[:, j].numpy())
    by_method = {"cINN": curves, "ABC": -curves}
    fig = plots.calibration_plot(alphas, by_method, param_names=["p", "q"])
    assert [ax.get_title() for ax in fig.axes] == ["p", "q"]
    for j, ax in enumerate(fig.axes):
        drawn = {line.get_label(): line.get_ydata() for line in ax.lines if not line.get_label().startswith("_")}
        np.testing.assert_allclose(drawn["cINN"], curves[:, j].numpy())
        np.testing.assert_allclose(drawn["ABC"], -curves[:, j].numpy())


def test_sbc_plot_ecdf_difference_follows_the_ranks(g):
    n, b = 100, 400
    uniform = torch.randint(0, n + 1, (b, 1), generator=g)
    flat = plots.sbc_plot(uniform, n).axes[1].lines[0].get_ydata()       # ECDF - uniform CDF
    assert np.abs(flat).max() < 0.1
    top = plots.sbc_plot(torch.full((b, 1), n), n).axes[1].lines[0].get_ydata()  # every truth above all samples
    assert top.max() <= 0 and top.min() < -0.9


def test_arm_plot_draws_max_arms_the_highlight_and_the_target_with_the_rail_vertical(g):
    sim = InverseKinematics()
    joints = sim.joint_positions(sim.sample_prior(30, generator=g))
    target = torch.tensor([0.5, 1.5])
    ax = plots.arm_plot(joints, target, highlight=3, max_arms=10).axes[0]
    segments = [line for line in ax.lines if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    assert len(segments) == 3 * 10                                      # three segments of the first 10 arms
    highlight = [line for line in ax.lines if len(line.get_xdata()) == 4]
    assert len(highlight) == 1
    np.testing.assert_allclose(highlight[0].get_xdata(), joints[3, :, 1].numpy(), rtol=1e-6)  # across the rail
    np.testing.assert_allclose(highlight[0].get_ydata(), joints[3, :, 0].numpy(), rtol=1e-6)  # along the rail
    cross = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(cross) == 1 and cross[0].get_xdata()[0] == 1.5 and cross[0].get_ydata()[0] == 0.5


def test_mixture_scatter_draws_each_label_up_to_max_points(g):
    by_label = {0: torch.randn(50, 2, generator=g), "b": torch.randn(10, 2, generator=g) + 3}
    ax = plots.mixture_scatter(by_label, max_points=20).axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), by_label[0][:20].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ax.collections[1].get_offsets(), by_label["b"].numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "b"]
