"""Batch inference over files (sbi_inn.batch): seeds against direct sample/sample_batched calls, bit-identical
resume, refusals, NaN masking, the Dask path against the local one, and the CLI end to end."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch.distributions import Independent, Uniform

from sbi_inn import FitConfig, FlowConfig, SeedTree, fit_posterior, load_hdf5, load_posterior, simulate_to_hdf5
from sbi_inn import batch as batch_module
from sbi_inn.batch import MAX_ROWS, model_hash, posterior_maps, read_inference, sample_to_hdf5, summarise
from sbi_inn.cli import main
from sbi_inn.images import write_observation_image

PRIOR = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
H, W, M = 5, 7, 3


def spectra(x, generator=None):
    """A toy 3-band 'spectrum' of two parameters."""
    y = torch.stack([x[:, 0] + x[:, 1], x[:, 0] - x[:, 1], x[:, 0] * x[:, 1]], -1)
    return y + 0.05 * torch.randn(y.shape, generator=generator)


spectra.param_names = ["sao2", "vhb"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny posterior (2 epochs) saved to a file, a 5 x 7 x 3 image with truth maps and a simulation file."""
    d = tmp_path_factory.mktemp("batch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = FitConfig(flow=FlowConfig(num_blocks=2, hidden=16, num_layers=1), summary_dim=4, summary_hidden=16,
                        train=dict(epochs=2, batch_size=128, lr=2e-3, patience=None))
        posterior = fit_posterior(spectra, PRIOR, num_simulations=600, config=cfg, seed=0, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    model = posterior.save(d / "tiny.sbi")
    truth = torch.rand(H, W, 2, generator=torch.Generator().manual_seed(1))
    y = spectra(truth.reshape(-1, 2), generator=torch.Generator().manual_seed(2)).reshape(H, W, M)
    image = write_observation_image(d / "img.h5", y, truth=truth, param_names=["sao2", "vhb"],
                                    attrs={"simulator": "spectra", "seed": 2})
    sims = d / "sims.h5"
    simulate_to_hdf5(spectra, PRIOR, 23, sims, seed=5, chunk_size=10, show_progress=False)
    return {"dir": d, "model": model, "posterior": load_posterior(model, device="cpu"), "image": image,
            "y": y.numpy(), "sims": sims}


def datasets(path) -> dict[str, bytes]:
    """Every dataset's content as bytes (NaN patterns included)."""
    with h5py.File(path) as f:
        return {name: f[name][()].tobytes() for name in f}


def test_chunk_rows_1_equals_per_pixel_sample_calls(files, tmp_path):
    post, n, seed = files["posterior"], 16, 3
    flat = torch.from_numpy(files["y"].reshape(-1, M))
    want = torch.stack([post.sample((n,), flat[p], seed=SeedTree(seed).seed("inference", p)) for p in range(H * W)], 1)
    out = sample_to_hdf5(files["model"], files["image"], tmp_path / "s.h5", num_samples=n, seed=seed, chunk_rows=1,
                         show_progress=False)
    assert out["num_chunks"] == H * W and out["num_new_chunks"] == H * W
    with h5py.File(tmp_path / "s.h5") as f:
        assert np.array_equal(f["samples"][()], want.numpy())
        assert f["mask"].shape == (H, W) and f["mask"][()].all()
    maps = posterior_maps(post, files["image"], tmp_path / "m.h5", num_samples=n, seed=seed, chunk_rows=1,
                          show_progress=False)
    ref = summarise(want, point="median")
    with h5py.File(tmp_path / "m.h5") as f:
        for name in ("mean", "std", "median", "point", "width68"):
            assert f[name].shape == (H, W, 2) and f[name].dtype == np.float32
            assert np.array_equal(f[name][()], ref[name].reshape(H, W, 2)), name
    assert set(maps["datasets"]) >= {"mean", "median", "point", "width68", "mask", "done"}


def test_chunks_equal_sample_batched_with_the_documented_seeds(files, tmp_path):
    post, n, seed, rows = files["posterior"], 20, 11, 8  # 35 pixels: chunks of 8, the last of 3, spanning rows
    flat = torch.from_numpy(files["y"].reshape(-1, M))
    chunks = [post.sample_batched((n,), flat[a:a + rows], seed=SeedTree(seed).seed("inference", k), max_rows=MAX_ROWS)
              for k, a in enumerate(range(0, H * W, rows))]
    samples = torch.cat(chunks, 1)
    levels = (0.05, 0.5, 0.95)
    posterior_maps(files["model"], files["image"], tmp_path / "m.h5", num_samples=n, seed=seed, chunk_rows=rows,
                   quantiles=levels, show_progress=False)
    refs = [summarise(c, quantiles=levels) for c in chunks]
    with h5py.File(tmp_path / "m.h5") as f:
        for name in ("mean", "median", "width68"):
            assert np.array_equal(f[name][()].reshape(-1, 2), np.concatenate([r[name] for r in refs]))
        q = f["quantiles"][()]
        assert q.shape == (3, H, W, 2)
        assert np.array_equal(q.reshape(3, -1, 2), np.concatenate([r["quantiles"] for r in refs], 1))
        assert f["quantiles"].attrs["levels"] == "[0.05, 0.5, 0.95]"
        attrs = dict(f.attrs)
    # the summaries are the samples' statistics (numpy as the oracle)
    s = samples.numpy()
    np.testing.assert_allclose(q.reshape(3, -1, 2), np.quantile(s, levels, axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(q[1].reshape(-1, 2), np.median(s, 0), rtol=0, atol=1e-6)
    assert attrs["quantiles"] == "[0.05, 0.5, 0.95]"
    with h5py.File(tmp_path / "m.h5") as f:
        np.testing.assert_allclose(f["mean"][()].reshape(-1, 2), s.mean(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(f["width68"][()].reshape(-1, 2),
                                   np.quantile(s, 0.84, axis=0) - np.quantile(s, 0.16, axis=0), rtol=0, atol=1e-6)
    info = read_inference(tmp_path / "m.h5")
    assert info["seed"] == seed and info["chunk_rows"] == rows and info["num_samples"] == n
    assert info["max_rows"] == MAX_ROWS and info["model_hash"] == model_hash(files["posterior"])
    assert info["input_path"] == str(files["image"].resolve()) and len(info["input_hash"]) == 64
    assert info["sbi_inn_version"] and info["point_estimate"] == "median" and info["completed"]
    assert info["chunks_done"] == info["num_chunks"] == 5


def test_simulation_file_rows_and_raw_samples(files, tmp_path):
    post, n, seed = files["posterior"], 10, 0
    y = load_hdf5(files["sims"])["y"]
    want = torch.cat([post.sample_batched((n,), y[a:a + 10], seed=SeedTree(seed).seed("inference", k),
                                          max_rows=MAX_ROWS) for k, a in enumerate(range(0, 23, 10))], 1)
    sample_to_hdf5(files["model"], files["sims"], tmp_path / "s.h5", num_samples=n, chunk_rows=10,
                   show_progress=False)
    maps = posterior_maps(files["model"], files["sims"], tmp_path / "m.h5", num_samples=n, chunk_rows=10,
                          show_progress=False)
    assert maps["shape"] == (23,)
    with h5py.File(tmp_path / "s.h5") as f, h5py.File(tmp_path / "m.h5") as g:
        assert np.array_equal(f["samples"][()], want.numpy())
        assert g["mean"].shape == (23, 2) and g["mask"].shape == (23,)
        np.testing.assert_allclose(g["mean"][()], want.mean(0).numpy(), rtol=0, atol=1e-6)


def test_interrupted_run_resumes_to_identical_content(files, tmp_path, monkeypatch):
    kwargs = dict(num_samples=12, seed=4, chunk_rows=6, quantiles=(0.1, 0.9), show_progress=False)
    full = tmp_path / "full.h5"
    posterior_maps(files["model"], files["image"], full, **kwargs)

    calls = []
    real = batch_module._compute

    def dying(posterior, task):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(task.index)
        return real(posterior, task)

    part = tmp_path / "part.h5"
    monkeypatch.setattr(batch_module, "_compute", dying)
    with pytest.raises(KeyboardInterrupt):
        posterior_maps(files["model"], files["image"], part, **kwargs)
    info = read_inference(part)
    assert info["chunks_done"] == 2 and not info["completed"]
    monkeypatch.setattr(batch_module, "_compute", real)

    resumed = []
    monkeypatch.setattr(batch_module, "_compute", lambda p, t: resumed.append(t.index) or real(p, t))
    out = posterior_maps(files["model"], files["image"], part, **kwargs)
    assert resumed == [2, 3, 4, 5] and out["num_new_chunks"] == 4  # finished chunks are not recomputed
    assert datasets(part) == datasets(full)
    again = posterior_maps(files["model"], files["image"], part, **kwargs)  # complete: nothing to do
    assert again["num_new_chunks"] == 0 and datasets(part) == datasets(full)


def test_a_chunk_written_but_not_committed_is_recomputed(files, tmp_path):
    """Killed between a chunk's data and its done flag: the chunk's rows hold whatever was written, and a resume
    writes them again."""
    kwargs = dict(num_samples=8, seed=6, chunk_rows=10, show_progress=False)
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    posterior_maps(files["model"], files["image"], full, **kwargs)
    posterior_maps(files["model"], files["image"], part, **kwargs)
    with h5py.File(part, "r+") as f:
        f["done"][1] = 0
        f["mean"][1:3] = -7.0  # rows 1-2 (pixels 7-20) are garbage: chunk 1 is pixels 10-19
    out = posterior_maps(files["model"], files["image"], part, **kwargs)
    assert out["num_new_chunks"] == 1
    with h5py.File(part) as f, h5py.File(full) as g:
        assert np.array_equal(f["mean"][()].reshape(-1, 2)[10:20], g["mean"][()].reshape(-1, 2)[10:20])
        assert (f["mean"][()].reshape(-1, 2)[[7, 8, 9, 20]] == -7.0).all()  # committed rows are never rewritten


@pytest.mark.parametrize("change, field", [({"seed": 5}, "seed"), ({"num_samples": 13}, "num_samples"),
                                           ({"chunk_rows": 7}, "chunk_rows"), ({"quantiles": (0.2,)}, "quantiles"),
                                           ({"on_nan": "mask"}, "on_nan")])
def test_resume_with_other_settings_is_refused(files, tmp_path, change, field):
    kwargs = dict(num_samples=12, seed=4, chunk_rows=6, show_progress=False)
    out = tmp_path / "m.h5"
    posterior_maps(files["model"], files["image"], out, **kwargs)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=f"written with a different {field}: file has"):
        posterior_maps(files["model"], files["image"], out, **{**kwargs, **change})
    assert out.read_bytes() == before
    posterior_maps(files["model"], files["image"], out, overwrite=True, **{**kwargs, **change})
    want = list(change[field]) if field == "quantiles" else change[field]
    assert read_inference(out)[field] == want


def test_resume_with_another_model_or_input_is_refused(files, tmp_path):
    out = tmp_path / "m.h5"
    posterior_maps(files["model"], files["image"], out, num_samples=4, show_progress=False)
    other = files["posterior"]
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    try:
        with pytest.raises(ValueError, match="different model_hash"):
            posterior_maps(other, files["image"], out, num_samples=4, show_progress=False)
    finally:
        with torch.no_grad():
            next(other.model.parameters()).sub_(1e-3)
    y = files["y"].copy()
    y[0, 0, 0] += 1e-3
    image2 = write_observation_image(tmp_path / "img2.h5", y)
    with pytest.raises(ValueError, match="different input_hash"):
        posterior_maps(files["model"], image2, out, num_samples=4, show_progress=False)


def test_existing_files_are_never_replaced_without_overwrite(files, tmp_path):
    victim = tmp_path / "mine.h5"
    with h5py.File(victim, "w") as f:
        f["data"] = np.arange(3)
    before = victim.read_bytes()
    with pytest.raises(FileExistsError, match="not an sbi_inn inference output; pass overwrite=True"):
        posterior_maps(files["model"], files["image"], victim, num_samples=4, show_progress=False)
    text = tmp_path / "notes.h5"
    text.write_text("my notes")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        posterior_maps(files["model"], files["image"], text, num_samples=4, show_progress=False)
    assert victim.read_bytes() == before and text.read_text() == "my notes"
    with pytest.raises(ValueError, match="one of the inputs"):
        posterior_maps(files["model"], files["image"], files["image"], num_samples=4, overwrite=True,
                       show_progress=False)
    posterior_maps(files["model"], files["image"], victim, num_samples=4, overwrite=True, show_progress=False)
    assert read_inference(victim)["completed"]


def test_wrong_band_count_is_refused_before_any_work(files, tmp_path, monkeypatch):
    image = write_observation_image(tmp_path / "img8.h5", np.ones((2, 2, 8), np.float32))
    monkeypatch.setattr(batch_module, "_compute", lambda *a: pytest.fail("work started"))
    with pytest.raises(ValueError, match="the image has 8 bands, the posterior takes 3"):
        posterior_maps(files["model"], image, tmp_path / "m.h5", show_progress=False)
    assert not (tmp_path / "m.h5").exists()


def test_nan_pixels_raise_by_default_and_are_masked_on_request(files, tmp_path):
    y = files["y"].copy()
    y[1, 3, 0] = np.nan
    y[4, 6, :] = np.nan
    image = write_observation_image(tmp_path / "nan.h5", y)
    with pytest.raises(ValueError, match=r"pixels \(row 1, col 3\), \(row 4, col 6\) of the image hold NaN.*"
                                         "on_nan='mask'"):
        posterior_maps(files["model"], image, tmp_path / "m.h5", num_samples=8, show_progress=False)
    assert not (tmp_path / "m.h5").exists()
    out = posterior_maps(files["model"], image, tmp_path / "m.h5", num_samples=8, chunk_rows=10, seed=1,
                         on_nan="mask", show_progress=False)
    assert out["num_masked"] == 2
    post = files["posterior"]
    flat = torch.from_numpy(y.reshape(-1, M))
    keep = torch.isfinite(flat).all(-1)
    with h5py.File(tmp_path / "m.h5") as f:
        mask, mean = f["mask"][()], f["mean"][()]
    assert mask.sum() == 33 and not mask[1, 3] and not mask[4, 6]
    assert np.isnan(mean[1, 3]).all() and np.isnan(mean[4, 6]).all() and np.isfinite(mean[mask]).all()
    # chunk k samples its valid rows, in order, with the chunk's seed
    for k, a in enumerate(range(0, 35, 10)):
        rows = torch.arange(a, min(35, a + 10))
        rows = rows[keep[rows]]
        s = post.sample_batched((8,), flat[rows], seed=SeedTree(1).seed("inference", k), max_rows=MAX_ROWS)
        assert np.array_equal(mean.reshape(-1, 2)[rows.numpy()], summarise(s)["mean"])


def test_bad_arguments_are_named(files, tmp_path):
    img, out, model = files["image"], tmp_path / "m.h5", files["model"]
    for kwargs, error, match in [({"num_samples": 1}, ValueError, "num_samples must be at least 2"),
                                 ({"num_samples": 2.5}, TypeError, "num_samples"),
                                 ({"chunk_rows": 0}, ValueError, "chunk_rows"),
                                 ({"seed": -1}, ValueError, "seed"),
                                 ({"quantiles": (0.5, 1.0)}, ValueError, "strictly between 0 and 1"),
                                 ({"quantiles": 0.5}, TypeError, "quantiles"),
                                 ({"point": "mode"}, ValueError, "point must be one of"),
                                 ({"on_nan": "drop"}, ValueError, "on_nan must be one of"),
                                 ({"client": object(), "workers": 2}, ValueError, "not both")]:
        with pytest.raises(error, match=match):
            posterior_maps(model, img, out, show_progress=False, **kwargs)
    with pytest.raises(ValueError, match="pass the path"):
        posterior_maps(files["posterior"], img, out, workers=2, show_progress=False)
    with pytest.raises(FileNotFoundError, match="no such observation file"):
        posterior_maps(model, tmp_path / "none.h5", out, show_progress=False)
    assert not out.exists()


def test_mean_shift_point_estimate(files, tmp_path):
    from sbi_inn.meanshift import mean_shift

    posterior_maps(files["model"], files["image"], tmp_path / "m.h5", num_samples=64, chunk_rows=35,
                   point="mean_shift", show_progress=False)
    s = files["posterior"].sample_batched((64,), torch.from_numpy(files["y"].reshape(-1, M)),
                                          seed=SeedTree(0).seed("inference", 0), max_rows=MAX_ROWS)
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["point_estimate"] == "mean_shift"
        assert np.array_equal(f["point"][()].reshape(-1, 2), mean_shift(s).numpy())
        assert not np.array_equal(f["point"][()], f["median"][()])


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes, shared by the Dask tests (starting one takes seconds)."""
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    from sbi_inn.distributed import client_for

    with client_for(workers=2) as c:
        yield c


def test_dask_local_cluster_equals_the_local_path(files, tmp_path, client):
    assert len(client.scheduler_info()["workers"]) == 2
    kwargs = dict(num_samples=16, seed=9, chunk_rows=4, quantiles=(0.25,), show_progress=False)
    local = tmp_path / "local.h5"
    posterior_maps(files["model"], files["image"], local, **kwargs)
    out = posterior_maps(files["model"], files["image"], tmp_path / "dask.h5", client=client, **kwargs)
    sample_to_hdf5(files["model"], files["image"], tmp_path / "dask_s.h5", client=client, num_samples=8,
                   chunk_rows=5, show_progress=False)
    assert out["num_new_chunks"] == 9
    assert datasets(tmp_path / "dask.h5") == datasets(local)
    sample_to_hdf5(files["model"], files["image"], tmp_path / "s.h5", num_samples=8, chunk_rows=5,
                   show_progress=False)
    assert datasets(tmp_path / "dask_s.h5") == datasets(tmp_path / "s.h5")


def test_cli_sample_observations_end_to_end(files, tmp_path, capsys):
    out = tmp_path / "maps.h5"
    argv = ["sample", str(files["model"]), "--observations", str(files["image"]), "-o", str(out), "--num-samples",
            "8", "--quantiles", "0.05", "0.95", "--chunk-rows", "6", "--seed", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "5 x 7" in printed and str(out) in printed
    with h5py.File(out) as f:
        assert f["quantiles"].shape == (2, H, W, 2) and f.attrs["seed"] == 2 and f.attrs["chunk_rows"] == 6
    ref = tmp_path / "ref.h5"
    posterior_maps(files["model"], files["image"], ref, num_samples=8, quantiles=(0.05, 0.95), chunk_rows=6, seed=2,
                   show_progress=False)
    assert datasets(out) == datasets(ref)
    assert main(argv) == 0  # complete: resumed with nothing to do
    assert "all 6 chunks were already done" in capsys.readouterr().out
    assert datasets(out) == datasets(ref)
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-1], "3", "--quiet"])
    assert exc.value.code == 2 and "different seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(files["model"]), "--observations", str(files["image"]), "--obs", str(files["sims"]),
              "-o", str(tmp_path / "x.h5")])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    bad = write_observation_image(tmp_path / "img8.h5", np.ones((2, 2, 8), np.float32))
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(files["model"]), "--observations", str(bad), "-o", str(tmp_path / "b.h5"), "--quiet"])
    assert exc.value.code == 2 and "the image has 8 bands, the posterior takes 3" in capsys.readouterr().err
    # the old path is unchanged: --obs still needs -n
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(files["model"]), "--obs", str(files["sims"]), "-o", str(tmp_path / "s.npy")])
    assert exc.value.code == 2
    assert main(["sample", str(files["model"]), "--obs", str(files["sims"]), "-n", "5", "-o",
                 str(tmp_path / "s.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 23, 2)


def test_a_worker_that_sees_another_model_file_fails_clearly(files, tmp_path, client, monkeypatch):
    from sbi_inn.distributed import RemoteTaskError

    monkeypatch.setattr(batch_module, "model_hash", lambda posterior: "0" * 64)  # on the client only
    with pytest.raises(RemoteTaskError, match="differs from the one the client read"):
        posterior_maps(files["model"], files["image"], tmp_path / "m.h5", num_samples=4, chunk_rows=20,
                       client=client, show_progress=False)
    assert read_inference(tmp_path / "m.h5")["chunks_done"] == 0


def test_cli_sample_observations_on_a_dask_scheduler(files, tmp_path, client):
    out = tmp_path / "maps.h5"
    assert main(["sample", str(files["model"]), "--observations", str(files["image"]), "-o", str(out),
                 "--chunk-rows", "9", "--num-samples", "6", "--scheduler", client.scheduler.address, "--quiet"]) == 0
    ref = tmp_path / "ref.h5"
    posterior_maps(files["model"], files["image"], ref, num_samples=6, chunk_rows=9, show_progress=False)
    assert datasets(out) == datasets(ref)


def test_a_second_writer_is_refused(files, tmp_path):
    from sbi_inn.locking import OutputLockedError, exclusive_lock

    out = tmp_path / "m.h5"
    with exclusive_lock(out), pytest.raises(OutputLockedError, match="inference output"):
        posterior_maps(files["model"], files["image"], out, num_samples=4, show_progress=False)
    assert not out.exists()


def test_outside_training_warns_once_for_all_chunks(files, tmp_path):
    from sbi_inn.posterior import OutsideTrainingWarning

    image = write_observation_image(tmp_path / "far.h5", np.full((3, 4, M), 50.0, np.float32))
    with pytest.warns(OutsideTrainingWarning) as record:
        posterior_maps(files["model"], image, tmp_path / "m.h5", num_samples=4, chunk_rows=2, show_progress=False)
    outside = [w for w in record if issubclass(w.category, OutsideTrainingWarning)]
    assert len(outside) == 1 and "and in 5 more of the 6 chunks" in str(outside[0].message)


def test_set_valued_simulation_file(files, tmp_path):
    from sbi_inn.cinn import ConditionalINN
    from sbi_inn.posterior import Posterior
    from simulators import get_simulator

    torch.manual_seed(0)
    model = ConditionalINN(2, (1,), is_set_valued=True, flow=FlowConfig(num_blocks=2, hidden=8), summary_dim=4,
                           summary_hidden=8)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    path = Posterior(model, param_names=["mu", "sigma2"], obs_shape=(1,), is_set_valued=True).save(tmp_path / "s.sbi")
    post = load_posterior(path, device="cpu")
    sims = tmp_path / "sets.h5"
    simulate_to_hdf5(get_simulator("gaussian_sets", min_size=1, max_size=5), None, 13, sims, show_progress=False)
    data = load_hdf5(sims)
    want = torch.cat([post.sample_batched((6,), data["y"][a:a + 5], sizes=data["sizes"][a:a + 5],
                                          seed=SeedTree(2).seed("inference", k), max_rows=MAX_ROWS)
                      for k, a in enumerate(range(0, 13, 5))], 1)
    sample_to_hdf5(path, sims, tmp_path / "out.h5", num_samples=6, seed=2, chunk_rows=5, show_progress=False)
    with h5py.File(tmp_path / "out.h5") as f:
        assert np.array_equal(f["samples"][()], want.numpy())
    with pytest.raises(ValueError, match="is set-valued but the posterior is not"):
        sample_to_hdf5(files["model"], sims, tmp_path / "o2.h5", num_samples=2, show_progress=False)
    with pytest.raises(ValueError, match="image of vector pixels, but the posterior takes sets"):
        sample_to_hdf5(path, files["image"], tmp_path / "o2.h5", num_samples=2, show_progress=False)


def test_output_chunks_follow_the_observations():
    """HDF5 chunks of ~1 MiB cut along the observations first: an engine chunk of consecutive observations touches
    a few HDF5 chunks, not every one (raw samples cut along the draws would be rewritten whole per engine chunk)."""
    from sbi_inn.batch import _chunks

    assert _chunks((256, 147456, 4), 1) == (256, 256, 4)
    assert _chunks((384, 384, 4), 0) == (170, 384, 4)
    assert _chunks((3, 384, 384, 4), 1) == (3, 56, 384, 4)
    assert _chunks((100_000, 1000, 4), 1) == (65536, 1, 4)
    assert _chunks((7, 5, 2), 1) == (7, 5, 2)
