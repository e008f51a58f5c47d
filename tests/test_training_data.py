"""sbi_inn.training_data: simulations made, read, split and refreshed the same way for both methods."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn import DataConfig
from sbi_inn.simulation import Simulation
from sbi_inn.training_data import (
    fresh_epochs,
    from_arrays,
    from_file,
    from_simulator,
    split,
    split_rows,
    standardization_sample,
)

PRIOR = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)


def noisy(x, generator):
    return x + 0.1 * torch.randn(x.shape, generator=generator)


def test_split_rows_is_a_seeded_partition_with_the_rounding_rule():
    train, val = split_rows(1000, 0.1, 3)
    assert len(val) == 100 and len(train) == 900
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()  # sorted: the same order in memory and on disk
    assert np.array_equal(split_rows(1000, 0.1, 3)[1], val) and not np.array_equal(split_rows(1000, 0.1, 4)[1], val)
    assert len(split_rows(10, 0.01, 0)[1]) == 1  # at least one validation row
    assert len(split_rows(10, 0.99, 0)[0]) == 1  # at least one training row
    assert len(split_rows(10, 0.0, 0)[1]) == 0
    assert len(split_rows(1001, 0.1, 0)[1]) == 100  # round(100.1)


def test_memory_and_streamed_splits_hold_the_same_rows(tmp_path):
    sim = Simulation(noisy, PRIOR)
    path = tmp_path / "s.h5"
    on_disk = from_simulator(sim, 500, path, DataConfig(chunk_size=120), 2, False)
    streamed = from_file(path, PRIOR, DataConfig(max_memory_bytes=1))
    in_memory = from_simulator(Simulation(noisy, PRIOR), 500, None, DataConfig(chunk_size=120), 2, False)
    assert streamed.path is not None and on_disk.x is not None
    assert torch.equal(on_disk.x, in_memory.x) and torch.equal(on_disk.y, in_memory.y)
    (mt, mv), (st, sv) = split(in_memory, 0.2, 5), split(streamed, 0.2, 5)
    assert torch.equal(mt[0], st.get_batch(range(len(st)))[0]) and torch.equal(mv[1], sv.get_batch(range(len(sv)))[1])
    assert torch.equal(standardization_sample(mt)[0], standardization_sample(st)[0])
    assert on_disk.fingerprint["sha256"] == streamed.fingerprint["sha256"] and len(on_disk.fingerprint["sha256"]) == 64
    with pytest.raises(ValueError, match="the prior has 3 dimensions but .* holds 2 parameters"):
        from_file(path, Independent(Normal(torch.zeros(3), torch.ones(3)), 1), DataConfig())


def test_fresh_epochs_are_new_simulations_deterministic_in_the_epoch():
    data = from_simulator(Simulation(noisy, PRIOR), 300, None, DataConfig(), 0, False)
    first, _ = split(data, 0.1, 0)
    stream = fresh_epochs(data, first, 270, 100, 0)
    assert stream(0) is first
    e1, e1_again, e2 = stream(1), stream(1), stream(2)
    assert e1[0].shape == (270, 2) and torch.equal(e1[0], e1_again[0]) and torch.equal(e1[1], e1_again[1])
    assert not torch.equal(e1[0], e2[0]) and not torch.equal(e1[0], first[0][:270])
    assert 0.05 < float((e1[1] - e1[0]).std()) < 0.15  # pairs of the simulator, not shuffled halves
    given = from_arrays(data.x, data.y, None, PRIOR)
    with pytest.raises(ValueError, match="needs a simulator"):
        fresh_epochs(given, first, 270, 100, 0)


def test_from_arrays_checks_its_input():
    x, y = torch.zeros(5, 2), torch.zeros(5, 3)
    data = from_arrays(x, y, None, None)
    assert data.num_rows == 5 and data.param_names == ["x0", "x1"] and math.isinf(float(data.lo[0]))
    with pytest.raises(ValueError, match="equal N"):
        from_arrays(x, y[:4], None, None)
    with pytest.raises(ValueError, match="NaN"):
        from_arrays(x, torch.full((5, 3), math.inf), None, None)
    with pytest.raises(TypeError, match="complex"):
        from_arrays(x.to(torch.complex64), y, None, None)
    sets = from_arrays(x, torch.zeros(5, 4, 1), torch.tensor([1, 2, 3, 4, 0]), None)
    assert sets.is_set_valued and sets.sizes.dtype == torch.int64
