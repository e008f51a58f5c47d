"""Tests for sbi_inn.distributed and ``simulate_to_hdf5(client=...)``: a Dask LocalCluster of two worker processes
writes the same bytes as the single-process path, resumes, reports a failing chunk with the worker's traceback,
survives a dying worker, and the missing extra is named.

One cluster serves the module (starting worker processes that import torch takes several seconds; the CLI's
``--workers 2`` is handed it too, checking what LocalCluster is asked for). Its scheduler gives up on a task after
the first worker death (``allowed-failures = 0``), so the dying-worker test, the last, exercises ``map_ordered``'s
own resubmission rather than the scheduler's.
"""

from __future__ import annotations

import functools
import operator
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _dask_sims import Marked
from torch.distributions import Independent, Normal

from sbi_inn import hdf5_info, simulate_to_hdf5
from sbi_inn.cli import main
from sbi_inn.distributed import (
    RemoteTaskError,
    WorkerImportError,
    client_for,
    map_as_completed,
    map_ordered,
    require_distributed,
)
from sbi_inn.simulation import SeedTree, Simulation
from simulators import get_simulator

PRIOR2 = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
SEED, CHUNK, N = 3, 40, 530  # 14 chunks, the last one partial (10 simulations)
_VOLATILE_ATTRS = {"created", "updated"}  # wall-clock times: the only attributes that may differ between runs


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cm = client_for(workers=2, threads_per_worker=1)
        c = cm.__enter__()
    try:
        yield c
    finally:
        cm.__exit__(None, None, None)


def first_param(i: int, seed: int = SEED, chunk: int = CHUNK, n: int = N) -> float:
    """``x[0, 0]`` of chunk ``i``: what ``Marked`` recognises a chunk by."""
    size = min(chunk, n - i * chunk)
    return float(Simulation(Marked(), PRIOR2).sample_prior(size, SeedTree(seed).chunk_seeds(i)[0])[0, 0])


def write(sim, path, n=N, prior=PRIOR2, **kw):
    kw.setdefault("seed", SEED)
    kw.setdefault("chunk_size", CHUNK)
    return simulate_to_hdf5(sim, prior, n, path, show_progress=False, **kw)


def assert_same_file(a, b) -> None:
    """Every dataset equal byte for byte (dtype, shape, chunking, compression), every attribute but the times."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert set(fa) == set(fb)
        for k in fa:
            da, db = fa[k], fb[k]
            assert (da.dtype, da.shape, da.chunks, da.compression) == (db.dtype, db.shape, db.chunks, db.compression), k
            assert da[()].tobytes() == db[()].tobytes(), k
            assert dict(da.attrs) == dict(db.attrs), k
        keys = set(fa.attrs) | set(fb.attrs)
        assert keys - _VOLATILE_ATTRS, "no attributes to compare"
        for key in keys - _VOLATILE_ATTRS:
            assert np.array_equal(fa.attrs[key], fb.attrs[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process file of ``Marked()`` (with chunk 3's first row NaN, dropped)."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    with pytest.warns(RuntimeWarning, match="1 of 530 simulations returned NaN"):
        write(Marked(nan_on=first_param(3)), path)
    return path


def test_cluster_file_is_bit_identical_to_single_process(client, reference, tmp_path):
    # chunk 0 sleeps, so chunks 1.. finish first and wait in the buffer: the order on disk is still 0, 1, 2, ...
    path = tmp_path / "dask.h5"
    with pytest.warns(RuntimeWarning, match="1 of 530 simulations returned NaN"):
        out = write(Marked(nan_on=first_param(3), sleep_on=first_param(0), seconds=1.0), path, client=client)
    assert out["num_new"] == N and out["num_rows"] == N - 1 and out["num_invalid"] == 1 and out["completed"]
    assert_same_file(reference, path)
    with h5py.File(path, "r") as f:  # a broken writer could equal a broken reference: check chunk 0 is first
        assert f["x"][0, 0] == np.float32(first_param(0)) and f["chunk_stats"][:, 0].tolist() == [CHUNK] * 13 + [10]


def test_set_valued_registered_simulator_is_bit_identical(client, tmp_path):
    sim = get_simulator("gaussian_sets", max_size=6)
    write(sim, tmp_path / "one.h5", n=90, prior=sim.prior, chunk_size=25)
    write(sim, tmp_path / "two.h5", n=90, prior=sim.prior, chunk_size=25, client=client)
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
    with h5py.File(tmp_path / "two.h5", "r") as f:
        assert {"sizes", "offsets"} <= set(f) and f["offsets"][-1] == f["y"].shape[0] > 0


def test_failing_chunk_keeps_earlier_chunks_names_it_and_resumes_to_the_same_file(client, reference, tmp_path):
    path = tmp_path / "resumed.h5"
    bad = Marked(nan_on=first_param(3), raise_on=first_param(5))
    with pytest.raises(RemoteTaskError, match="simulation chunk 5 failed on a Dask worker") as info, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        write(bad, path, client=client)
    err = info.value
    assert isinstance(err, ValueError) and err.index == 5  # a ValueError on the worker stays one here
    assert "Worker traceback" in str(err) and "_dask_sims.py" in str(err) and "failed on purpose" in str(err)
    assert isinstance(err.__cause__, ValueError)
    meta = hdf5_info(path)
    assert meta["chunks_done"] == 5 and meta["num_simulated"] == 5 * CHUNK and not meta["completed"]
    out = write(Marked(nan_on=first_param(3)), path, client=client)  # the fixed simulator resumes at chunk 5
    assert out["num_new"] == N - 5 * CHUNK
    assert_same_file(reference, path)


def test_extending_a_file_on_the_cluster_equals_a_fresh_run(client, reference, tmp_path):
    # a small run (ending in a partial chunk) extended on the cluster: the partial chunk is simulated again
    path = tmp_path / "grown.h5"
    write(Marked(nan_on=first_param(3)), path, n=100)
    with pytest.warns(RuntimeWarning):
        write(Marked(nan_on=first_param(3)), path, client=client)
    assert_same_file(reference, path)


def test_unpicklable_simulator_is_refused_with_advice(client, tmp_path):
    class Locked:  # holds a lock: cannot be sent to a worker
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self, x):
            return x

    with pytest.raises(TypeError, match="cannot be sent to Dask workers.*module-level function"):
        write(Locked(), tmp_path / "x.h5", client=client)
    assert not (tmp_path / "x.h5").exists()


def test_simulator_missing_on_the_workers_is_refused_before_submitting(client, tmp_path, monkeypatch):
    # a module the workers cannot import would make Dask hang (the worker cannot read the task): checked first
    (tmp_path / "only_here.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # this process only: the workers were started before
    import only_here

    with pytest.raises(WorkerImportError, match="cannot be loaded on 2 Dask worker.*No module named 'only_here'"):
        write(only_here.double, tmp_path / "x.h5", client=client)
    assert not (tmp_path / "x.h5").exists()
    monkeypatch.delitem(sys.modules, "only_here")


def test_map_ordered_bounds_what_is_in_flight_and_map_as_completed_yields_all(client):
    consumed = []

    def items():
        for i in range(12):
            consumed.append(i)
            yield -i

    seen = []
    for i, value in map_ordered(client, abs, items(), max_in_flight=3):
        assert len(consumed) - len(seen) <= 3  # submitted or buffered, not yet yielded
        seen.append(i)
        assert value == i
    assert seen == list(range(12))
    got = dict(map_as_completed(client, abs, (-i for i in range(7)), start=10, max_in_flight=2))
    assert got == {10 + i: i for i in range(7)}
    with pytest.raises(RemoteTaskError, match=r"task 2 failed.*ZeroDivisionError") as info:
        list(map_ordered(client, functools.partial(operator.truediv, 1), [1, 2, 0, 3]))  # builtins: no import there
    assert not isinstance(info.value, ValueError) and "Worker traceback" in str(info.value)


def test_client_for_checks_its_arguments():
    with client_for() as c, client_for(workers=1) as c1:
        assert c is None and c1 is None
    with pytest.raises(ValueError, match="not both"):
        with client_for(workers=2, scheduler="tcp://127.0.0.1:1"):
            pass
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        with client_for(workers=0):
            pass
    with pytest.raises(TypeError, match="workers must be an integer"):
        with client_for(workers=2.5):
            pass
    pytest.importorskip("distributed")
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:1' within 1 s"):
        with client_for(scheduler="tcp://127.0.0.1:1", timeout=1):
            pass


def test_missing_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    extra = r'pip install "sbi_inn\[distributed\]"'
    with pytest.raises(ImportError, match=f"batch sampling needs dask.distributed.*{extra}"):
        require_distributed("batch sampling")
    with pytest.raises(ImportError, match=r"simulate_to_hdf5\(client=...\).*sbi_inn\[distributed\]"):
        write(Marked(), tmp_path / "a.h5", client=object())
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "gaussian_mixture", "-n", "50", "-o", str(tmp_path / "b.h5"), "--workers", "2", "--quiet"])
    assert exit_info.value.code == 2
    assert 'pip install "sbi_inn[distributed]"' in capsys.readouterr().err
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_cli_workers_and_scheduler_write_the_single_process_file(client, tmp_path, capsys, monkeypatch):
    import distributed

    started = []

    class Reused:  # `--workers 2` gets the module's cluster (starting a second one costs ~20 s of worker imports)
        def __init__(self, **kwargs):
            started.append(kwargs)

        def __getattr__(self, name):
            return getattr(client.cluster, name)

        def close(self):
            started.append("closed")

    argv = ["simulate", "gaussian_mixture", "-n", "300", "--chunk-size", "70", "--seed", "2", "--quiet", "-o"]
    assert main([*argv, str(tmp_path / "one.h5")]) == 0
    with monkeypatch.context() as m:
        m.setattr(distributed, "LocalCluster", Reused)
        assert main([*argv, str(tmp_path / "two.h5"), "--workers", "2"]) == 0
    assert started[0]["n_workers"] == 2 and started[0]["threads_per_worker"] == 1 and started[0]["processes"]
    assert started[-1] == "closed"
    assert main([*argv, str(tmp_path / "sched.h5"), "--scheduler", client.scheduler.address]) == 0
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5")
    assert_same_file(tmp_path / "one.h5", tmp_path / "sched.h5")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, str(tmp_path / "bad.h5"), "--scheduler", "tcp://127.0.0.1:1", "--scheduler-timeout", "1"])
    assert exit_info.value.code == 2 and "cannot reach the Dask scheduler" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses both
        main([*argv, str(tmp_path / "bad.h5"), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])


KILLED_CLIENT = textwrap.dedent("""
    import sys
    import torch
    from torch.distributions import Independent, Normal
    from sbi_inn import simulate_to_hdf5
    from sbi_inn.distributed import client_for

    if __name__ == "__main__":
        tests, path, sleeping, nan_on, sleep_on, n, chunk, seed = sys.argv[1:]
        sys.path.append(tests)
        from _dask_sims import Marked

        sim = Marked(nan_on=float(nan_on), sleep_on=float(sleep_on), seconds=600, sleep_marker=sleeping)
        prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        with client_for(workers=2) as client:
            simulate_to_hdf5(sim, prior, int(n), path, seed=int(seed), chunk_size=int(chunk), client=client,
                             show_progress=False)
""")


@pytest.mark.slow
def test_killed_client_resumes_to_the_same_file(client, reference, tmp_path):
    # a client process (with its own LocalCluster) killed while chunk 9 hangs on a worker, then resumed here
    script, path, sleeping = tmp_path / "client.py", tmp_path / "killed.h5", tmp_path / "sleeping"
    script.write_text(KILLED_CLIENT)
    argv = [Path(__file__).parent, path, sleeping, first_param(3), first_param(9), N, CHUNK, SEED]
    proc = subprocess.Popen([sys.executable, str(script), *map(str, argv)], start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not sleeping.exists():
            time.sleep(0.1)
        assert sleeping.exists(), "the client never reached chunk 9"
        time.sleep(3)  # chunks 0-8 (and some after 9) are done; the writer waits for chunk 9
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its worker processes
        proc.wait()
    meta = hdf5_info(path)
    assert 1 <= meta["chunks_done"] <= 9 and not meta["completed"]
    write(Marked(nan_on=first_param(3)), path, client=client)
    assert_same_file(reference, path)


def test_a_chunk_whose_worker_dies_is_retried(client, reference, tmp_path):
    marker = tmp_path / "died"
    with pytest.warns(RuntimeWarning):
        write(Marked(nan_on=first_param(3), die_on=first_param(2), marker=str(marker)), tmp_path / "d.h5",
              client=client)
    assert marker.exists()  # the worker did die once
    assert_same_file(reference, tmp_path / "d.h5")
