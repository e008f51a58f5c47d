"""Data-parallel training (sbi_inn.ddp): two gloo CPU processes launched with torch.multiprocessing run, in one
launch, the command line, the Python entry point, an interrupted and resumed fit, a setup error on one rank, a
non-finite loss on one rank and a fit streamed from disk; the parent checks what they wrote against a single-process
fit."""

import json
import os
import socket
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from sbi_inn import BoxUniform, fit_posterior, load_posterior, simulate_to_hdf5
from sbi_inn.cli.ddp import main
from sbi_inn.ddp import Distributed, RankFailedError
from sbi_inn.train import TrainConfig, epoch_batches, train

WORLD = 2
# no dropout: its masks come from per-rank streams, and without it a DDP step is the single-process step
# 390 simulations: 351 training rows in batches of 70 and 71, so ranks hold 35 and 36 rows of some batches
CONFIG = {"flow": {"num_blocks": 2, "hidden": 16, "dropout": 0.0},
          "train": {"epochs": 3, "batch_size": 64, "lr": 1e-2, "lr_final": 1e-3, "patience": None}}


class _Interrupt(Exception):
    pass


def _simulate(x, generator):
    return x + 0.1 * torch.randn(x.shape, generator=generator)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, root: str) -> None:
    """Every phase on every rank; results go to ``root/rank{rank}.json`` and weights to ``root/*_{rank}.pt``."""
    import sbi_inn.cinn
    import sbi_inn.train
    from sbi_inn.ddp import process_group

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    data, out = f"{root}/sims.h5", {}

    def fit(ckpt, **kw):
        kw.setdefault("data", data)
        return fit_posterior(config=CONFIG, distributed=True, show_progress=False, checkpoint_dir=ckpt, seed=3, **kw)

    with process_group(timeout=60) as group:
        # 1. the command, then the same command again without --force
        cli = [data, "-o", f"{root}/cli.sbi", "--epochs", "2", "--batch-size", "64", "--checkpoint-dir",
               f"{root}/ck_cli", "--quiet", "--seed", "1"]
        out["cli_rc"] = main(cli)
        t0 = time.perf_counter()
        out["cli_again_rc"] = main(cli)
        out["cli_again_seconds"] = time.perf_counter() - t0

        # 2. the Python entry point, uninterrupted
        post = fit(f"{root}/ck_full")
        torch.save(post.model.state_dict(), f"{root}/full_{rank}.pt")
        out["full_history"] = post.history
        out["distributed"] = post.metadata["distributed"]

        # 3. interrupted in its second epoch on every rank, then resumed from rank 0's checkpoint
        run_epoch = sbi_inn.train._run_epoch

        def interrupted(*args, **kwargs):  # _run_epoch(model, loss_fn, data, optimizer, config, device, shuffle,
            if args[8] == 1:  # noise, epoch, ...): raise at the start of the second epoch
                raise _Interrupt
            return run_epoch(*args, **kwargs)

        sbi_inn.train._run_epoch = interrupted
        try:
            fit(f"{root}/ck_resume")
        except _Interrupt:
            out["interrupted"] = True
        finally:
            sbi_inn.train._run_epoch = run_epoch
        group.barrier()  # rank 0 may still be writing the checkpoint of the first epoch
        out["checkpoint_after_interrupt"] = os.path.isfile(f"{root}/ck_resume/checkpoint.pt")
        if group.is_main:  # the weights after one epoch, to size how far training moves them
            state = torch.load(f"{root}/ck_resume/checkpoint.pt", weights_only=True)
            torch.save(state["model"], f"{root}/one_epoch.pt")
        post = fit(f"{root}/ck_resume")
        torch.save(post.model.state_dict(), f"{root}/resumed_{rank}.pt")
        out["resumed_epochs"] = [h["epoch"] for h in post.history]

        # 4. a setup error on rank 1 only ends both ranks, each with an error
        t0 = time.perf_counter()
        try:
            fit(None, data=data if rank == 0 else f"{root}/missing.h5")
        except Exception as err:  # noqa: BLE001 - the test records which error each rank raised
            out["setup_error"] = [type(err).__name__, str(err)]
        out["setup_error_seconds"] = time.perf_counter() - t0

        # 5. a non-finite loss on rank 1 only: the step is skipped on both, and the weights stay equal
        loss, calls = sbi_inn.cinn.ConditionalINN.loss, {"n": 0}

        def nan_once(self, batch):
            calls["n"] += 1
            value, parts = loss(self, batch)
            return (value * float("nan") if rank == 1 and calls["n"] == 2 else value), parts

        sbi_inn.cinn.ConditionalINN.loss = nan_once
        try:
            post = fit(None)
        finally:
            sbi_inn.cinn.ConditionalINN.loss = loss
        torch.save(post.model.state_dict(), f"{root}/nan_{rank}.pt")
        out["nan_skipped"] = [h["skipped_steps"] for h in post.history]

        # 6. the same fit streamed from the file (HDF5Dataset through a DataLoader) instead of read into memory
        post = fit(None, data_config={"max_memory_bytes": 1})
        torch.save(post.model.state_dict(), f"{root}/streamed_{rank}.pt")
    with open(f"{root}/rank{rank}.json", "w") as f:
        json.dump(out, f)


def _dying_worker(rank: int, port: int, root: str) -> None:
    """Rank 1 stops responding in the second epoch of training (alive, but never reaching the next collective);
    rank 0 records how it ended and after how long."""
    import sbi_inn.train
    from sbi_inn.ddp import process_group

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run_epoch = sbi_inn.train._run_epoch

    def dying(*args, **kwargs):
        if rank == 1 and args[8] == 1:
            time.sleep(120)  # stuck: no error, no closed connection, only the group's timeout can tell
            os._exit(3)
        return run_epoch(*args, **kwargs)

    sbi_inn.train._run_epoch = dying
    with process_group(timeout=5):
        t0 = time.perf_counter()
        try:
            fit_posterior(data=f"{root}/sims.h5", config=CONFIG, distributed=True, show_progress=False)
            ended = "finished"
        except Exception as err:  # noqa: BLE001 - the test records how the surviving rank ended
            ended = f"{type(err).__name__}: {err}"[:300]
        with open(f"{root}/survivor.json", "w") as f:
            json.dump({"ended": ended, "seconds": time.perf_counter() - t0}, f)


def _start(worker, root, join=True):
    """Two ranks of ``worker(rank, port, root)``. Forked when this process runs no other thread, which skips
    re-importing torch in each child (half a minute on a loaded 2-core box); tqdm's monitor thread is stopped for
    that (tqdm restarts it). Otherwise spawned."""
    if tqdm.monitor is not None:
        tqdm.monitor.exit()
    method = "fork" if threading.active_count() == 1 else "spawn"
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return mp.start_processes(worker, args=(_free_port(), str(root)), nprocs=WORLD, join=join,
                                  start_method=method)
    finally:
        os.environ.pop("OMP_NUM_THREADS") if before is None else os.environ.__setitem__("OMP_NUM_THREADS", before)


def _weights(path):
    return torch.load(path, weights_only=True)


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).nan_to_num(0.0).abs().max()) for k in a
               if a[k].is_floating_point())


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    simulate_to_hdf5(_simulate, BoxUniform(torch.zeros(2), torch.ones(2)), 390, root / "sims.h5", seed=0,
                     show_progress=False)
    _start(_worker, root)
    results = [json.loads((root / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return root, results


def test_command_writes_a_model_on_rank_0_and_refuses_to_overwrite_it(launched):
    root, results = launched
    assert [r["cli_rc"] for r in results] == [0, 0]
    post = load_posterior(root / "cli.sbi", device="cpu")
    samples = post.sample((200,), torch.tensor([0.3, 0.7]), seed=0)
    assert samples.shape == (200, 2) and bool(((samples > 0) & (samples < 1)).all())
    assert post.metadata["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert (root / "ck_cli" / "checkpoint.pt").is_file() and not (root / "ck_cli" / "checkpoint.pt.lock").exists()
    # an existing output: every rank ends at once with exit code 2, before any training
    assert [r["cli_again_rc"] for r in results] == [2, 2]
    assert max(r["cli_again_seconds"] for r in results) < 10


def test_ranks_end_with_identical_weights_equal_to_single_process_training(launched):
    root, results = launched
    w0, w1 = _weights(root / "full_0.pt"), _weights(root / "full_1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert results[0]["full_history"] == results[1]["full_history"]
    assert results[0]["distributed"] == {"world_size": 2, "backend": "gloo"}
    # a step on two ranks is the single-process step up to rounding: same data, split, init and global batch
    single = fit_posterior(data=root / "sims.h5", config=CONFIG, show_progress=False, seed=3)
    reference = single.model.state_dict()
    moved = _max_diff(reference, _weights(root / "one_epoch.pt"))
    diff = _max_diff(reference, w0)
    assert diff < 1e-4 and diff < 0.01 * moved, (diff, moved)  # far closer than two epochs of training move them
    for a, b in zip(single.history, results[0]["full_history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)


def test_resume_from_rank_0_checkpoint_equals_the_uninterrupted_run(launched):
    root, results = launched
    assert all(r["interrupted"] and r["checkpoint_after_interrupt"] for r in results)
    assert results[0]["resumed_epochs"] == [0, 1, 2]
    full = _weights(root / "full_0.pt")
    for rank in range(WORLD):
        resumed = _weights(root / f"resumed_{rank}.pt")
        assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_setup_error_on_one_rank_ends_every_rank_promptly(launched):
    _, results = launched
    assert results[1]["setup_error"][0] in ("FileNotFoundError", "ValueError", "OSError")
    assert "missing.h5" in results[1]["setup_error"][1]
    assert results[0]["setup_error"][0] == RankFailedError.__name__
    assert "rank 1" in results[0]["setup_error"][1] and "missing.h5" in results[0]["setup_error"][1]
    assert max(r["setup_error_seconds"] for r in results) < 20  # the group timeout is 60 s: nobody waited for it


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(launched):
    root, results = launched
    assert results[0]["nan_skipped"] == results[1]["nan_skipped"] == [1, 0, 0]
    w0, w1 = _weights(root / "nan_0.pt"), _weights(root / "nan_1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.parametrize("num_rows, batch_size, world", [(10, 5, 2), (257, 64, 2), (1000, 100, 3), (95, 64, 4)])
def test_shards_are_disjoint_and_cover_the_single_process_batches(num_rows, batch_size, world):
    single = epoch_batches(num_rows, batch_size, torch.Generator().manual_seed(7))
    shards = [epoch_batches(num_rows, batch_size, torch.Generator().manual_seed(7), rank=r, world_size=world)
              for r in range(world)]
    assert all(len(s) == len(single) for s in shards)  # every rank takes the same number of steps
    for i, batch in enumerate(single):
        parts = [s[i] for s in shards]
        assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())  # disjoint, and the union is the batch
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert sorted(torch.cat([torch.cat(s) for s in shards]).tolist()) == list(range(num_rows))
    other_epoch = epoch_batches(num_rows, batch_size, torch.Generator().manual_seed(8), rank=0, world_size=world)
    assert not all(torch.equal(a, b) for a, b in zip(other_epoch, shards[0]))  # reshuffled by the epoch's seed
    with pytest.raises(ValueError, match="rank"):
        epoch_batches(num_rows, batch_size, None, rank=world, world_size=world)


def test_batches_smaller_than_the_world_and_missing_process_group_are_refused():
    group = Distributed(rank=0, world_size=4, local_rank=0, device=torch.device("cpu"), backend="gloo")
    model = torch.nn.Linear(1, 1)
    data = (torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="at least 4 rows"):
        train(model, lambda m, b, s: (m(b[0]).mean(), {}), data, None, TrainConfig(batch_size=2),
              device=torch.device("cpu"), show_progress=False, distributed=group)
    with pytest.raises(RuntimeError, match="torchrun"):
        fit_posterior(data=data, distributed=True, show_progress=False)
    with pytest.raises(TypeError, match="distributed"):
        fit_posterior(data=data, distributed="yes", show_progress=False)


def test_command_without_torchrun_says_how_to_launch(capsys, monkeypatch, tmp_path):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert main([str(tmp_path / "sims.h5"), "-o", str(tmp_path / "m.sbi")]) == 2
    assert "torchrun" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cinn", "inn"])
def test_torchrun_launch_trains_both_methods(tmp_path, method):
    """The documented launch, ``torchrun --nproc_per_node 2 -m sbi_inn.cli.ddp``, end to end (a minute or so: three
    processes import torch)."""
    import subprocess
    import sys

    simulate_to_hdf5(_simulate, BoxUniform(torch.zeros(2), torch.ones(2)), 600, tmp_path / "sims.h5", seed=0,
                     show_progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "sbi_inn.cli.ddp", str(tmp_path / "sims.h5"), "-o", str(tmp_path / "m.sbi"),
           "--epochs", "2", "--batch-size", "100", "--method", method, "--checkpoint-dir", str(tmp_path / "ck"),
           "--timeout", "60"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 gloo processes" in done.stdout and "saved to" in done.stdout
    post = load_posterior(tmp_path / "m.sbi", device="cpu")
    assert post.metadata["distributed"]["world_size"] == 2 and post.metadata["method"] == method
    assert torch.isfinite(post.sample((50,), torch.tensor([0.5, 0.5]), seed=0)).all()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode != 0 and "exists; pass --force" in again.stderr


def test_streaming_from_disk_gives_the_in_memory_weights(launched):
    root, _ = launched
    full = _weights(root / "full_0.pt")
    for rank in range(WORLD):
        streamed = _weights(root / f"streamed_{rank}.pt")
        assert all(torch.allclose(full[k], streamed[k], atol=1e-6) for k in full)


def test_a_rank_stuck_during_training_ends_the_other_by_the_timeout_not_a_hang(tmp_path):
    simulate_to_hdf5(_simulate, BoxUniform(torch.zeros(2), torch.ones(2)), 390, tmp_path / "sims.h5", seed=0,
                     show_progress=False)
    context = _start(_dying_worker, tmp_path, join=False)
    survivor, stuck = context.processes
    survivor.join(100)
    alive = survivor.exitcode is None
    for p in context.processes:
        if p.exitcode is None:
            p.kill()
            p.join()
    assert not alive, "rank 0 still waits for the stuck rank"
    ended = json.loads((tmp_path / "survivor.json").read_text())
    assert "timed out" in ended["ended"].lower()  # the collective it waited in gave up after the group's 5 s
    assert 4 < ended["seconds"] < 60
