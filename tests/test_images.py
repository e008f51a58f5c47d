"""The observation-image format: round trip, metadata, refusals, band-count and NaN checks."""

import h5py
import numpy as np
import pytest
import torch

from sbi_inn.images import (
    ObservationImage,
    image_info,
    is_image_file,
    read_observation_image,
    read_pixels,
    write_observation_image,
)


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.random((5, 7, 4), dtype=np.float32)
    truth = rng.random((5, 7, 2)).astype(np.float64)
    path = write_observation_image(tmp_path / "img.h5", y, truth=truth, param_names=["sao2", "vhb"],
                                   obs_names=[f"b{i}" for i in range(4)],
                                   attrs={"simulator": "tissue_spectra", "config": {"noise": 0.01}, "seed": 7})
    return path, y, truth


def test_round_trip_and_metadata(image):
    path, y, truth = image
    img = read_observation_image(path, obs_shape=(4,))
    assert isinstance(img, ObservationImage)
    assert img.y.dtype == np.float32 and np.array_equal(img.y, y)
    assert img.truth.dtype == np.float32 and np.array_equal(img.truth, truth.astype(np.float32))
    info = img.info
    assert (info.shape, info.num_bands, info.num_pixels) == ((5, 7), 4, 35)
    assert info.param_names == ["sao2", "vhb"] and info.obs_names == ["b0", "b1", "b2", "b3"]
    assert info.attrs == {"simulator": "tissue_spectra", "config": {"noise": 0.01}, "seed": 7}
    assert info.has_truth and info.format_version == 1
    assert is_image_file(path)
    with h5py.File(path) as f:
        assert f.attrs["format"] == "sbi_inn.image"
        assert f["y"].compression == "lzf" and f["y"].chunks is not None


def test_read_pixels_row_major(image):
    path, y, _ = image
    flat = y.reshape(-1, 4)
    with h5py.File(path) as f:
        for start, stop in [(0, 35), (3, 4), (6, 15), (13, 14), (20, 35)]:
            assert np.array_equal(read_pixels(f, start, stop, 7), flat[start:stop])


def test_refuses_existing_file_unless_overwrite(image):
    path, y, _ = image
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_observation_image(path, y)
    assert path.read_bytes() == before
    write_observation_image(path, y[:2], overwrite=True)
    assert image_info(path).shape == (2, 7)


def test_band_count_named(image):
    path, _, _ = image
    with pytest.raises(ValueError, match="the image has 4 bands, the posterior takes 16"):
        image_info(path, obs_shape=(16,))
    with pytest.raises(ValueError, match="the image has 4 bands, the posterior takes 16"):
        read_observation_image(path, obs_shape=(16,))


def test_nan_pixels_named(tmp_path):
    y = np.ones((3, 4, 2), np.float32)
    y[1, 2, 0] = np.nan
    y[2, 0, :] = np.nan
    path = write_observation_image(tmp_path / "nan.h5", y)
    with pytest.raises(ValueError, match=r"pixels \(row 1, col 2\), \(row 2, col 0\) of the image hold NaN"):
        read_observation_image(path)
    img = read_observation_image(path, allow_nan=True)
    assert np.isnan(img.y[1, 2, 0]) and img.truth is None


@pytest.mark.parametrize("kwargs, error, match", [
    ({"y": np.ones((4, 2))}, ValueError, r"\(H, W, M\)"),
    ({"y": np.ones((0, 2, 3))}, ValueError, r"\(H, W, M\)"),
    ({"y": np.array([[["a"]]])}, TypeError, "real numbers"),
    ({"y": np.ones((2, 2, 2), complex)}, TypeError, "real numbers"),
    ({"y": np.full((2, 2, 2), np.inf)}, ValueError, r"inf at pixels \(row 0, col 0\)"),
    ({"truth": np.ones((2, 3, 1))}, ValueError, r"truth must have shape \(2, 2, D\)"),
    ({"param_names": ["a"]}, ValueError, "pass truth too"),
    ({"obs_names": ["a"]}, ValueError, "obs_names has 1 names for 2 columns"),
    ({"attrs": {"format": "x"}}, ValueError, "format's own attributes"),
    ({"attrs": {"f": object()}}, TypeError, "not JSON-serialisable"),
])
def test_bad_input_named(tmp_path, kwargs, error, match):
    args = {"y": np.ones((2, 2, 2), np.float32), **kwargs}
    with pytest.raises(error, match=match):
        write_observation_image(tmp_path / "bad.h5", **args)
    assert not (tmp_path / "bad.h5").exists()


def test_accepts_tensor_and_refuses_other_files(tmp_path):
    path = write_observation_image(tmp_path / "t.h5", torch.ones(2, 3, 1))
    assert image_info(path).shape == (2, 3)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "sbi_inn.simulations"
    with pytest.raises(ValueError, match="not an sbi_inn observation image.*simulation file"):
        image_info(tmp_path / "other.h5")
    assert not is_image_file(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError, match="no such image file"):
        image_info(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="HDF5 file"):
        write_observation_image(tmp_path / "img.npy", np.ones((1, 1, 1)))


def test_damaged_file_named(image):
    path, _, _ = image
    with h5py.File(path, "r+") as f:
        del f["truth"]
    with pytest.raises(ValueError, match="no dataset 'truth'"):
        image_info(path)
    with h5py.File(path, "r+") as f:
        f.attrs["height"] = 6
    with pytest.raises(ValueError, match=r"dataset 'y' has shape \(5, 7, 4\), the attributes say \(6, 7, 4\)"):
        image_info(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 9
    with pytest.raises(ValueError, match="format version 9"):
        image_info(path)
