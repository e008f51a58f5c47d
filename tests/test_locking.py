"""One writer per output (sbi_inn.locking): a second process is refused clearly, a killed holder never blocks."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn import fit_posterior
from sbi_inn.data import simulate_to_hdf5
from sbi_inn.locking import OutputLockedError, exclusive_lock, lock_path
from sbi_inn.observations import write_samples

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")

PRIOR = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)


def square(x):
    return x**2


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _holder(code: str) -> subprocess.Popen:
    """A second process that runs ``code`` (which takes the lock), prints ``ready`` and waits for its stdin to close."""
    script = textwrap.dedent(code) + "\nprint('ready', flush=True)\nimport sys; sys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_lock_file_is_removed_and_retaken(tmp_path):
    target = tmp_path / "sims.h5"
    with exclusive_lock(target):
        assert lock_path(target).read_text().strip() == str(os.getpid())
    assert not lock_path(target).exists()
    with exclusive_lock(target):  # again after release
        pass


def test_second_simulation_writer_is_refused_and_the_file_is_untouched(tmp_path):
    path = tmp_path / "sims.h5"
    simulate_to_hdf5(square, PRIOR, 50, path, show_progress=False)
    before = _digest(path)
    proc = _holder(f"from sbi_inn.locking import exclusive_lock\nlock = exclusive_lock({str(path)!r})\n"
                   "lock.__enter__()")
    try:
        for resume in (True, False):
            with pytest.raises(OutputLockedError, match=rf"sims\.h5.*being written by process {proc.pid}"):
                simulate_to_hdf5(square, PRIOR, 100, path, resume=resume, show_progress=False)
        assert _digest(path) == before
        assert not path.with_name("sims.h5.tmp").exists()
    finally:
        _release(proc)
    assert simulate_to_hdf5(square, PRIOR, 100, path, show_progress=False)["num_simulations"] == 100


def test_a_killed_holder_never_blocks_a_resume(tmp_path):
    path = tmp_path / "sims.h5"
    proc = _holder(f"from sbi_inn.locking import exclusive_lock\nlock = exclusive_lock({str(path)!r})\n"
                   "lock.__enter__()")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert lock_path(path).exists()  # left behind by the killed process, but no longer locked
    assert simulate_to_hdf5(square, PRIOR, 20, path, show_progress=False)["num_rows"] == 20
    assert not lock_path(path).exists()


def test_a_file_open_for_writing_elsewhere_is_named_not_called_broken(tmp_path):
    path = tmp_path / "sims.h5"
    simulate_to_hdf5(square, PRIOR, 20, path, show_progress=False)
    proc = _holder(f"import h5py\nf = h5py.File({str(path)!r}, 'r+')")
    try:
        with pytest.raises(OutputLockedError, match="open in another process"):
            simulate_to_hdf5(square, PRIOR, 40, path, show_progress=False)
    finally:
        _release(proc)


def test_fit_refuses_a_checkpoint_dir_in_use_before_simulating(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    calls = []

    def sim(x):
        calls.append(len(x))
        return x**2

    proc = _holder(f"from sbi_inn.locking import exclusive_lock\n"
                   f"lock = exclusive_lock({str(ckpt / 'checkpoint.pt')!r})\nlock.__enter__()")
    try:
        with pytest.raises(OutputLockedError, match="checkpoint"):
            fit_posterior(sim, PRIOR, num_simulations=50, checkpoint_dir=ckpt, show_progress=False)
    finally:
        _release(proc)
    assert calls == []


def test_samples_writer_is_refused_while_another_writes(tmp_path):
    path = tmp_path / "samples.npy"
    proc = _holder(f"from sbi_inn.locking import exclusive_lock\nlock = exclusive_lock({str(path)!r})\n"
                   "lock.__enter__()")
    try:
        with pytest.raises(OutputLockedError, match="samples file"):
            write_samples(path, np.zeros((3, 2, 2)), param_names=["a", "b"])
    finally:
        _release(proc)
    write_samples(path, np.zeros((3, 2, 2)), param_names=["a", "b"])
    assert np.load(path).shape == (3, 2, 2)


def test_cli_simulate_into_a_file_being_written_exits_2_with_one_line(tmp_path, capsys):
    from sbi_inn.cli import main

    path = tmp_path / "ik.h5"
    proc = _holder(f"from sbi_inn.locking import exclusive_lock\nlock = exclusive_lock({str(path)!r})\n"
                   "lock.__enter__()")
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["simulate", "inverse_kinematics", "-n", "20", "-o", str(path), "--quiet"])
    finally:
        _release(proc)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "being written by process" in err and not path.exists()
