"""The synthetic multispectral tissue image (simulators/tissue_image.py): maps, layout, seeds and the file."""

import h5py
import numpy as np
import pytest
import torch

from sbi_inn import SeedTree
from sbi_inn.images import read_observation_image
from sbi_inn.priors import support_bounds
from simulators.tissue_image import (
    BACKGROUND,
    HYPOXIC_SO2,
    IMAGE_BRANCH,
    PRIOR_IMAGE_BRANCH,
    VESSELS,
    make_prior_image,
    make_tissue_image,
    simulate_pixels,
    tissue_layout,
    tissue_parameter_maps,
)
from simulators.tissue_spectra import TissueSpectra

H, W = 32, 32


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("tissue_image") / "img.h5"
    make_tissue_image(path, H, W, seed=3, show_progress=False, chunk_pixels=300)
    return path


def test_shapes_dtype_and_parameter_order():
    maps = tissue_parameter_maps(H, W + 8, seed=0)
    assert maps.shape == (H, W + 8, 6) and maps.dtype == torch.float32
    two = TissueSpectra(num_layers=2)
    maps2 = tissue_parameter_maps(H, W, seed=0, simulator=two)
    assert maps2.shape == (H, W, 12)
    # layer 2's v_hb (column 7) carries the same vessels as layer 1's, over another background
    lay = tissue_layout(H, W, seed=0)
    vessel, tissue = lay.vessel > 0.9, lay.vessel < 0.01
    assert maps2[..., 7][vessel].mean() > 0.2 > 0.1 > maps2[..., 7][tissue].mean()
    assert not torch.equal(maps2[..., 7][tissue], maps2[..., 1][tissue])


@pytest.mark.parametrize("seed,layers", [(0, 1), (1, 1), (2, 3)])
def test_maps_lie_strictly_inside_the_prior_box(seed, layers):
    sim = TissueSpectra(num_layers=layers)
    maps = tissue_parameter_maps(H, W, seed=seed, simulator=sim).reshape(-1, sim.param_dim)
    lo, hi = support_bounds(sim.prior)
    assert (maps > lo).all() and (maps < hi).all()
    assert torch.isfinite(sim.simulate(maps, generator=torch.Generator().manual_seed(0))).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_vessels_and_hypoxic_region_are_where_the_layout_says(seed):
    h = w = 48
    maps, lay = tissue_parameter_maps(h, w, seed=seed), tissue_layout(h, w, seed=seed)
    so2, v_hb = maps[..., 0], maps[..., 1]
    no_vessel = lay.vessel < 0.05
    inside, outside = (lay.hypoxia > 0.8) & no_vessel, (lay.hypoxia < 0.05) & no_vessel
    assert inside.sum() >= 10 and outside.sum() >= 100
    assert so2[inside].mean() < HYPOXIC_SO2 + 0.1             # about 0.25 inside the blob
    assert abs(float(so2[outside].mean()) - BACKGROUND["sO2"][0]) < 0.1   # about 0.72 outside
    vessel, tissue = lay.vessel > 0.8, lay.vessel < 0.01
    assert v_hb[vessel].mean() > 0.18 and v_hb[tissue].mean() < 0.1
    artery, vein = (lay.artery > 0.8) & (lay.vein < 0.1), (lay.vein > 0.8) & (lay.artery < 0.1)
    assert artery.sum() > 5 and vein.sum() > 5
    assert so2[artery].mean() > VESSELS["artery"]["sO2"] - 0.05
    assert abs(float(so2[vein].mean()) - VESSELS["vein"]["sO2"]) < 0.08
    # the blob's recorded centre is its brightest pixel (coordinates in units of the shorter side)
    cu, cv = lay.description["hypoxia"]["centre"]
    row, col = divmod(int(lay.hypoxia.argmax()), w)
    assert abs(row + 0.5 - cv * h) <= 1 and abs(col + 0.5 - cu * w) <= 1


def test_background_is_smooth_and_varies_for_every_parameter():
    maps, lay = tissue_parameter_maps(64, 64, seed=1), tissue_layout(64, 64, seed=1)
    plain = ((lay.vessel < 0.01) & (lay.hypoxia < 0.01))
    for j, (name, (centre, spread)) in enumerate(BACKGROUND.items()):
        field = maps[..., j]
        assert 0.3 * spread < float(field[plain].std()) < 2 * spread, name
        assert abs(float(field[plain].mean()) - centre) < 1.5 * spread, name
        if name not in ("sO2", "v_hb"):  # no vessels in these: neighbours differ far less than the field varies
            step = (field[1:] - field[:-1]).abs().mean()
            assert step < 0.15 * field.std(), name


def test_same_seed_same_file_other_seed_other_file(image, tmp_path):
    again = tmp_path / "again.h5"
    make_tissue_image(again, H, W, seed=3, show_progress=False, chunk_pixels=300)
    other = tmp_path / "other.h5"
    make_tissue_image(other, H, W, seed=4, show_progress=False, chunk_pixels=300)

    def content(path):
        with h5py.File(path, "r") as f:
            attrs = {k: v for k, v in f.attrs.items() if k != "created"}
            return f["y"][()], f["truth"][()], attrs

    y1, t1, a1 = content(image)
    y2, t2, a2 = content(again)
    y3, t3, _ = content(other)
    assert np.array_equal(y1, y2) and np.array_equal(t1, t2) and a1.keys() == a2.keys()
    assert all(np.array_equal(a1[k], a2[k]) for k in a1)
    assert not np.array_equal(t1, t3) and not np.array_equal(y1, y3)


def test_pixels_are_the_simulator_output_under_the_seed_contract(image):
    img = read_observation_image(image)
    sim = TissueSpectra()
    assert img.y.shape == (H, W, 8) and img.truth.shape == (H, W, 6)
    assert img.info.param_names == sim.param_names and img.info.obs_names == sim.obs_names
    attrs = img.info.attrs
    assert attrs["simulator"] == "tissue_spectra" and attrs["simulator_config"] == sim.config()
    assert attrs["seed"] == 3 and attrs["chunk_pixels"] == 300 and "hypoxia" in attrs["layout"]
    assert np.array_equal(img.truth, tissue_parameter_maps(H, W, seed=3).numpy())
    x, y = torch.from_numpy(img.truth).reshape(-1, 6), torch.from_numpy(img.y).reshape(-1, 8)
    tree = SeedTree(3)
    for k, start in enumerate(range(0, H * W, 300)):   # 4 chunks: 300, 300, 300, 124 pixels
        rows = slice(start, start + 300)
        seeds = tree.chunk_seeds(k, "simulation", IMAGE_BRANCH)
        expected = sim.simulate(x[rows], generator=torch.Generator().manual_seed(seeds[1]))
        assert torch.equal(y[rows], expected), k
    # the noise is there (5 % log-normal): the pixels are not the noise-free intensities
    ratio = torch.log(y / sim.band_intensities(x))
    assert 0.04 < float(ratio.std()) < 0.06


def test_image_noise_is_not_the_training_noise_of_the_same_seed(image):
    # a training set of seed 3 simulates chunk 0 with SeedTree(3).chunk_seeds(0); the image has its own branch
    img = read_observation_image(image)
    sim = TissueSpectra()
    x = torch.from_numpy(img.truth).reshape(-1, 6)[:300]
    training_noise = sim.simulate(x, generator=torch.Generator().manual_seed(SeedTree(3).chunk_seeds(0)[1]))
    assert not torch.equal(training_noise, torch.from_numpy(img.y).reshape(-1, 8)[:300])


def test_prior_image_pixels_are_prior_draws_under_the_seed_contract(tmp_path):
    from sbi_inn.simulation import Simulation

    path = make_prior_image(tmp_path / "prior.h5", 20, 10, seed=2, chunk_pixels=64, show_progress=False)
    img = read_observation_image(path)
    x, y = torch.from_numpy(img.truth).reshape(-1, 6), torch.from_numpy(img.y).reshape(-1, 8)
    sim, tree = Simulation(TissueSpectra()), SeedTree(2)
    for k, start in enumerate(range(0, 200, 64)):
        chunk = sim.chunk(tree.chunk_seeds(k, "simulation", PRIOR_IMAGE_BRANCH), min(64, 200 - start))
        assert torch.equal(x[start:start + 64], chunk.x) and torch.equal(y[start:start + 64], chunk.y), k
    lo, hi = support_bounds(TissueSpectra().prior)
    # uniform prior draws: each parameter's mean within 4 standard errors of the box centre
    se = (hi - lo) / (12 * 200) ** 0.5
    assert ((x.mean(0) - (lo + hi) / 2).abs() < 4 * se).all()
    assert img.info.attrs["prior"] is True and img.info.attrs["seed"] == 2


def test_chunking_is_part_of_the_seed_and_is_recorded():
    maps = tissue_parameter_maps(8, 8, seed=0)
    sim = TissueSpectra()
    a = simulate_pixels(sim, maps, seed=0, chunk_pixels=64, show_progress=False)
    b = simulate_pixels(sim, maps, seed=0, chunk_pixels=64, show_progress=False)
    c = simulate_pixels(sim, maps, seed=0, chunk_pixels=16, show_progress=False)
    assert torch.equal(a, b) and not torch.equal(a[2:], c[2:])


def test_existing_file_is_refused_unless_overwrite(image):
    before = image.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        make_tissue_image(image, H, W, seed=5, show_progress=False)
    assert image.read_bytes() == before
    make_tissue_image(image, H, W, seed=3, show_progress=False, chunk_pixels=300, overwrite=True)
    assert read_observation_image(image).info.attrs["seed"] == 3


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="height"):
        tissue_parameter_maps(2, 32)
    with pytest.raises(TypeError, match="width"):
        tissue_parameter_maps(32, 3.5)
    with pytest.raises(ValueError, match="seed"):
        tissue_parameter_maps(8, 8, seed=-1)
    with pytest.raises(TypeError, match="TissueSpectra"):
        tissue_parameter_maps(8, 8, simulator=object())
    with pytest.raises(ValueError, match="chunk_pixels"):
        make_tissue_image(tmp_path / "x.h5", 8, 8, chunk_pixels=0, show_progress=False)
    assert not (tmp_path / "x.h5").exists()
