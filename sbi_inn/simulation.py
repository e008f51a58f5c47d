"""Running a user's simulator: the one adapter from a callable to seeded, validated chunks, and the seed tree.

Every place that simulates (``fit_posterior`` in memory, ``simulate_to_hdf5``, fresh simulations per training epoch,
rejection ABC, re-simulation diagnostics) goes through :class:`Simulation` and :func:`simulate_chunks`, so the rules
for what a simulator may return and how it is seeded are written once:

* A simulator is a ``simulators.Simulator`` (its ``simulate`` method, name, configuration, parameter and observation
  names are used) or any callable ``x (n, D) -> y (n, M)``, set-valued ones ``-> (y (n, K, M) zero-padded,
  sizes (n,))``. It may take and return torch tensors or numpy arrays (a callable that fails on a tensor with a
  ``TypeError`` or ``AttributeError`` is called with numpy arrays from then on).
* A callable with a ``generator`` keyword gets a seeded ``torch.Generator``; any other runs with torch's and numpy's
  global RNGs seeded and restored afterwards, so the caller's global random state is never changed.
* Validity: observations must be real (complex raises), ``y`` must have one row per parameter row, set sizes must be
  whole numbers in ``[0, K]``; a row with NaN or inf among its (set members') observations is *invalid*: it is kept
  in the :class:`Chunk` with ``valid = False``, and the caller decides (drop and count, raise, keep).

The seed tree (:class:`SeedTree`): one integer ``seed`` is the root ``numpy.random.SeedSequence(seed)``; everything
random in a fit draws from a named child of it, so streams never overlap and each is reproducible on its own:

=================  ============================  ===================================================================
stream             spawn key                     what it seeds
=================  ============================  ===================================================================
``simulation``     ``(i,)``                      chunk ``i`` of the simulations (prior draws, simulator noise); the
                                                 same in memory and in an HDF5 file, so both train on the same pairs
``pilot``          ``(2**32 + 1,)``              the pilot batch that checks the simulator before any real work
``split``          ``(2**32 + 2,)``              the train / validation split of the simulations
``init``           ``(2**32 + 3,)``              weight initialisation (and the flows' fixed rotations)
``train``          ``(2**32 + 4, epoch)``        shuffling and the noise a loss draws in that epoch
``fresh``          ``(2**32 + 5, epoch, i)``     chunk ``i`` of the fresh simulations of that epoch
``abc``            ``(2**32 + 6, i)``            chunk ``i`` of a rejection-ABC reference
``resimulation``   ``(2**32 + 7, i)``            chunk ``i`` of a re-simulation diagnostic
``rejection``      ``(2**32 + 8, i)``            chunk ``i`` of exact rejection sampling (``reference``)
``inference``      ``(2**32 + 9, k)``            chunk ``k`` of posterior samples over a file (``sbi_inn.batch``)
``ensemble``       ``(2**32 + 10, k)``           the seed tree of ensemble member ``k >= 1`` (``sbi_inn.ensemble``)
=================  ============================  ===================================================================

Chunk ``i`` of a stream draws its prior and simulator seeds as ``generate_state(2, uint64)`` of its sequence,
reduced to 63 bits. The ``simulation`` stream sits on the root's first children so that simulation files written
before the tree existed resume unchanged. Losses get their noise from a ``torch.Generator`` (never the global RNG);
the one exception is subnet dropout, which can only draw from torch's global RNG and therefore runs inside a forked,
seeded global state (``sbi_inn.train``).

Example:
    >>> import torch
    >>> from torch.distributions import Independent, Normal
    >>> sim = Simulation(lambda x, generator: x + 0.1 * torch.randn(x.shape, generator=generator),
    ...                  Independent(Normal(torch.zeros(2), torch.ones(2)), 1))
    >>> chunks = list(simulate_chunks(sim, 250, chunk_size=100, seeds=SeedTree(0).chunk_seeds))
    >>> [len(c.x) for c in chunks], chunks[0].y.shape, chunks[0].num_invalid
    ([100, 100, 50], torch.Size([100, 2]), 0)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_inn.priors import prior_for

_NAMED = 2**32  # named streams are the root's children from here on; simulation chunks use the indices below it
STREAMS = {"simulation": None, "pilot": 1, "split": 2, "init": 3, "train": 4, "fresh": 5, "abc": 6,
           "resimulation": 7, "rejection": 8, "inference": 9,
           "ensemble": 10}


def check_seed(seed) -> int:
    """``seed`` as a non-negative ``int``; ``TypeError`` / ``ValueError`` naming the problem otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


class SeedTree:
    """The named random streams of one ``seed`` (see the module docstring for the table).

    Example:
        >>> tree = SeedTree(0)
        >>> tree.seed("init") == SeedTree(0).seed("init") != tree.seed("split")
        True
    """

    def __init__(self, seed: int):
        self.root = check_seed(seed)

    def sequence(self, stream: str, *index: int) -> np.random.SeedSequence:
        """The ``SeedSequence`` of ``stream`` (and, for indexed streams, of chunk / epoch ``index``)."""
        if stream not in STREAMS:
            raise ValueError(f"unknown random stream {stream!r}; streams: {sorted(STREAMS)}")
        key = tuple(int(i) for i in index) if stream == "simulation" else (_NAMED + STREAMS[stream], *index)
        return np.random.SeedSequence(self.root, spawn_key=key)

    def seed(self, stream: str, *index: int) -> int:
        """One 63-bit integer seed of ``stream``."""
        return self.seeds(stream, *index, n=1)[0]

    def seeds(self, stream: str, *index: int, n: int) -> list[int]:
        """``n`` 63-bit integer seeds of ``stream`` (``generate_state(n, uint64)`` reduced to 63 bits)."""
        return _seeds(self.sequence(stream, *index), n)

    def generator(self, stream: str, *index: int, device: str | torch.device = "cpu") -> torch.Generator:
        """A ``torch.Generator`` on ``device`` seeded from ``stream``."""
        return torch.Generator(device=device).manual_seed(self.seed(stream, *index))

    def numpy(self, stream: str, *index: int) -> np.random.Generator:
        """A numpy ``Generator`` seeded from ``stream``."""
        return np.random.default_rng(self.sequence(stream, *index))

    def chunk_seeds(self, chunk: int, stream: str = "simulation", *prefix: int) -> tuple[int, int]:
        """``(prior_seed, simulator_seed)`` of chunk ``chunk`` of ``stream`` (``prefix``: e.g. the epoch)."""
        return tuple(self.seeds(stream, *prefix, chunk, n=2))


def _seeds(seq: np.random.SeedSequence, n: int) -> list[int]:
    return [int(v >> np.uint64(1)) for v in seq.generate_state(n, dtype=np.uint64)]


def accepts_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` can be called with the keyword argument ``name``."""
    try:
        p = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


@dataclass(frozen=True)
class Chunk:
    """Simulated pairs: ``x (n, D)`` float32, ``y (n, M)`` or sets ``(n, K, M)`` float32 zero-padded with ``sizes
    (n,)`` int64, and ``valid (n,)``: no NaN/inf among the row's (set members') observations."""

    x: Tensor
    y: Tensor
    sizes: Tensor | None
    valid: Tensor

    @property
    def num_invalid(self) -> int:
        return int((~self.valid).sum())

    def __len__(self) -> int:
        return self.x.shape[0]

    def rows(self, keep: Tensor) -> Chunk:
        """The rows where ``keep`` (a boolean mask or indices) selects."""
        return Chunk(self.x[keep], self.y[keep], None if self.sizes is None else self.sizes[keep], self.valid[keep])

    def example(self) -> list[float]:
        """The parameters of the first invalid row (for error messages)."""
        return self.x[int(torch.nonzero(~self.valid)[0, 0])].tolist()

    @staticmethod
    def concat(chunks: list[Chunk]) -> Chunk:
        """One chunk of all rows; sets are padded to the largest ``K``."""
        ys = [c.y for c in chunks]
        if chunks[0].sizes is not None:
            k = max(y.shape[1] for y in ys)
            ys = [torch.nn.functional.pad(y, (0, 0, 0, k - y.shape[1])) for y in ys]
        return Chunk(torch.cat([c.x for c in chunks]), torch.cat(ys),
                     None if chunks[0].sizes is None else torch.cat([c.sizes for c in chunks]),
                     torch.cat([c.valid for c in chunks]))


def invalid_rows(y: Tensor, sizes: Tensor | None) -> Tensor:
    """``(n,)`` True where a row's observations (a set's members within its size) hold NaN or inf."""
    finite = torch.isfinite(y)
    if sizes is None:
        return ~finite.reshape(y.shape[0], -1).all(-1)
    in_set = torch.arange(y.shape[1], device=y.device)[None, :] < sizes[:, None]
    return ~(finite | ~in_set[..., None]).all(-1).all(-1)


class Simulation:
    """A user's simulator and prior, called reproducibly and checked (module docstring).

    Args:
        simulate: a ``simulators.Simulator`` or a callable (module docstring).
        prior: a distribution with event shape ``(D,)``; ``None`` takes ``simulate.prior`` (may stay ``None`` for
            re-simulation, which never draws from the prior).
        name, config: recorded name and JSON configuration, overriding what ``simulate`` provides.
        require_prior: ``False`` for re-simulation of given parameters, where no prior is needed.
        dtype: the floating dtype observations are returned in (float32, as stored and trained on); ``None`` keeps a
            floating output's own dtype (integer and boolean outputs become float32).

    Attributes:
        name, config, param_names, obs_names, is_set_valued (``None`` until the first output for a plain callable
        that does not say), takes_generator.
    """

    def __init__(self, simulate: Callable, prior=None, *, name: str | None = None, config: dict | None = None,
                 require_prior: bool = True, dtype: torch.dtype | None = torch.float32):
        if not callable(simulate):
            raise TypeError(f"simulate must be a Simulator or a callable x -> y, got {type(simulate).__name__}")
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"simulator_config must be a dict, got {type(config).__name__}")
        self.prior = prior_for(simulate, prior) if (require_prior or prior is not None) else None
        if self.prior is not None and _is_discrete(self.prior):
            raise TypeError(f"the prior has a discrete support ({self.prior.support}); a normalising flow infers "
                            "continuous parameters only")
        is_simulator = hasattr(simulate, "simulate") and hasattr(simulate, "is_set_valued")
        self.fn = simulate.simulate if is_simulator else simulate
        self.name = str(name or getattr(simulate, "name", None) or getattr(simulate, "__name__", None)
                        or type(simulate).__name__)
        if config is None and is_simulator and callable(getattr(simulate, "config", None)):
            config = simulate.config()
        self.config = {} if config is None else config
        try:
            self.config_json = json.dumps(self.config, sort_keys=True)
        except TypeError as err:
            raise TypeError(f"simulator configuration must be JSON-serialisable: {err}") from None
        self.param_names = list(getattr(simulate, "param_names", None) or [])
        self.obs_names = list(getattr(simulate, "obs_names", None) or [])
        self.is_set_valued: bool | None = bool(simulate.is_set_valued) if is_simulator else None
        self.takes_generator = accepts_keyword(self.fn, "generator")
        self.dtype = dtype
        self.use_numpy = False
        self.expectation_hint = ""  # appended to shape errors when the expected output comes from a file
        if self.prior is not None:
            d = self.param_dim
            if self.param_names and len(self.param_names) != d:
                raise ValueError(f"the prior has {d} dimensions but the simulator {self.name!r} takes "
                                 f"{len(self.param_names)} parameters ({', '.join(self.param_names)})")
            self.param_names = self.param_names or [f"x{i}" for i in range(d)]

    @property
    def param_dim(self) -> int:
        return int(self.prior.event_shape[0])

    # -- calling ------------------------------------------------------------------------------------------------
    def call(self, x: Tensor, rng: int | torch.Generator):
        """The simulator's raw output for parameters ``x`` ``(n, D)``, seeded by ``rng`` (an integer seed, or a
        generator passed on as it is when the simulator takes one, else turned into a seed)."""
        given = isinstance(rng, torch.Generator)
        seed = None if given and self.takes_generator else (
            int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device)) if given else int(rng))

        def run(arg):  # a fresh generator per attempt: a numpy retry must not see one the tensor call advanced
            if self.takes_generator:
                return self.fn(arg, generator=rng if given else torch.Generator(device=x.device).manual_seed(seed))
            np_state = np.random.get_state()
            try:
                with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    np.random.seed(seed % 2**32)
                    return self.fn(arg)
            finally:
                np.random.set_state(np_state)

        if self.use_numpy:
            return run(x.detach().cpu().numpy().copy())
        try:
            return run(x)
        except (TypeError, AttributeError) as err:  # a numpy-only simulator
            try:
                out = run(x.detach().cpu().numpy().copy())
            except Exception:
                raise err from None
            self.use_numpy = True
            return out

    def run(self, x: Tensor, rng: int | torch.Generator) -> Chunk:
        """Simulate parameters ``x`` ``(n, D)`` and check the output (:meth:`parse`)."""
        return self.parse(x, self.call(x, rng))

    def sample_prior(self, n: int, seed: int) -> Tensor:
        """``n`` prior draws ``(n, D)`` float32 under a forked global RNG seeded with ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.prior.sample((n,))
        x = torch.as_tensor(x)
        if x.shape != (n, self.param_dim):
            raise ValueError(f"prior.sample(({n},)) returned shape {tuple(x.shape)}, expected ({n}, {self.param_dim})")
        if not torch.is_floating_point(x):
            raise TypeError(f"prior samples must be floating point, got dtype {x.dtype} (a discrete prior cannot be "
                            "inferred with a normalising flow)")
        return x.to(torch.float32)

    def chunk(self, seeds: tuple[int, int], n: int) -> Chunk:
        """``n`` prior draws and their simulations, seeded by ``(prior_seed, simulator_seed)``."""
        prior_seed, sim_seed = seeds
        return self.run(self.sample_prior(n, prior_seed), sim_seed)

    # -- checking -----------------------------------------------------------------------------------------------
    def parse(self, x: Tensor, out) -> Chunk:
        """Check one output for parameters ``x`` ``(n, D)``: shapes, dtypes, set sizes; mark invalid rows."""
        n = x.shape[0]
        pair = isinstance(out, (tuple, list)) and len(out) == 2
        is_set = pair if self.is_set_valued is None else self.is_set_valued
        hint = self.expectation_hint
        if is_set:
            if not pair:
                raise ValueError(f"set-valued simulator {self.name!r} must return (y (n, K, M), sizes (n,)), got "
                                 f"{type(out).__name__}{hint}")
            y, sizes = _real_float(out[0], self.name, "y", self.dtype), _sizes(out[1], self.name, n)
            if y.ndim != 3 or y.shape[0] != n:
                raise ValueError(f"simulator {self.name!r} returned y of shape {tuple(y.shape)}, expected "
                                 f"({n}, K, M) for a set-valued simulator with {n} parameter rows{hint}")
            if n and (sizes.min() < 0 or sizes.max() > y.shape[1]):
                raise ValueError(f"simulator {self.name!r} returned set sizes outside [0, {y.shape[1]}] "
                                 f"(K = {y.shape[1]} rows per set)")
        else:
            if isinstance(out, tuple):
                raise ValueError(f"simulator {self.name!r} returned a tuple, expected an array y of shape ({n}, M) "
                                 f"for a simulator that is not set-valued{hint}")
            y, sizes = _real_float(out, self.name, "y", self.dtype), None
            if y.ndim != 2 or y.shape[0] != n:
                fix = "; use y[:, None] for a scalar observation" if y.ndim == 1 else ""
                raise ValueError(f"simulator {self.name!r} returned shape {tuple(y.shape)}, expected ({n}, M) for "
                                 f"{n} parameter rows: one observation per row of x{fix}{hint}")
        if y.shape[-1] == 0:
            raise ValueError(f"simulator {self.name!r} returned observations with 0 columns (shape "
                             f"{tuple(y.shape)}); it must return at least one number per simulation")
        if self.is_set_valued is None:
            self.is_set_valued = bool(is_set)
        if self.obs_names and y.shape[-1] != len(self.obs_names):
            raise ValueError(f"simulator {self.name!r} returned {y.shape[-1]} observation dimensions, expected "
                             f"{len(self.obs_names)} ({', '.join(self.obs_names)}){hint}")
        self.obs_names = self.obs_names or [f"y{j}" for j in range(y.shape[-1])]
        x = x.to(torch.float32) if self.dtype is not None else x
        y = y.to(x.device)
        sizes = None if sizes is None else sizes.to(x.device)
        return Chunk(x, y, sizes, ~invalid_rows(y, sizes))


def _is_discrete(prior) -> bool:
    try:
        return bool(getattr(prior.support, "is_discrete", False))
    except NotImplementedError:  # a user's distribution without a support
        return False


def _real_float(value, name: str, what: str, dtype: torch.dtype | None) -> Tensor:
    if isinstance(value, Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(f"simulator {name!r} returned {what} of type {type(value).__name__} that is not an "
                            f"array: {err}") from None
    if t.is_complex():
        raise TypeError(f"simulator {name!r} returned {what} of dtype {t.dtype}; observations must be real numbers")
    if not (t.is_floating_point() or t.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                                                  torch.int64)):
        raise TypeError(f"simulator {name!r} returned {what} of dtype {t.dtype}; expected real numbers")
    if dtype is None and t.is_floating_point():
        return t
    return t.to(dtype or torch.float32)  # integer and boolean observations (counts, labels) are used as floats


def _sizes(value, name: str, n: int) -> Tensor:
    s = value.detach().cpu() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    whole = not s.is_floating_point() or bool(torch.isfinite(s).all() and torch.equal(s, s.round()))
    if s.shape != (n,) or s.dtype == torch.bool or s.is_complex() or not whole:
        raise ValueError(f"set-valued simulator {name!r} returned sizes of shape {tuple(s.shape)} and dtype "
                         f"{s.dtype}; expected whole numbers of shape ({n},)")
    return s.to(torch.int64)


# -- the chunk loop -------------------------------------------------------------------------------------------------
def simulate_chunks(sim: Simulation, num: int, *, chunk_size: int, seeds: Callable[[int], tuple[int, int]],
                    first_chunk: int = 0, show_progress: bool = False, desc: str = "simulating",
                    initial: int = 0) -> Iterator[Chunk]:
    """Chunks ``first_chunk, first_chunk + 1, ...`` of ``num`` prior draws in all (``min(chunk_size, remaining)``
    each, counted from chunk 0), chunk ``i`` seeded by ``seeds(i)`` (e.g. ``SeedTree(seed).chunk_seeds``).

    Chunk ``i`` depends on ``(seeds(i), its size)`` only, so a run that stops and starts again at ``first_chunk``
    produces the same chunks as one that never stopped (this is what resumable files rely on).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with tqdm(total=num, initial=initial, disable=not show_progress, desc=desc, unit="sim",
              dynamic_ncols=True) as bar:
        for i in range(first_chunk, -(-num // chunk_size)):
            n = min(chunk_size, num - i * chunk_size)
            yield sim.chunk(seeds(i), n)
            bar.update(n)


def simulate_memory(sim: Simulation, num: int, *, chunk_size: int, seeds: Callable[[int], tuple[int, int]],
                    show_progress: bool = False, desc: str = "simulating") -> Chunk:
    """All ``num`` simulations of :func:`simulate_chunks` in one :class:`Chunk` (invalid rows still marked)."""
    return Chunk.concat(list(simulate_chunks(sim, num, chunk_size=chunk_size, seeds=seeds,
                                             show_progress=show_progress, desc=desc)))


def drop_invalid(chunk: Chunk, *, what: str = "simulations", stacklevel: int = 3) -> Chunk:
    """``chunk`` without its invalid rows, with a warning counting them; ``ValueError`` when none is valid."""
    import warnings

    n_bad, n = chunk.num_invalid, len(chunk)
    if n_bad == n:
        raise ValueError(f"all {n} {what} returned NaN or inf (e.g. for x = {chunk.example()}); the simulator "
                         "looks broken")
    if n_bad:
        warnings.warn(f"{n_bad} of {n} {what} returned NaN or inf and were dropped", RuntimeWarning,
                      stacklevel=stacklevel)
        return chunk.rows(chunk.valid)
    return chunk


def pilot(sim: Simulation, n: int, seed: int, max_invalid_fraction: float) -> Chunk:
    """Simulate ``n`` draws of the ``pilot`` stream and raise with a precise message if the simulator fails on
    them, returns malformed output, or returns NaN/inf for more than ``max_invalid_fraction`` of them."""
    x = sim.sample_prior(n, SeedTree(seed).chunk_seeds(0, "pilot")[0])
    try:
        out = sim.call(x, SeedTree(seed).chunk_seeds(0, "pilot")[1])
    except Exception as err:
        msg = f"the simulator failed on a pilot batch of {n} prior draws (x of shape {tuple(x.shape)}): {err}"
        try:
            wrapped = type(err)(msg)
        except Exception:  # an exception type with another constructor signature
            wrapped = RuntimeError(msg)
        raise wrapped from err
    chunk = sim.parse(x, out)
    if chunk.num_invalid > max_invalid_fraction * n:
        raise ValueError(f"{chunk.num_invalid} of {n} pilot simulations returned NaN or inf (e.g. for x = "
                         f"{chunk.example()}); more than {max_invalid_fraction:.0%} invalid means the simulator or "
                         "the prior is broken")
    return chunk
