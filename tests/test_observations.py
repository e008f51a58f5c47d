"""Tests for sbi_inn.observations: row selection, reading observations (HDF5, .npy, .csv; vectors and sets) and
writing posterior samples (.npy, .h5, .csv)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn.data import HDF5Dataset, load_hdf5, simulate_to_hdf5
from sbi_inn.observations import (
    SAMPLE_SUFFIXES,
    obs_shape_text,
    read_csv,
    read_hdf5_rows,
    read_observations,
    read_test_simulations,
    select_rows,
    shape_text,
    write_samples,
)

PRIOR2 = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
K_MAX = 4
VECTOR = {"obs_shape": (2,), "is_set_valued": False}
SETS = {"obs_shape": (1,), "is_set_valued": True}


def sum_and_difference(x):
    """A deterministic simulator ``(n, 2) -> (n, 2)``: the known answer of every row read back."""
    return torch.stack([x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]], -1)


def set_sizes(x):
    return 1 + (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # 1..4


def counting_sets(x):
    """A deterministic set simulator: ``set_sizes(x)`` members, member ``k`` is ``x0 + k``, zero-padded to K_MAX."""
    sizes = set_sizes(x)
    k = torch.arange(K_MAX)[None]
    y = (x[:, :1] + k) * (k < sizes[:, None])
    return y[..., None], sizes


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("obs") / "vectors.h5"
    simulate_to_hdf5(sum_and_difference, PRIOR2, 50, path, chunk_size=20, show_progress=False)
    return path


@pytest.fixture(scope="module")
def set_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("obs") / "sets.h5"
    simulate_to_hdf5(counting_sets, PRIOR2, 40, path, chunk_size=16, show_progress=False)
    return path


# -- select_rows ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    (None, range(10)), ("2:5", range(2, 5)), ("7:", range(7, 10)), (":3", range(3)), ("-2:", range(8, 10)),
    (":-8", range(2)), ("4", range(4, 5)), ("0", range(1)), ("-1", range(9, 10)), ("-10", range(1)),
    (" 3 : 6 ", range(3, 6)), ("5:100", range(5, 10)), (":", range(10)),
])
def test_select_rows_picks_like_a_python_slice(spec, expected):
    assert select_rows(10, spec) == expected


@pytest.mark.parametrize("spec", ["x", "a:b", "1:2:3", "", "1.5", "2:x"])
def test_select_rows_refuses_what_is_not_a_slice_or_an_index(spec):
    with pytest.raises(ValueError, match="rows expects A:B, A:, :B or a single row index"):
        select_rows(10, spec)


@pytest.mark.parametrize("spec", ["10", "-11", "12:20", "5:5", "8:2"])
def test_select_rows_refuses_a_selection_of_no_rows(spec):
    with pytest.raises(ValueError, match=f"rows {spec} selects none of the 10 available rows"):
        select_rows(10, spec)


def test_shape_texts():
    assert shape_text((2,)) == "(2,)" and shape_text((3, 4)) == "(3, 4)" and shape_text(()) == "()"
    assert obs_shape_text((2,), False) == "(2,)" and obs_shape_text((2,), True) == "(K, 2)"
    assert obs_shape_text((3, 4), True) == "(K, 3, 4)"


# -- HDF5 simulation files --------------------------------------------------------------------------------------------
def test_hdf5_rows_are_the_files_rows(vector_file):
    everything = load_hdf5(vector_file)
    x, y, sizes, meta = read_hdf5_rows(vector_file, "all", "3:8")
    torch.testing.assert_close(x, everything["x"][3:8], rtol=0, atol=0)
    torch.testing.assert_close(y, sum_and_difference(x), rtol=0, atol=1e-6)
    assert sizes is None and meta["is_set_valued"] is False and len(meta["param_names"]) == 2

    test = read_hdf5_rows(vector_file, "test")
    expected = HDF5Dataset(vector_file, "test").get_batch(list(range(5)))[0]
    assert len(test.x) == 5  # 10% of 50
    torch.testing.assert_close(test.x, expected, rtol=0, atol=0)


def test_hdf5_refuses_an_empty_split(tmp_path):
    path = tmp_path / "tiny.h5"
    simulate_to_hdf5(sum_and_difference, PRIOR2, 4, path, show_progress=False)  # 3 train, 0 val, 1 test rows
    with pytest.raises(ValueError, match="split 'val' holds no rows"):
        read_hdf5_rows(path, "val")


def test_read_observations_from_a_vector_file(vector_file):
    y, sizes = read_observations(vector_file, **VECTOR, rows="1:4")
    x = load_hdf5(vector_file)["x"][1:4]
    assert y.dtype == torch.float32 and y.shape == (3, 2) and sizes is None
    torch.testing.assert_close(y, sum_and_difference(x), rtol=0, atol=1e-6)
    assert read_observations(vector_file, **VECTOR, split="test")[0].shape == (5, 2)


def test_read_observations_from_a_set_file(set_file):
    y, sizes = read_observations(set_file, **SETS, rows=":12")
    x = load_hdf5(set_file)["x"][:12]
    expected_y, expected_sizes = counting_sets(x)
    assert sizes.tolist() == expected_sizes.tolist() and set(sizes.tolist()) > {1}
    torch.testing.assert_close(y[:, : expected_y.shape[1]], expected_y, rtol=0, atol=1e-6)
    assert (y[:, expected_y.shape[1]:] == 0).all()


def test_an_hdf5_file_of_the_wrong_shape_or_kind_is_refused(vector_file, set_file):
    with pytest.raises(ValueError, match=r"observations have shape \(2,\) but the model takes \(3,\)"):
        read_observations(vector_file, obs_shape=(3,), is_set_valued=False)
    with pytest.raises(ValueError, match="is not set-valued but the model is$"):
        read_observations(vector_file, obs_shape=(2,), is_set_valued=True)
    with pytest.raises(ValueError, match="is set-valued but the model is not"):
        read_observations(set_file, obs_shape=(1,), is_set_valued=False)


def test_test_simulations_must_fit_the_model(vector_file):
    rows = read_test_simulations(vector_file, param_dim=2, **VECTOR, rows=":7")
    assert rows.x.shape == (7, 2) and rows.y.shape == (7, 2)
    torch.testing.assert_close(rows.y, sum_and_difference(rows.x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"holds 2 parameters \(.*\) but the model infers 3"):
        read_test_simulations(vector_file, param_dim=3, **VECTOR)
    with pytest.raises(ValueError, match="is not set-valued but the model is$"):
        read_test_simulations(vector_file, param_dim=2, obs_shape=(2,), is_set_valued=True)
    with pytest.raises(ValueError, match=r"observations have shape \(2,\) but the model takes \(3,\)"):
        read_test_simulations(vector_file, param_dim=2, obs_shape=(3,), is_set_valued=False)


def test_hdf5_observations_with_nan_are_refused(tmp_path):
    def sometimes_nan(x):
        y = sum_and_difference(x)
        y[x[:, 0] > 1.0, 1] = float("nan")
        return y

    path = tmp_path / "kept.h5"
    simulate_to_hdf5(sometimes_nan, PRIOR2, 200, path, on_invalid="keep", show_progress=False)
    with pytest.raises(ValueError, match="hold NaN or inf"):
        read_observations(path, **VECTOR)


# -- .npy files -------------------------------------------------------------------------------------------------------
def test_npy_vectors_one_or_several(tmp_path):
    y = np.array([[0.5, 1.5], [0.1, 1.0], [-0.2, 1.8], [3.0, 4.0]])
    np.save(tmp_path / "one.npy", y[0])
    np.save(tmp_path / "four.npy", y)
    np.save(tmp_path / "ints.npy", np.array([[1, 2], [3, 4]], dtype=np.int64))

    one, sizes = read_observations(tmp_path / "one.npy", **VECTOR)
    assert one.shape == (1, 2) and sizes is None and one.dtype == torch.float32
    np.testing.assert_array_equal(one.numpy(), y[:1].astype(np.float32))
    np.testing.assert_array_equal(read_observations(tmp_path / "four.npy", **VECTOR, rows="1:3")[0].numpy(),
                                  y[1:3].astype(np.float32))
    np.testing.assert_array_equal(read_observations(tmp_path / "four.npy", **VECTOR, rows="-1")[0].numpy(),
                                  y[3:].astype(np.float32))
    np.testing.assert_array_equal(read_observations(tmp_path / "ints.npy", **VECTOR)[0].numpy(), [[1, 2], [3, 4]])


def test_npy_of_the_wrong_shape_is_refused_with_the_shapes(tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "deep.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"wide.npy: observations have shape \(3,\) but the model takes \(2,\)"):
        read_observations(tmp_path / "wide.npy", **VECTOR)
    with pytest.raises(ValueError, match=r"of shape \(2,\), got shape \(2, 3, 4\)"):
        read_observations(tmp_path / "deep.npy", **VECTOR)
    with pytest.raises(ValueError, match=r"observations have shape \(4,\) but the model takes \(K, 1\)"):
        read_observations(tmp_path / "deep.npy", **SETS)


@pytest.mark.parametrize("values, message", [
    (np.array([[1.0, 2.0], [3.0, 4.0]]) + 1j, "expected real numbers, got an array of dtype complex128"),
    (np.array([[True, False]]), "expected real numbers, got an array of dtype bool"),
    (np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, 1.0]]), "the observations in row 2 hold NaN or inf"),
    (np.array([[np.inf, 2.0], [3.0, 4.0], [1.0, -np.inf]]), "the observations in rows 0, 2 hold NaN or inf"),
])
def test_npy_that_is_not_real_and_finite_is_refused(tmp_path, values, message):
    np.save(tmp_path / "bad.npy", values)
    with pytest.raises(ValueError, match=message):
        read_observations(tmp_path / "bad.npy", **VECTOR)


def test_nan_rows_are_named_as_rows_of_the_file_and_can_be_left_out(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="row 3 hold"):
        read_observations(tmp_path / "bad.npy", **VECTOR, rows="2:")
    assert read_observations(tmp_path / "bad.npy", **VECTOR, rows=":3")[0].shape == (3, 2)
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="expected real numbers"):
        read_observations(tmp_path / "text.npy", **VECTOR)
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="not a readable .npy array"):
        read_observations(tmp_path / "broken.npy", **VECTOR)


def test_npy_sets_with_nan_padding(tmp_path):
    padded = np.full((3, 5, 1), np.nan, np.float32)  # sets of sizes 3, 5 and 1
    padded[0, :3], padded[1], padded[2, :1] = [[0.1], [0.2], [0.3]], [[1.0], [1.1], [0.9], [1.2], [1.0]], [[7.0]]
    np.save(tmp_path / "sets.npy", padded)
    y, sizes = read_observations(tmp_path / "sets.npy", **SETS)
    assert y.shape == (3, 5, 1) and sizes.dtype == torch.int64 and sizes.tolist() == [3, 5, 1]
    np.testing.assert_array_equal(y.numpy(), np.nan_to_num(padded, nan=0.0))
    y, sizes = read_observations(tmp_path / "sets.npy", **SETS, rows="2")
    assert sizes.tolist() == [1] and y[0, 0, 0] == 7.0

    np.save(tmp_path / "one_set.npy", padded[0])  # (K, M): one set
    y, sizes = read_observations(tmp_path / "one_set.npy", **SETS)
    assert y.shape == (1, 5, 1) and sizes.tolist() == [3]


def test_npy_sets_of_two_dimensional_members(tmp_path):
    sets = np.full((2, 3, 2), np.nan)
    sets[0] = [[1, 2], [3, 4], [5, 6]]
    sets[1, :2] = [[7, 8], [9, 10]]
    np.save(tmp_path / "sets.npy", sets)
    y, sizes = read_observations(tmp_path / "sets.npy", obs_shape=(2,), is_set_valued=True)
    assert sizes.tolist() == [3, 2] and y[1, 2].tolist() == [0.0, 0.0] and y[1, 1].tolist() == [9.0, 10.0]

    sets[1, 0, 1] = np.nan  # a member that is only partly NaN is not padding
    np.save(tmp_path / "partly.npy", sets)
    with pytest.raises(ValueError, match="the observations in row 1 hold NaN or inf"):
        read_observations(tmp_path / "partly.npy", obs_shape=(2,), is_set_valued=True)


@pytest.mark.parametrize("build, message", [
    (lambda a: a.__setitem__((0, 0), np.nan), "NaN padding rows must come after the elements of each set"),
    (lambda a: a.__setitem__(1, np.nan), "the sets in row 1 have no elements"),
    (lambda a: a.__setitem__((0, 1), np.inf), "the observations in row 0 hold NaN or inf"),
])
def test_npy_sets_that_cannot_be_read_are_refused(tmp_path, build, message):
    sets = np.ones((2, 3, 1))
    build(sets)
    np.save(tmp_path / "sets.npy", sets)
    with pytest.raises(ValueError, match=message):
        read_observations(tmp_path / "sets.npy", **SETS)


# -- .csv files and other files ---------------------------------------------------------------------------------------
def test_csv_with_and_without_a_header(tmp_path):
    (tmp_path / "header.csv").write_text("end_x,end_y\n0.5,1.5\n0.1,1.0\n-0.2,1.8\n")
    (tmp_path / "plain.csv").write_text("# a comment\n0.5,1.5\n0.1,1.0\n")
    expected = np.array([[0.5, 1.5], [0.1, 1.0], [-0.2, 1.8]], np.float32)
    y, sizes = read_observations(tmp_path / "header.csv", **VECTOR)
    assert sizes is None
    np.testing.assert_array_equal(y.numpy(), expected)
    np.testing.assert_array_equal(read_observations(tmp_path / "plain.csv", **VECTOR)[0].numpy(), expected[:2])
    np.testing.assert_array_equal(read_observations(tmp_path / "header.csv", **VECTOR, rows="1")[0].numpy(),
                                  expected[1:2])
    np.testing.assert_array_equal(read_csv(tmp_path / "plain.csv"), [[0.5, 1.5], [0.1, 1.0]])


@pytest.mark.parametrize("text, message", [
    ("a,b\nc,d\n", "cannot read the CSV as numbers"),
    ("a,b\n", "the CSV file holds no observations"),
    ("1,2\n3\n", "cannot read the CSV as numbers"),
    ("1,2\nnan,3\n", "the observations in row 1 hold NaN or inf"),
    ("1,2,3\n", r"observations have shape \(3,\) but the model takes \(2,\)"),
])
def test_csv_that_cannot_be_read_is_refused(tmp_path, text, message):
    (tmp_path / "obs.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_observations(tmp_path / "obs.csv", **VECTOR)


def test_other_files_and_arguments_are_refused(tmp_path):
    (tmp_path / "obs.csv").write_text("1\n2\n")
    (tmp_path / "obs.txt").write_text("1,2\n")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_observations(tmp_path / "missing.npy", **VECTOR)
    with pytest.raises(ValueError, match="a CSV file holds one vector per row"):
        read_observations(tmp_path / "obs.csv", **SETS)
    with pytest.raises(ValueError, match="split applies to HDF5 observation files, not .csv files"):
        read_observations(tmp_path / "obs.csv", obs_shape=(1,), is_set_valued=False, split="test")
    with pytest.raises(ValueError, match=r"must be in an HDF5 simulation file \(.h5\), a .npy or a .csv file"):
        read_observations(tmp_path / "obs.txt", **VECTOR)
    with pytest.raises(ValueError, match="rows 5:9 selects none of the 2 available rows"):
        read_observations(tmp_path / "obs.csv", obs_shape=(1,), is_set_valued=False, rows="5:9")


# -- writing samples ------------------------------------------------------------------------------------------------
NAMES = ["a", "b", "c"]


def _samples(n=4, b=2):
    return torch.arange(n * b * 3, dtype=torch.float32).reshape(n, b, 3) / 7


def test_write_samples_npy_h5_and_csv(tmp_path):
    samples = _samples()
    assert write_samples(tmp_path / "s.npy", samples, param_names=NAMES) == tmp_path / "s.npy"
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), samples.numpy())

    write_samples(tmp_path / "deeper" / "s.h5", samples.numpy(), param_names=NAMES, attrs={"seed": 3})
    with h5py.File(tmp_path / "deeper" / "s.h5", "r") as f:
        np.testing.assert_array_equal(f["samples"][...], samples.numpy())
        assert list(f.attrs["param_names"]) == NAMES and f.attrs["seed"] == 3

    write_samples(tmp_path / "s.csv", samples, param_names=NAMES)
    df = pd.read_csv(tmp_path / "s.csv")
    assert list(df.columns) == ["observation", *NAMES] and len(df) == 4 * 2
    for row in range(len(df)):  # row i * B + b holds draw i for observation b
        i, b = divmod(row, 2)
        assert df["observation"][row] == b
        np.testing.assert_allclose(df.loc[row, NAMES].to_numpy(float), samples[i, b].numpy(), rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deeper", "s.csv", "s.npy"]  # no temporary files left


@pytest.mark.parametrize("suffix", SAMPLE_SUFFIXES)
def test_write_samples_refuses_an_existing_file_unless_overwrite(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    path.write_bytes(b"earlier")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        write_samples(path, _samples(), param_names=NAMES)
    assert path.read_bytes() == b"earlier"
    write_samples(path, _samples(n=2), param_names=NAMES, overwrite=True)
    assert path.read_bytes() != b"earlier" and not path.with_name(path.name + ".tmp").exists()


def test_write_samples_refuses_bad_shapes_and_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"samples must have shape \(n, B, 3\) for parameters a, b, c, got \(4, 6\)"):
        write_samples(tmp_path / "s.npy", _samples().reshape(4, 6), param_names=NAMES)
    with pytest.raises(ValueError, match=r"samples must have shape \(n, B, 2\)"):
        write_samples(tmp_path / "s.h5", _samples(), param_names=NAMES[:2])
    with pytest.raises(ValueError, match=r"samples are written as .npy, .h5, .hdf5, .csv"):
        write_samples(tmp_path / "s.txt", _samples(), param_names=NAMES)
    assert list(tmp_path.iterdir()) == []
