"""Damaged and crafted simulation files and posterior files: refused quickly, naming the field, never sized by a lie."""

import json

import h5py
import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn import fit_posterior, load_posterior
from sbi_inn.data import HDF5Dataset, content_hash, hdf5_info, load_hdf5, simulate_to_hdf5
from sbi_inn.simulation import Simulation

PRIOR = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
READERS = {
    "HDF5Dataset": lambda p: HDF5Dataset(p, split="all"),
    "load_hdf5": load_hdf5,
    "hdf5_info": hdf5_info,
    "content_hash": content_hash,
    "fit_posterior": lambda p: fit_posterior(data=p, config={"train": {"epochs": 1}}, show_progress=False),
}


def _sets(x, generator=None):
    k = 3
    y = x[:, None, :1] + torch.randn(len(x), k, 1, generator=generator)
    return y, torch.full((len(x),), k)


def _file(tmp_path, sets: bool = False):
    path = tmp_path / "sims.h5"
    sim = Simulation(_sets if sets else (lambda x: x**2), PRIOR)
    simulate_to_hdf5(sim, None, 40, path, chunk_size=20, show_progress=False)
    return path


def _all_refuse(path, match):
    for name, read in READERS.items():
        with pytest.raises(ValueError, match=match):
            read(path)
        assert name  # each reader is tried


def test_chunks_done_claiming_1e12_is_refused_by_every_reader(tmp_path):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["chunks_done"] = 10**12
    _all_refuse(path, "records 1000000000000 finished chunks but holds statistics for 2")


@pytest.mark.parametrize("sets", [False, True])
def test_chunk_stats_claiming_1e12_rows_are_refused_before_allocating(tmp_path, sets):
    path = _file(tmp_path, sets)
    with h5py.File(path, "r+") as f:
        f["chunk_stats"][0, 1] = 10**12
    _all_refuse(path, r"claim 1000000000\d* rows of 'x'.*holds 40")


def test_negative_counts_are_refused(tmp_path):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        f["chunk_stats"][0, 1] = -5
    _all_refuse(path, "negative counts")


def test_inconsistent_set_offsets_are_refused(tmp_path):
    path = _file(tmp_path, sets=True)
    with h5py.File(path, "r+") as f:
        f["offsets"][5] = 10**9
    for read in (READERS["HDF5Dataset"], READERS["load_hdf5"]):
        with pytest.raises(ValueError, match="'sizes' and 'offsets' disagree"):
            read(path)


def test_a_string_dataset_is_named_with_its_dtype(tmp_path):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["x"]
        f.create_dataset("x", data=np.array([["a", "b"]] * 40, dtype="S3"))
    _all_refuse(path, r"dataset 'x' has dtype \|S3; it must hold floating-point numbers")


def test_a_dataset_of_the_wrong_width_is_named(tmp_path):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["y"]
        f.create_dataset("y", data=np.zeros((40, 5), np.float32))
    _all_refuse(path, r"dataset 'y' has shape \(40, 5\), expected \(rows, 2\)")


def test_a_missing_dataset_is_named(tmp_path):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["chunk_stats"]
    _all_refuse(path, "no dataset 'chunk_stats'")


def test_float64_datasets_are_read_as_float32(tmp_path):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        for name in ("x", "y"):
            data = f[name][:].astype(np.float64)
            del f[name]
            f.create_dataset(name, data=data, maxshape=(None, 2))
    assert load_hdf5(path)["x"].dtype == torch.float32
    x, y = HDF5Dataset(path, split="all").get_batch([0, 1])
    assert x.dtype == y.dtype == torch.float32
    fit_posterior(data=path, config={"train": {"epochs": 1}}, show_progress=False)


@pytest.mark.parametrize("attr, value, match", [
    ("param_names", "[not json", "attribute 'param_names' is not valid JSON"),
    ("param_names", "[]", "attribute 'param_names' must be a non-empty JSON list of names"),
    ("simulator_config", "[1, 2]", "attribute 'simulator_config' holds a JSON list"),
    ("seed", 1.5, "attribute 'seed' must be an integer >= 0"),
    ("chunk_size", 0, "attribute 'chunk_size' must be an integer >= 1"),
])
def test_garbled_attributes_are_named(tmp_path, attr, value, match):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    _all_refuse(path, match)


def test_a_missing_attribute_is_named(tmp_path):
    path = _file(tmp_path)
    with h5py.File(path, "r+") as f:
        del f.attrs["obs_names"]
    _all_refuse(path, "lacks the attribute.*obs_names")


# -- posterior files --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    post = fit_posterior(data=(x, x**2), prior=PRIOR, config={"flow": {"num_blocks": 2, "hidden": 16},
                                                              "train": {"epochs": 1}}, show_progress=False)
    path = tmp_path_factory.mktemp("post") / "post.sbi"
    post.save(path)
    return path


def _rewrite(src, dst, edit):
    blob = torch.load(src, weights_only=True)
    header = json.loads(blob["header"])
    edit(header)
    torch.save({"header": json.dumps(header), "state_dict": blob["state_dict"]}, dst)
    return dst


@pytest.mark.parametrize("field, value, match", [
    ("num_blocks", 10**8, r"model\.flow\.num_blocks = 100000000"),
    ("hidden", 2**31, r"model\.flow\.hidden = 2147483648"),
    ("num_layers", 10**6, r"model\.flow\.num_layers = 1000000"),
    ("hidden", 0, r"model\.flow\.hidden must be an integer >= 1"),
    ("hidden", "16", r"model\.flow\.hidden must be an integer >= 1"),
])
def test_a_header_asking_for_more_than_the_file_holds_is_refused_at_once(saved, tmp_path, field, value, match):
    path = _rewrite(saved, tmp_path / "bad.sbi", lambda h: h["model"]["flow"].__setitem__(field, value))
    with pytest.raises(ValueError, match=match):
        load_posterior(path)


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["model"]["summary"].__setitem__("hidden", 2**20), r"model\.summary\.hidden"),
    (lambda h: h["model"].__setitem__("obs_shape", [10**9]), r"model\.obs_shape"),
    (lambda h: h.pop("param_names"), "header lacks 'param_names'"),
    (lambda h: h["model"].pop("flow"), "header lacks 'model.flow'"),
    (lambda h: h.__setitem__("obs_shape", "two"), "header field 'obs_shape'"),
])
def test_header_fields_are_named(saved, tmp_path, edit, match):
    path = _rewrite(saved, tmp_path / "bad.sbi", edit)
    with pytest.raises(ValueError, match=match):
        load_posterior(path)


def test_an_untouched_file_still_loads(saved):
    post = load_posterior(saved)
    assert post.sample((5,), torch.tensor([1.0, 1.0]), seed=0).shape == (5, 2)


@pytest.mark.parametrize("method, summary, config", [
    ("cinn", "none", {}),
    ("cinn", "mlp", {"summary_layers": 0}),
    ("cinn", "auto", {"flow": {"num_layers": 1, "num_blocks": 1, "hidden": 8}}),
    ("inn", "auto", {"flow": {"num_blocks": 2, "hidden": 16}}),
])
def test_small_genuine_models_pass_the_header_bounds(tmp_path, method, summary, config):
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    post = fit_posterior(data=(x, x**2), prior=PRIOR, method=method, summary=summary,
                         config={**config, "train": {"epochs": 1}}, show_progress=False)
    post.save(tmp_path / "p.sbi")
    assert load_posterior(tmp_path / "p.sbi").sample((3,), torch.ones(2), seed=0).shape == (3, 2)
