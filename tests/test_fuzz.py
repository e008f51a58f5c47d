"""Property-based fuzz of the public functions: every bad input gets a TypeError or ValueError naming the argument.

Hypothesis draws inputs that are wrong in one way each (shape, width, dtype incl. complex/string/object, NaN/inf,
empty, ragged lists, None) for each public entry point; a raw error of another type (IndexError, RuntimeError,
AttributeError from deep inside torch) or a message that does not name the argument fails the test. Inputs that are
unusual but meaningful (integer, boolean, float16/float64 arrays of the right shape) must work and give finite
results.
"""

import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sbi_inn import BoxUniform, fit_posterior, simulate_to_hdf5
from sbi_inn import diagnostics as dg
from sbi_inn.observations import write_samples
from sbi_inn.posterior import OutsideTrainingWarning

D = 2  # parameters and observation width of the fixture posterior
# derandomized, so the default suite tries the same cases every run; SBI_INN_FUZZ_EXAMPLES=500 searches deeper
FUZZ = settings(max_examples=int(os.environ.get("SBI_INN_FUZZ_EXAMPLES", 40)), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def post():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(300, D, generator=gen)
    return fit_posterior(data=(x, x + 0.05 * torch.randn(300, D, generator=gen)), prior=BoxUniform([0, 0], [1, 1]),
                         config={"flow": {"num_blocks": 2, "hidden": 16}, "train": {"epochs": 1}}, show_progress=False)


# -- strategies: inputs that are wrong in one way ------------------------------------------------------------------
def _floats(shape):
    return hnp.arrays(np.float32, shape, elements=st.floats(-10, 10, width=32))


def wrong_shape(valid_ndims: tuple[int, ...], width: int):
    """Float arrays whose number of dimensions or last width is wrong (never empty: see `empty`)."""
    ndim_wrong = st.sampled_from([k for k in range(5) if k not in valid_ndims]).flatmap(
        lambda k: _floats(tuple([3] * (k - 1) + [width]) if k else ()))
    width_wrong = st.sampled_from(valid_ndims).flatmap(
        lambda k: st.sampled_from([w for w in (1, 3, 5) if w != width]).flatmap(
            lambda w: _floats(tuple([3] * (k - 1) + [w]))))
    return st.one_of(ndim_wrong, width_wrong)


def nonfinite(shape):
    """The right shape with NaN, +inf or -inf at some entries."""
    return st.tuples(_floats(shape), st.sampled_from([math.nan, math.inf, -math.inf]),
                     st.integers(0, int(np.prod(shape)) - 1)).map(lambda t: _poke(*t))


def _poke(a, value, index):
    a = a.copy()
    a.flat[index] = value
    return a


def bad_dtype(shape):
    """The right shape with a dtype that holds no real numbers: complex, strings, objects."""
    return st.one_of(
        _floats(shape).map(lambda a: a.astype(np.complex64) + 1j),
        _floats(shape).map(lambda a: torch.from_numpy(a).to(torch.complex64) * 1j),
        st.just(np.full(shape, "a")),
        st.just(np.array([None] * int(np.prod(shape)), dtype=object).reshape(shape)),
    )


def not_an_array():
    return st.one_of(st.none(), st.text(max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                     st.just([[1.0, 2.0], [1.0]]), st.just([[1.0], [2.0, 3.0, 4.0]]))


def empty(valid_ndims):
    return st.sampled_from(valid_ndims).map(lambda k: np.zeros((0,) + (D,) * (k - 1), np.float32) if k else
                                            np.zeros((0,), np.float32))


def bad(shape, valid_ndims):
    return st.one_of(wrong_shape(valid_ndims, shape[-1]), nonfinite(shape), bad_dtype(shape), not_an_array(),
                     empty(valid_ndims))


def unusual_but_valid(shape):
    return st.one_of(
        hnp.arrays(np.int64, shape, elements=st.integers(0, 1)),
        hnp.arrays(np.bool_, shape),
        hnp.arrays(np.float64, shape, elements=st.floats(0, 1)),
        hnp.arrays(np.float16, shape, elements=st.floats(0, 1, width=16)),
    )


def _refused(call, value, name: str):
    """``call(value)`` raises TypeError/ValueError whose message names ``name`` (a regex)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutsideTrainingWarning)
        with pytest.raises((TypeError, ValueError)) as info:
            call(value)
    assert re.search(name, str(info.value)), f"message does not name {name!r}: {info.value}"


# -- posterior ------------------------------------------------------------------------------------------------------
@FUZZ
@given(value=bad((D,), (1,)))
def test_sample_refuses_bad_observations(post, value):
    _refused(lambda v: post.sample((4,), v, seed=0), value, "observation")


@FUZZ
@given(value=bad((3, D), (2,)))
def test_sample_batched_refuses_bad_observations(post, value):
    _refused(lambda v: post.sample_batched((4,), v, seed=0), value, "observation")


@FUZZ
@given(value=st.one_of(wrong_shape((1, 2), D), nonfinite((3, D)), bad_dtype((3, D)), not_an_array()))
def test_log_prob_refuses_bad_parameters(post, value):
    _refused(lambda v: post.log_prob(v, np.full(D, 0.5, np.float32)), value, r"\bx\b")


@FUZZ
@given(value=bad((D,), (1,)))
def test_log_prob_refuses_bad_observations(post, value):
    _refused(lambda v: post.log_prob(np.full((1, D), 0.5, np.float32), v), value, "observation")


@FUZZ
@given(value=st.one_of(st.integers(-3, 0), st.floats(0.5, 3.5).filter(lambda f: not f.is_integer()), st.none(),
                       st.just((2, 3)), st.just(()), st.text(max_size=2), st.just(True)))
def test_sample_refuses_bad_sample_shapes(post, value):
    _refused(lambda v: post.sample(v, np.full(D, 0.5, np.float32), seed=0), value, "sample_shape")


@FUZZ
@given(value=unusual_but_valid((3, D)))
def test_integer_boolean_and_other_float_observations_work(post, value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutsideTrainingWarning)
        samples = post.sample_batched((4,), value, seed=0)
        logp = post.log_prob(value, value)
    assert samples.shape == (4, 3, D) and torch.isfinite(samples).all() and torch.isfinite(logp).all()


# -- fitting --------------------------------------------------------------------------------------------------------
@FUZZ
@given(value=st.one_of(nonfinite((20, D)), bad_dtype((20, D)), not_an_array(), empty((2,)),
                       wrong_shape((2,), D).filter(lambda a: a.ndim != 2 or a.shape[0] != 20)))
def test_fit_refuses_bad_training_parameters(value):
    y = np.zeros((20, D), np.float32)
    _refused(lambda v: fit_posterior(data=(v, y), show_progress=False), value, r"data=\(x, y\)")


@FUZZ
@given(value=st.one_of(nonfinite((20, D)), bad_dtype((20, D)), not_an_array(), empty((2,))))
def test_fit_refuses_bad_training_observations(value):
    x = np.zeros((20, D), np.float32)
    _refused(lambda v: fit_posterior(data=(x, v), show_progress=False), value, r"data=\(x, y\)")


@FUZZ
@given(out=st.one_of(nonfinite((50, D)), bad_dtype((50, D)), not_an_array(), st.just(np.zeros((50, 0))),
                     st.just(np.zeros((49, D))), st.just(np.zeros((50, 2, 2, 2)))))
def test_simulate_refuses_a_simulator_returning_bad_output(tmp_path_factory, out):
    path = tmp_path_factory.mktemp("sim") / "s.h5"
    prior = BoxUniform([0, 0], [1, 1])
    if isinstance(out, np.ndarray) and out.dtype.kind == "f" and out.shape == (50, D):
        out = np.full((50, D), math.nan, np.float32)  # NaN everywhere: a broken simulator, not a few bad rows

    def simulator(x):
        return out

    with pytest.raises((TypeError, ValueError)) as info:
        simulate_to_hdf5(simulator, prior, 50, path, chunk_size=50, show_progress=False)
    assert re.search("simulat", str(info.value)), info.value
    assert not path.exists()


# -- priors, diagnostics, outputs ----------------------------------------------------------------------------------
@FUZZ
@given(value=st.one_of(wrong_shape((1,), D), nonfinite((D,)), bad_dtype((D,)), not_an_array(), empty((1,)),
                       st.just(np.array([2.0, 2.0], np.float32))))
def test_box_uniform_refuses_bad_bounds(value):
    _refused(lambda v: BoxUniform(v, np.ones(D)), value, "BoxUniform")


@FUZZ
@given(value=bad((10, 5, D), (3,)))
def test_calibration_error_refuses_bad_samples(value):
    _refused(lambda v: dg.calibration_error(v, np.zeros((5, D))), value, "samples")


@FUZZ
@given(value=st.one_of(nonfinite((30, D)), bad_dtype((30, D)), not_an_array(), empty((2,)),
                       st.just(np.zeros((30, 3))), st.just(np.zeros((3, 30, D)))))
def test_c2st_refuses_bad_samples(value):
    _refused(lambda v: dg.c2st(v, np.zeros((30, D))), value, r"\ba\b")


@FUZZ
@given(value=bad((5, D), (2,)))
def test_map_error_refuses_bad_estimates(value):
    _refused(lambda v: dg.map_error(v, np.zeros((5, D))), value, "x_map")


@FUZZ
@given(value=st.one_of(wrong_shape((3,), D), bad_dtype((4, 2, D)), not_an_array()))
def test_write_samples_refuses_bad_samples(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("out") / "s.npy"
    _refused(lambda v: write_samples(path, v, param_names=["a", "b"]), value, "samples")
    assert not path.exists()
