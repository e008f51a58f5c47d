"""sbi_inn.simulation: the one adapter from a user's simulator to seeded, validated chunks, and the seed tree."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn.priors import BoxUniform
from sbi_inn.simulation import (
    STREAMS,
    Chunk,
    SeedTree,
    Simulation,
    accepts_keyword,
    drop_invalid,
    pilot,
    simulate_chunks,
    simulate_memory,
)
from simulators import get_simulator

PRIOR = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)


def with_generator(x, generator):
    return x + 0.1 * torch.randn(x.shape, generator=generator)


def global_rng(x):
    return x + 0.1 * torch.randn_like(x)


def numpy_only(x):
    return x.copy() + 0.1 * np.random.randn(*x.shape)  # a tensor has no .copy(): the adapter switches to numpy


# -- the seed tree ----------------------------------------------------------------------------------------------
def test_seed_tree_streams_are_documented_disjoint_and_reproducible():
    tree = SeedTree(7)
    # the simulation stream is the root's children (i,): what simulation files always used
    state = np.random.SeedSequence(7, spawn_key=(3,)).generate_state(2, dtype=np.uint64) >> np.uint64(1)
    assert tree.chunk_seeds(3) == (int(state[0]), int(state[1]))
    # named streams are children 2**32 + k, so they never meet a chunk index
    assert tree.sequence("split").spawn_key == (2**32 + STREAMS["split"],)
    seeds = {name: tree.seed(name, *(() if name == "simulation" else (0,))) for name in STREAMS}
    assert len(set(seeds.values())) == len(STREAMS)
    assert SeedTree(7).seed("init") == tree.seed("init") != SeedTree(8).seed("init")
    assert tree.chunk_seeds(0, "fresh", 1) != tree.chunk_seeds(0, "fresh", 2)
    assert all(0 <= s < 2**63 for s in tree.seeds("train", 5, n=3))
    with pytest.raises(ValueError, match="unknown random stream"):
        tree.sequence("noise")
    for bad, err in ((-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="seed"):
            SeedTree(bad)


# -- calling and seeding ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [with_generator, global_rng, numpy_only])
def test_every_kind_of_simulator_is_seeded_and_leaves_the_global_state_alone(fn):
    torch.manual_seed(0)
    np.random.seed(0)
    t0, n0 = torch.get_rng_state(), np.random.get_state()[1].copy()
    sim = Simulation(fn, PRIOR)
    a = sim.chunk(SeedTree(1).chunk_seeds(0), 50)
    b = Simulation(fn, PRIOR).chunk(SeedTree(1).chunk_seeds(0), 50)
    c = sim.chunk(SeedTree(2).chunk_seeds(0), 50)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    assert a.x.dtype == a.y.dtype == torch.float32 and a.y.shape == (50, 2)
    assert 0.05 < float((a.y - a.x).std()) < 0.15  # the simulator's noise, not zero and not the prior's
    assert torch.equal(torch.get_rng_state(), t0) and np.array_equal(np.random.get_state()[1], n0)
    assert sim.use_numpy is (fn is numpy_only) and sim.takes_generator is (fn is with_generator)


def test_a_given_generator_is_passed_on_or_turned_into_a_seed():
    seen = []

    def sim_fn(x, generator):
        seen.append(generator)
        return x

    g = torch.Generator().manual_seed(3)
    Simulation(sim_fn, PRIOR).call(torch.zeros(4, 2), g)
    assert seen == [g]
    a = Simulation(global_rng, PRIOR).call(torch.zeros(4, 2), torch.Generator().manual_seed(3))
    b = Simulation(global_rng, PRIOR).call(torch.zeros(4, 2), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_accepts_keyword():
    assert accepts_keyword(with_generator, "generator") and not accepts_keyword(global_rng, "generator")
    assert accepts_keyword(lambda x, *, generator=None: x, "generator")
    assert not accepts_keyword(lambda x, **kw: x, "generator")  # only an explicit keyword counts
    assert not accepts_keyword(len, "generator")  # a builtin without a signature


def test_simulator_objects_bring_names_configuration_and_set_valuedness():
    sim = Simulation(get_simulator("gaussian_sets", max_size=6))
    assert sim.name == "gaussian_sets" and sim.config["max_size"] == 6 and sim.is_set_valued is True
    assert sim.param_names == ["mu", "sigma2"]
    chunk = sim.chunk(SeedTree(0).chunk_seeds(0), 30)
    assert chunk.y.shape[:2] == (30, 6) and chunk.sizes.dtype == torch.int64
    mask = torch.arange(6)[None] < chunk.sizes[:, None]
    assert (chunk.y[~mask] == 0).all() and (chunk.y[mask] != 0).all()
    with pytest.raises(ValueError, match="3 dimensions but the simulator 'inverse_kinematics' takes 4"):
        Simulation(get_simulator("inverse_kinematics"), BoxUniform(torch.zeros(3), torch.ones(3)))


# -- validity rules, in one place -------------------------------------------------------------------------------
def _run(out, n=4):
    return Simulation(lambda x: out, PRIOR).run(torch.zeros(n, 2), 0)


def test_output_shapes_dtypes_and_set_sizes_are_checked_with_clear_messages():
    with pytest.raises(ValueError, match=r"returned shape \(3, 2\), expected \(4, M\) for 4 parameter rows"):
        _run(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"y\[:, None\]"):
        _run(torch.zeros(4))
    with pytest.raises(TypeError, match="real numbers"):
        _run(torch.zeros(4, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="real numbers"):
        _run(np.zeros((4, 2), dtype=np.complex128))
    with pytest.raises(TypeError, match="not an array"):
        _run({"y": 1})
    with pytest.raises(ValueError, match=r"expected \(4, K, M\)"):
        _run((torch.zeros(4, 3), torch.ones(4, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"sizes outside \[0, 3\]"):
        _run((torch.zeros(4, 3, 1), torch.full((4,), 4)))
    with pytest.raises(ValueError, match="whole numbers"):
        _run((torch.zeros(4, 3, 1), torch.full((4,), 1.5)))
    with pytest.raises(ValueError, match="whole numbers"):
        _run((torch.zeros(4, 3, 1), torch.ones(4, dtype=torch.bool)))
    # whole-numbered float sizes (numpy simulators) and empty sets are valid
    chunk = _run((np.zeros((4, 3, 1)), np.array([0.0, 1.0, 2.0, 3.0])))
    assert chunk.sizes.tolist() == [0, 1, 2, 3] and chunk.valid.all()
    counts = _run(np.arange(8).reshape(4, 2))  # integer observations (counts) become float32
    assert counts.y.dtype == torch.float32 and counts.y[3].tolist() == [6.0, 7.0]


def test_invalid_rows_are_marked_not_dropped_and_set_padding_does_not_count():
    y = torch.zeros(4, 3, 1)
    y[0, 2] = math.nan  # padding of a set of size 2: not an observation
    y[1, 0] = math.inf  # a member: invalid
    chunk = _run((y, torch.tensor([2, 3, 3, 3])))
    assert chunk.valid.tolist() == [True, False, True, True] and chunk.num_invalid == 1
    vec = _run(torch.tensor([[0.0, 1.0], [math.nan, 0.0], [0.0, 0.0], [0.0, -math.inf]]))
    assert vec.valid.tolist() == [True, False, True, False]
    with pytest.warns(RuntimeWarning, match="2 of 4 simulations returned NaN or inf and were dropped"):
        kept = drop_invalid(vec)
    assert len(kept) == 2 and kept.valid.all()
    with pytest.raises(ValueError, match="all 4 simulations returned NaN or inf"):
        drop_invalid(_run(torch.full((4, 2), math.nan)))


def test_pilot_names_the_failure():
    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="pilot batch of 16 prior draws.*boom"):
        pilot(Simulation(broken, PRIOR), 16, 0, 0.5)
    with pytest.raises(ValueError, match="16 of 16 pilot simulations returned NaN"):
        pilot(Simulation(lambda x: torch.full_like(x, math.nan), PRIOR), 16, 0, 0.5)
    assert len(pilot(Simulation(with_generator, PRIOR), 16, 0, 0.5)) == 16
    for discrete in (torch.distributions.Poisson(torch.ones(2)), torch.distributions.Bernoulli(0.5 * torch.ones(2))):
        with pytest.raises(TypeError, match="discrete support"):
            Simulation(with_generator, Independent(discrete, 1))
    with pytest.raises(TypeError, match="discrete support"):
        Simulation(with_generator, [torch.distributions.Uniform(0.0, 1.0), torch.distributions.Poisson(3.0)])

    class IntegerPrior(torch.distributions.Distribution):  # a user's prior that samples integers
        event_shape = torch.Size([2])
        batch_shape = torch.Size()

        def sample(self, shape=()):
            return torch.zeros(*shape, 2, dtype=torch.long)

    with pytest.raises(TypeError, match="floating point"):
        Simulation(with_generator, IntegerPrior(validate_args=False)).sample_prior(4, 0)


# -- the chunk loop ---------------------------------------------------------------------------------------------
def test_chunks_depend_on_their_index_only_so_a_resumed_loop_equals_an_uninterrupted_one():
    sim = Simulation(with_generator, PRIOR)
    seeds = SeedTree(4).chunk_seeds
    full = list(simulate_chunks(sim, 250, chunk_size=100, seeds=seeds))
    assert [len(c) for c in full] == [100, 100, 50]
    resumed = list(simulate_chunks(sim, 250, chunk_size=100, seeds=seeds, first_chunk=1))
    assert all(torch.equal(a.y, b.y) for a, b in zip(full[1:], resumed))
    whole = simulate_memory(sim, 250, chunk_size=100, seeds=seeds)
    assert torch.equal(whole.x, Chunk.concat(full).x) and len(whole) == 250
    with pytest.raises(ValueError, match="chunk_size"):
        list(simulate_chunks(sim, 10, chunk_size=0, seeds=seeds))


def test_concat_pads_sets_to_the_largest_k():
    a = Chunk(torch.zeros(2, 1), torch.ones(2, 3, 1), torch.tensor([3, 1]), torch.ones(2, dtype=torch.bool))
    b = Chunk(torch.zeros(1, 1), torch.ones(1, 5, 1), torch.tensor([5]), torch.ones(1, dtype=torch.bool))
    c = Chunk.concat([a, b])
    assert c.y.shape == (3, 5, 1) and c.sizes.tolist() == [3, 1, 5] and (c.y[:2, 3:] == 0).all()


def test_resimulation_keeps_the_dtype_of_floating_outputs():
    sim = Simulation(lambda x: 2 * x, require_prior=False, dtype=None)
    x = torch.full((3, 2), 1 / 3, dtype=torch.float64)
    assert sim.run(x, 0).y.dtype == torch.float64
    assert Simulation(lambda x: 2 * x, require_prior=False).run(x, 0).y.dtype == torch.float32


def test_the_numpy_retry_gets_a_fresh_generator():
    """A generator-taking simulator that fails on a tensor only after drawing noise: its numpy retry must see the
    same noise as every later (numpy) call with the same seed, or the first chunk of a file would differ."""
    def draws_then_fails_on_tensors(x, generator):
        noise = torch.randn(x.shape, generator=generator).numpy()
        return x.copy() + 0.1 * noise  # a tensor has no .copy(): AttributeError after the draw

    sim = Simulation(draws_then_fails_on_tensors, PRIOR)
    seeds = SeedTree(0).chunk_seeds(0)
    first, again = sim.chunk(seeds, 20), sim.chunk(seeds, 20)
    assert sim.use_numpy and torch.equal(first.y, again.y)


def test_zero_columns_and_a_width_that_changes_midway_are_named():
    with pytest.raises(ValueError, match="0 columns"):
        _run(torch.zeros(4, 0))
    calls = []

    def widening(x):
        calls.append(1)
        return torch.zeros(len(x), 2 if len(calls) == 1 else 3)

    with pytest.raises(ValueError, match=r"returned 3 observation dimensions, expected 2 \(y0, y1\)"):
        simulate_memory(Simulation(widening, PRIOR), 30, chunk_size=10, seeds=SeedTree(0).chunk_seeds)
