"""Tests for sbi_inn.data: resumable HDF5 simulation files and the streaming dataset."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal

from sbi_inn import HDF5Dataset, hdf5_info, load_hdf5, simulate_to_hdf5
from sbi_inn.data import split_indices
from sbi_inn.simulation import SeedTree
from simulators import get_simulator

PRIOR2 = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
K_MAX, M_SET = 5, 3


def noisy(x, generator=None):
    """A cheap callable simulator ``(n, 2) -> (n, 3)`` drawing noise from ``generator``."""
    eps = torch.randn((len(x), 3), generator=generator)
    return torch.stack([x[:, 0], x[:, 1], x[:, 0] * x[:, 1]], -1) + 0.1 * eps


def fake_sets(x, generator=None):
    """Set-valued callable: ``K ~ U{0..K_MAX}`` rows of ``N(x0, 1)`` noise, zero-padded to ``K_MAX``."""
    n = len(x)
    sizes = torch.randint(0, K_MAX + 1, (n,), generator=generator)
    y = x[:, None, :1] + torch.randn((n, K_MAX, M_SET), generator=generator)
    mask = torch.arange(K_MAX)[None, :] < sizes[:, None]
    return y * mask[..., None], sizes


def run(sim, n, path, prior=PRIOR2, **kw):
    kw.setdefault("show_progress", False)
    return simulate_to_hdf5(sim, prior, n, path, **kw)


def datasets_equal(a, b) -> bool:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        if set(fa) != set(fb):
            return False
        return all(fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape
                   and fa[k][()].tobytes() == fb[k][()].tobytes() for k in fa)


def reference_chunks(sim_fn, prior, n, chunk_size, seed):
    """What chunk ``i`` simulates, recomputed from the documented per-chunk seeds."""
    xs, outs = [], []
    for i, start in enumerate(range(0, n, chunk_size)):
        state = np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(2, dtype=np.uint64) >> np.uint64(1)
        prior_seed, sim_seed = int(state[0]), int(state[1])  # the documented simulation stream of the seed tree
        assert SeedTree(seed).chunk_seeds(i) == (prior_seed, sim_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(prior_seed)
            x = prior.sample((min(chunk_size, n - start),)).float()
        xs.append(x)
        outs.append(sim_fn(x, generator=torch.Generator().manual_seed(sim_seed)))
    return xs, outs


class Interrupting:
    """Wraps a simulator and raises KeyboardInterrupt on the ``at``-th call (1-based)."""

    def __init__(self, fn, at):
        self.fn, self.at, self.calls = fn, at, 0
        self.__name__ = getattr(fn, "__name__", "wrapped")

    def __call__(self, x, generator=None):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.fn(x, generator=generator)


# -- writing ------------------------------------------------------------------------------------------------------
def test_round_trip_equals_seeded_simulation_and_records_metadata(tmp_path):
    sim = get_simulator("inverse_kinematics", noise=0.01)
    path = tmp_path / "ik.h5"
    summary = run(sim, 2500, path, prior=sim.prior, chunk_size=1000, seed=3)
    assert summary["num_rows"] == summary["num_simulations"] == summary["num_new"] == 2500
    assert summary["completed"] and summary["simulations_per_second"] > 0
    xs, ys = reference_chunks(sim.simulate, sim.prior, 2500, 1000, 3)
    data = load_hdf5(path)
    assert torch.equal(data["x"], torch.cat(xs)) and torch.equal(data["y"], torch.cat(ys))
    assert data["metadata"]["param_names"] == sim.param_names
    with h5py.File(path, "r") as f:
        for key in ("simulator", "simulator_config", "prior", "seed", "chunk_size", "sbi_inn_version", "created",
                    "param_names", "obs_names", "is_set_valued", "num_requested", "num_invalid", "completed",
                    "chunks_done"):
            assert key in f.attrs, key
        assert f["x"].dtype == np.float32 and f["x"].maxshape == (None, 4) and f["x"].compression
        assert f["y"].shape == (2500, 2) and f["x"].chunks is not None
        assert int(f.attrs["chunks_done"]) == 3 and bool(f.attrs["completed"])
    info = hdf5_info(path)
    assert info["simulator"] == "inverse_kinematics" and info["simulator_config"]["noise"] == 0.01
    assert info["num_rows"] == 2500 and info["num_invalid"] == 0 and info["completed"]
    assert info["param_stats"]["rail"]["min"] == pytest.approx(float(data["x"][:, 0].min()))
    assert info["param_stats"]["angle1"]["mean"] == pytest.approx(float(data["x"][:, 1].mean()), abs=1e-6)
    assert load_hdf5(path, max_rows=10)["x"].shape == (10, 4)


def test_gaussian_mixture_and_global_rng_untouched(tmp_path):
    sim = get_simulator("gaussian_mixture")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run(sim, 1200, tmp_path / "gm.h5", prior=sim.prior, chunk_size=500)
    assert torch.equal(torch.get_rng_state(), before)
    data = load_hdf5(tmp_path / "gm.h5")
    assert data["y"].shape == (1200, 4) and torch.all(data["y"].sum(-1) == 1)
    # prior=None takes the simulator's prior and gives the same file
    run(sim, 1200, tmp_path / "gm2.h5", prior=None, chunk_size=500)
    assert datasets_equal(tmp_path / "gm.h5", tmp_path / "gm2.h5")
    with pytest.raises(TypeError, match="prior is missing"):  # a plain function has no prior to fall back on
        run(lambda x: x, 10, tmp_path / "gm3.h5", prior=None)


def test_numpy_callable_is_accepted_and_reproducible(tmp_path):
    def np_sim(x):  # needs a numpy array (tensors have no .astype) and uses numpy's global RNG
        return np.sin(x.astype(np.float64)) + 0.01 * np.random.normal(size=x.shape)

    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    run(np_sim, 300, tmp_path / "a.h5", chunk_size=100)
    run(np_sim, 300, tmp_path / "b.h5", chunk_size=100)
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global state is restored
    assert datasets_equal(tmp_path / "a.h5", tmp_path / "b.h5")
    data = load_hdf5(tmp_path / "a.h5")
    assert data["y"].dtype == torch.float32 and data["metadata"]["obs_names"] == ["y0", "y1"]
    assert torch.allclose(data["y"], torch.sin(data["x"]), atol=0.1)


def test_resume_after_keyboard_interrupt_is_bit_identical(tmp_path):
    ref, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    sim = get_simulator("inverse_kinematics", noise=0.05)
    run(sim, 4500, ref, prior=sim.prior, chunk_size=1000)
    flaky = get_simulator("inverse_kinematics", noise=0.05)
    flaky.simulate = Interrupting(flaky.simulate, at=3)  # same name and config, fails in chunk 2
    with pytest.raises(KeyboardInterrupt):
        run(flaky, 4500, path, prior=sim.prior, chunk_size=1000)
    info = hdf5_info(path)
    assert info["chunks_done"] == 2 and info["num_rows"] == 2000 and not info["completed"]
    summary = run(sim, 4500, path, prior=sim.prior, chunk_size=1000)
    assert summary["num_new"] == 2500 and summary["completed"]
    assert datasets_equal(ref, path)
    assert run(sim, 4500, path, prior=sim.prior, chunk_size=1000)["num_new"] == 0  # nothing left to do


def test_half_written_chunk_is_truncated_on_resume(tmp_path):
    ref, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    run(noisy, 4000, ref, chunk_size=1000, seed=5)
    run(noisy, 2000, path, chunk_size=1000, seed=5)
    with h5py.File(path, "r+") as f:  # garbage past the commit point, as left by a kill mid-chunk
        for name in ("x", "y", "chunk_stats"):
            ds = f[name]
            ds.resize(ds.shape[0] + 700, axis=0)
            ds[-700:] = 99
    assert hdf5_info(path)["rows_beyond_commit"] == 700
    assert len(HDF5Dataset(path, "all")) == 2000  # uncommitted rows are invisible to readers
    run(noisy, 4000, path, chunk_size=1000, seed=5)
    assert datasets_equal(ref, path)


def test_extending_a_file_equals_a_fresh_run(tmp_path):
    ref, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    run(noisy, 3500, ref, chunk_size=1000)
    assert run(noisy, 1500, path, chunk_size=1000)["num_rows"] == 1500  # ends with a partial chunk
    assert run(noisy, 1000, path, chunk_size=1000)["num_new"] == 0  # already holds more than asked for
    summary = run(noisy, 3500, path, chunk_size=1000)
    assert summary["num_new"] == 2500  # chunk 1 (500 of 1000 before) was simulated again at full size
    assert datasets_equal(ref, path)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch.distributions import Independent, Normal
    from sbi_inn import simulate_to_hdf5
    def slow(x, generator=None):
        with open(sys.argv[2], "a") as f:
            f.write("call\\n")
        time.sleep(0.02)
        return x * 2 + torch.randn(x.shape, generator=generator)
    simulate_to_hdf5(slow, Independent(Normal(torch.zeros(3), torch.ones(3)), 1), 4000, sys.argv[1],
                     chunk_size=50, show_progress=False, simulator_name="slow")
""")


def test_sigkill_then_rerun_is_bit_identical(tmp_path):
    script, calls, path = tmp_path / "sim.py", tmp_path / "calls.txt", tmp_path / "run.h5"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(calls)])
    deadline = time.time() + 25
    while time.time() < deadline and proc.poll() is None:
        if calls.exists() and calls.read_text().count("call") >= 8:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.exists() and not hdf5_info(path)["completed"]

    def fast(x, generator=None):
        return x * 2 + torch.randn(x.shape, generator=generator)

    prior = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    run(fast, 4000, path, prior=prior, chunk_size=50, simulator_name="slow")
    run(fast, 4000, tmp_path / "ref.h5", prior=prior, chunk_size=50, simulator_name="slow")
    assert datasets_equal(path, tmp_path / "ref.h5")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 120), more=st.integers(0, 60), chunk_size=st.integers(1, 40), stop=st.integers(1, 6),
       seed=st.integers(0, 2**32))
def test_property_interrupted_and_extended_runs_equal_uninterrupted(n, more, chunk_size, stop, seed):
    with tempfile.TemporaryDirectory() as d:
        ref, path = Path(d, "ref.h5"), Path(d, "run.h5")
        run(noisy, n, ref, chunk_size=chunk_size, seed=seed)
        try:
            run(Interrupting(noisy, at=stop), n, path, chunk_size=chunk_size, seed=seed)
        except KeyboardInterrupt:
            pass
        run(noisy, n, path, chunk_size=chunk_size, seed=seed)
        assert datasets_equal(ref, path)
        assert load_hdf5(path)["x"].shape == (n, 2)
        run(noisy, n + more, path, chunk_size=chunk_size, seed=seed)  # extending equals a fresh, larger run
        run(noisy, n + more, ref, chunk_size=chunk_size, seed=seed, resume=False)
        assert datasets_equal(ref, path) and hdf5_info(path)["num_rows"] == n + more


# -- refusing mismatched files ------------------------------------------------------------------------------------
def test_mismatched_file_is_refused_and_resume_false_overwrites(tmp_path):
    path = tmp_path / "ik.h5"
    ik = get_simulator("inverse_kinematics")
    run(ik, 300, path, prior=ik.prior, chunk_size=100, seed=1)
    cases = [
        ("seed", dict(sim=ik, seed=2)),
        ("chunk_size", dict(sim=ik, chunk_size=50)),
        ("simulator_config", dict(sim=get_simulator("inverse_kinematics", noise=0.1))),
        ("simulator", dict(sim=get_simulator("gaussian_mixture"))),
    ]
    for field, case in cases:
        sim = case.pop("sim")
        kw = {"seed": 1, "chunk_size": 100, **case}
        with pytest.raises(ValueError, match=rf"different {field}\b.*resume=False"):
            run(sim, 600, path, prior=sim.prior, **kw)
    gm = get_simulator("gaussian_mixture")
    run(gm, 200, path, prior=gm.prior, chunk_size=100, resume=False)
    assert hdf5_info(path)["simulator"] == "gaussian_mixture"
    run(lambda x: x[:, :1], 400, tmp_path / "c.h5", chunk_size=100, simulator_name="f")
    with pytest.raises(ValueError, match="different obs_dim.*resume=False"):  # a callable, other output width
        run(lambda x: x, 800, tmp_path / "c.h5", chunk_size=100, simulator_name="f")
    Path(tmp_path / "plain.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="resume=False"):
        run(noisy, 10, tmp_path / "plain.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(ValueError, match="not an sbi_inn simulation file"):
        run(noisy, 10, tmp_path / "other.h5")


# -- invalid simulations and malformed outputs --------------------------------------------------------------------
def nan_when_positive(x):
    y = x.clone()
    y[x[:, 0] > 0.5, 1] = float("nan")
    y[x[:, 0] < -1.5, 0] = float("inf")
    return y


def test_invalid_rows_drop_keep_and_raise(tmp_path):
    with pytest.warns(RuntimeWarning, match="NaN or inf and were dropped"):
        s = run(nan_when_positive, 2000, tmp_path / "drop.h5", chunk_size=500)
    kept = run(nan_when_positive, 2000, tmp_path / "keep.h5", chunk_size=500, on_invalid="keep")
    drop, keep = load_hdf5(tmp_path / "drop.h5"), load_hdf5(tmp_path / "keep.h5")
    bad = ~torch.isfinite(keep["y"]).all(-1)
    assert 300 < int(bad.sum()) < 1000
    assert s["num_invalid"] == kept["num_invalid"] == int(bad.sum()) == hdf5_info(tmp_path / "drop.h5")["num_invalid"]
    assert s["num_rows"] == 2000 - s["num_invalid"] and kept["num_rows"] == 2000
    assert torch.isfinite(drop["y"]).all() and torch.equal(drop["x"], keep["x"][~bad])
    with pytest.raises(ValueError, match=r"simulations in chunk 0 returned NaN or inf, e\.g\. for parameters x ="):
        run(nan_when_positive, 2000, tmp_path / "raise.h5", chunk_size=500, on_invalid="raise")
    with pytest.raises(ValueError, match="all 100 simulations in chunk 0"):
        run(lambda x: torch.full((len(x), 2), float("nan")), 300, tmp_path / "allnan.h5", chunk_size=100)


def test_malformed_outputs_raise(tmp_path):
    with pytest.raises(ValueError, match=r"returned shape \(50,\), expected \(50, M\)"):
        run(lambda x: x[:, 0], 100, tmp_path / "a.h5", chunk_size=50)
    with pytest.raises(ValueError, match=r"returned shape \(49, 2\), expected \(50, M\)"):
        run(lambda x: x[1:], 100, tmp_path / "b.h5", chunk_size=50)
    with pytest.raises(ValueError, match=r"expected \(50, K, M\)"):
        run(lambda x: (x, torch.ones(len(x), dtype=torch.int64)), 100, tmp_path / "c.h5", chunk_size=50)
    with pytest.raises(ValueError, match="sizes outside"):
        run(lambda x: (torch.zeros(len(x), 2, 1), torch.full((len(x),), 3)), 100, tmp_path / "d.h5", chunk_size=50)
    ik = get_simulator("inverse_kinematics")
    with pytest.raises(ValueError, match="4 parameters"):
        run(ik, 10, tmp_path / "e.h5", prior=PRIOR2)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


# -- set-valued (ragged) storage ----------------------------------------------------------------------------------
def test_ragged_sets_round_trip_unpadded_storage(tmp_path):
    path = tmp_path / "sets.h5"
    run(fake_sets, 900, path, chunk_size=400, seed=2)
    xs, outs = reference_chunks(fake_sets, PRIOR2, 900, 400, 2)
    y_ref, sizes_ref = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    with h5py.File(path, "r") as f:
        assert f["y"].shape == (int(sizes_ref.sum()), M_SET)  # stored ragged, not padded
        assert np.array_equal(f["offsets"][:], np.r_[0, np.cumsum(sizes_ref.numpy())])
        assert bool(f.attrs["is_set_valued"]) and f["sizes"].dtype == np.int64
    data = load_hdf5(path)
    assert torch.equal(data["sizes"], sizes_ref) and torch.equal(data["x"], torch.cat(xs))
    assert data["y"].shape == (900, K_MAX, M_SET) and torch.equal(data["y"], y_ref)
    assert torch.equal(data["mask"], torch.arange(K_MAX)[None] < sizes_ref[:, None])
    ds = HDF5Dataset(path, "all")
    assert ds.is_set_valued and ds.max_set_size == K_MAX
    for i in (0, 17, 899):
        x, y, mask = ds[i]
        assert int(mask.sum()) == int(sizes_ref[i]) and torch.equal(y, y_ref[i]) and torch.equal(x, data["x"][i])
        assert torch.all(y[~mask] == 0)
    x, y, mask = ds.get_batch([899, 3, 3, 0])
    assert torch.equal(y, y_ref[[899, 3, 3, 0]]) and torch.equal(mask, data["mask"][[899, 3, 3, 0]])
    info = hdf5_info(path)
    assert info["set_rows"] == int(sizes_ref.sum()) and info["max_set_size"] == K_MAX
    assert info["min_set_size"] == int(sizes_ref.min())


def test_ragged_sets_resume_and_invalid_rows_only_count_inside_sets(tmp_path):
    def sets_with_nan(x, generator=None):
        y, sizes = fake_sets(x, generator)
        y[sizes < K_MAX, -1] = float("nan")  # padding is never checked ...
        y[(x[:, 0] > 1.0) & (sizes > 0), 0] = float("nan")  # ... but the set's own rows are
        return y, sizes

    ref, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    with pytest.warns(RuntimeWarning):
        s = run(sets_with_nan, 1000, ref, chunk_size=200)
    assert 50 < s["num_invalid"] < 300
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(sets_with_nan, at=4), 1000, path, chunk_size=200)
    with pytest.warns(RuntimeWarning):
        run(sets_with_nan, 1000, path, chunk_size=200)
    assert datasets_equal(ref, path)


# -- reading ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ik_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ik") / "ik.h5"
    sim = get_simulator("inverse_kinematics", noise=0.01)
    run(sim, 3000, path, prior=sim.prior, chunk_size=1000)
    return path


def test_splits_are_deterministic_disjoint_and_cover_all_rows(ik_file):
    parts = {s: HDF5Dataset(ik_file, s).indices for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [2400, 300, 300]
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(3000))
    assert np.array_equal(HDF5Dataset(ik_file, "val").indices, parts["val"])
    assert not np.array_equal(HDF5Dataset(ik_file, "val", seed=1).indices, parts["val"])
    assert len(HDF5Dataset(ik_file, "train", fractions=(0.5, 0.25, 0.25))) == 1500
    assert np.array_equal(HDF5Dataset(ik_file, "all").indices, np.arange(3000))
    assert np.array_equal(split_indices(3000, "test"), parts["test"])
    full = load_hdf5(ik_file)
    ds = HDF5Dataset(ik_file, "test")
    x, y = ds.get_batch(np.arange(len(ds))[::-1])
    assert torch.equal(x, full["x"][parts["test"][::-1].copy()])
    assert torch.equal(y, full["y"][parts["test"][::-1].copy()])
    assert ds.param_names == ["rail", "angle1", "angle2", "angle3"] and ds.obs_names == ["end_x", "end_y"]
    assert ds.simulator_name == "inverse_kinematics" and ds.simulator_config["noise"] == 0.01
    assert not ds.is_set_valued and ds.max_set_size is None


@pytest.mark.parametrize("sets", [False, True])
def test_dataloader_workers_yield_the_same_rows(tmp_path, ik_file, sets):
    path = ik_file
    if sets:
        path = tmp_path / "sets.h5"
        run(fake_sets, 600, path, chunk_size=300)
    ds = HDF5Dataset(path, "train")
    ds[0]  # the parent process holds an open handle before the workers fork
    pickled = pickle.loads(pickle.dumps(ds))
    assert pickled._file is None and torch.equal(pickled[5][0], ds[5][0])

    def collect(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
        return [torch.cat(t) for t in zip(*loader)]

    for a, b in zip(collect(0), collect(2)):
        assert torch.equal(a, b)
    assert len(collect(0)[0]) == len(ds)


# -- bad input ----------------------------------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors(tmp_path, ik_file):
    p = tmp_path / "bad.h5"
    for n in (0, -3):
        with pytest.raises(ValueError, match="num_simulations must be an integer >= 1"):
            run(noisy, n, p)
    for n in (1.5, "10", True, None):
        with pytest.raises(TypeError, match="num_simulations"):
            run(noisy, n, p)
    with pytest.raises(ValueError, match="chunk_size"):
        run(noisy, 10, p, chunk_size=0)
    with pytest.raises(ValueError, match="seed"):
        run(noisy, 10, p, seed=-1)
    with pytest.raises(ValueError, match="on_invalid"):
        run(noisy, 10, p, on_invalid="ignore")
    with pytest.raises(TypeError, match="prior"):
        run(noisy, 10, p, prior="normal")
    with pytest.raises(ValueError, match="event shape"):
        run(noisy, 10, p, prior=Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="callable"):
        run(42, 10, p)
    with pytest.raises(ValueError, match="is a directory"):
        run(noisy, 10, tmp_path)
    with pytest.raises(TypeError, match="JSON"):
        run(noisy, 10, p, simulator_config={"f": object()})
    assert not p.exists()
    nested = tmp_path / "new" / "dir" / "x.h5"
    run(noisy, 10, nested)  # missing directories are created
    assert nested.exists()
    with pytest.raises(FileNotFoundError):
        HDF5Dataset(tmp_path / "missing.h5")
    with pytest.raises(FileNotFoundError):
        hdf5_info(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="split"):
        HDF5Dataset(ik_file, "training")
    with pytest.raises(ValueError, match="fractions"):
        HDF5Dataset(ik_file, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(TypeError, match="fractions"):
        HDF5Dataset(ik_file, fractions=0.8)
    with pytest.raises(ValueError, match="max_rows"):
        load_hdf5(ik_file, max_rows=-1)
    ds = HDF5Dataset(ik_file, "val")
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(TypeError):
        ds["a"]
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not an sbi_inn simulation file"):
        HDF5Dataset(tmp_path / "other.h5")


def test_progress_bar_and_warning_free_default(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(noisy, 50, tmp_path / "a.h5", chunk_size=20, show_progress=True)
    assert "50/50" in capsys.readouterr().err
    assert os.path.getsize(tmp_path / "a.h5") > 0


def test_dataset_max_rows_uses_only_the_first_rows(tmp_path):
    from simulators import get_simulator

    sim = get_simulator("inverse_kinematics")
    path = tmp_path / "ik.h5"
    simulate_to_hdf5(sim, sim.prior, 100, path, seed=0, chunk_size=30, show_progress=False)
    full = load_hdf5(path)
    ds = HDF5Dataset(path, "all", max_rows=45)
    assert len(ds) == 45
    x, _ = ds.get_batch(list(range(45)))
    assert torch.equal(torch.sort(x[:, 0]).values, torch.sort(full["x"][:45, 0]).values)
    assert len(HDF5Dataset(path, "all", max_rows=1000)) == 100
    with pytest.raises(ValueError, match="max_rows"):
        HDF5Dataset(path, max_rows=0)


def test_a_file_of_a_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "s.h5"
    simulate_to_hdf5(lambda x: x, PRIOR2, 20, path, show_progress=False)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    for read in (hdf5_info, load_hdf5, HDF5Dataset):
        with pytest.raises(ValueError, match="format version 99"):
            read(path)
