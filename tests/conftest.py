"""Shared fixtures and markers: ``slow`` (run with ``pytest -m slow``) and ``gpu`` (skipped without CUDA)."""

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
