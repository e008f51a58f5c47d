"""Shared fixtures and markers: ``slow`` (run with ``pytest -m slow``) and ``gpu`` (skipped without CUDA)."""

import contextlib

import pytest
import torch


@pytest.fixture
def seed() -> int:
    return 1234


@pytest.fixture
def gen(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run the suite on one torch thread: the models under test are small, and on a 2-core machine shared with
    DataLoader workers or other jobs two threads make them many times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_default():
    """Build models under float64 as the default dtype: FrEIA inverts the fixed mixing matrices in the default
    dtype when a block is built, and a float32 inverse (whose rounding depends on the CPU's LAPACK) limits an
    invertibility test to ~1e-4 on deep random flows. Restored afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture
def interrupted_in_epoch(monkeypatch):
    """``with interrupted_in_epoch(3): fit(...)``: the third training epoch run inside the block raises
    ``KeyboardInterrupt`` (as a user's Ctrl-C would), which the block must meet; training is normal again after it."""
    import sbi_inn.train as train_module

    @contextlib.contextmanager
    def arm(epoch: int):
        real, calls = train_module._run_epoch, []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == epoch:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(train_module, "_run_epoch", interrupted)
            with pytest.raises(KeyboardInterrupt):
                yield

    return arm
