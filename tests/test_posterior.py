"""The Posterior wrapper through a trained small cINN on a linear-Gaussian problem with a known posterior.

Prior ``x ~ N(0, I_2)``, observation ``y = x + 0.5 eps``: the posterior is ``N(0.8 y, 0.2 I)``.
"""

import json
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_inn.cinn import ConditionalINN
from sbi_inn.fit import FitConfig, fit_posterior
from sbi_inn.flows import FlowConfig
from sbi_inn.posterior import FORMAT_VERSION, Posterior, load_posterior

PRIOR = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
POST_MEAN, POST_STD = 0.8, math.sqrt(0.2)


def linear_gaussian(x, generator=None):
    return x + 0.5 * torch.randn(x.shape, generator=generator)


linear_gaussian.param_names = ["a", "b"]


@pytest.fixture(scope="module")
def posterior():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models train many times faster on one thread on a busy machine
    try:
        cfg = FitConfig(flow=FlowConfig(num_blocks=4, hidden=32, num_layers=2), summary_dim=8, summary_hidden=32,
                        train=dict(epochs=30, batch_size=128, lr=2e-3, lr_final=1e-4, patience=None))
        return fit_posterior(linear_gaussian, PRIOR, num_simulations=3000, config=cfg, seed=0, show_progress=False)
    finally:
        torch.set_num_threads(threads)




Y_OBS = torch.tensor([1.0, -0.5])


def test_shapes(posterior):
    assert posterior.sample((10,), Y_OBS).shape == (10, 2)
    assert posterior.sample(10, Y_OBS[None]).shape == (10, 2)  # an int and a (1, M) observation work too
    Y = torch.randn(5, 2)
    assert posterior.sample_batched((7,), Y).shape == (7, 5, 2)
    x = torch.randn(9, 2)
    assert posterior.log_prob(x, Y_OBS).shape == (9,)
    assert posterior.log_prob(x, torch.randn(9, 2)).shape == (9,)
    assert posterior.map(Y_OBS, num_samples=256).shape == (2,)
    assert posterior.param_names == ["a", "b"]


def test_sample_matches_the_known_posterior(posterior):
    s = posterior.sample((4000,), Y_OBS, seed=0)
    torch.testing.assert_close(s.mean(0), POST_MEAN * Y_OBS, atol=0.08, rtol=0)
    assert ((s.std(0) / POST_STD - 1).abs() < 0.15).all()
    exact = Independent(Normal(POST_MEAN * Y_OBS, POST_STD * torch.ones(2)), 1)
    x = exact.sample((200,))
    assert (posterior.log_prob(x, Y_OBS) - exact.log_prob(x)).abs().median() < 0.2


def test_sample_batched_chunking_equals_unchunked(posterior):
    Y = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    full = posterior.sample_batched((50,), Y, seed=3)
    chunked = posterior.sample_batched((50,), Y, seed=3, max_rows=100)  # 2 observations per chunk
    # the same latent draws; only float rounding of different batch sizes in the matrix products differs
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    out = torch.empty(50, 7, 2)
    assert posterior.sample_batched((50,), Y, seed=3, max_rows=150, out=out) is out
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
    # a single observation through sample() draws the same as through sample_batched()
    single = posterior.sample((50,), Y[0], seed=3)
    torch.testing.assert_close(single, posterior.sample_batched((50,), Y[:1], seed=3)[:, 0])
    # splitting the samples of one observation (n > max_rows) still gives fresh, valid draws
    split = posterior.sample_batched((50,), Y[:2], seed=3, max_rows=20)
    assert torch.isfinite(split).all() and split[:, 0].unique(dim=0).shape[0] == 50
    assert not torch.equal(posterior.sample((50,), Y[0], seed=3), posterior.sample((50,), Y[0], seed=4))


def test_errors_for_bad_inputs(posterior):
    with pytest.raises(ValueError, match="shape"):
        posterior.sample((5,), torch.zeros(3))
    with pytest.raises(ValueError, match="sample_batched"):
        posterior.sample((5,), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        posterior.sample((5,), torch.tensor([math.nan, 0.0]))
    with pytest.raises(ValueError, match=r"\(B, \*\(2,\)\)"):
        posterior.sample_batched((5,), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        posterior.sample_batched((5,), torch.tensor([[0.0, 0.0], [math.inf, 0.0]]))
    with pytest.raises(ValueError, match="sample_shape"):
        posterior.sample((0,), Y_OBS)
    with pytest.raises(ValueError, match="sample_shape"):
        posterior.sample((2, 3), Y_OBS)
    with pytest.raises(ValueError, match="x must have shape"):
        posterior.log_prob(torch.zeros(4, 3), Y_OBS)
    with pytest.raises(ValueError, match="x contains NaN"):
        posterior.log_prob(torch.tensor([[math.nan, 0.0]]), Y_OBS)
    with pytest.raises(ValueError, match="rows"):
        posterior.log_prob(torch.zeros(4, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="sizes"):
        posterior.sample((5,), Y_OBS, sizes=3)
    with pytest.raises(ValueError, match="out must have shape"):
        posterior.sample_batched((5,), torch.zeros(2, 2), out=torch.empty(5, 3, 2))


def test_save_load_gives_identical_samples(posterior, tmp_path):
    path = posterior.save(tmp_path / "sub" / "lg.sbi")
    loaded = load_posterior(path, device="cpu")
    Y = torch.randn(3, 2)
    torch.testing.assert_close(loaded.sample_batched((20,), Y, seed=1), posterior.sample_batched((20,), Y, seed=1),
                               rtol=0, atol=0)
    x = torch.randn(6, 2)
    torch.testing.assert_close(loaded.log_prob(x, Y_OBS), posterior.log_prob(x, Y_OBS), rtol=0, atol=0)
    assert loaded.param_names == posterior.param_names and loaded.device.type == "cpu"
    assert loaded.metadata["history"] == json.loads(json.dumps(posterior.metadata["history"]))
    assert "cinn" in repr(loaded)


def test_save_never_writes_over_a_file_unless_asked(posterior, tmp_path):
    mine = tmp_path / "mine.sbi"
    mine.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        posterior.save(mine)
    assert mine.read_bytes() == b"a user's file"
    with pytest.raises(IsADirectoryError, match="is a directory"):
        posterior.save(tmp_path)
    posterior.save(mine, overwrite=True)
    assert load_posterior(mine).param_names == posterior.param_names


def test_corrupted_or_foreign_files_raise_value_error(posterior, tmp_path):
    path = posterior.save(tmp_path / "good.sbi")
    raw = path.read_bytes()
    (tmp_path / "truncated.sbi").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.sbi").write_bytes(b"not a posterior at all")
    for name in ("truncated.sbi", "garbage.sbi"):
        with pytest.raises(ValueError, match="not a readable sbi_inn posterior"):
            load_posterior(tmp_path / name)
    blob = torch.load(path, weights_only=True)
    header = json.loads(blob["header"])
    header["format_version"] = FORMAT_VERSION + 1
    torch.save({"header": json.dumps(header), "state_dict": blob["state_dict"]}, tmp_path / "future.sbi")
    with pytest.raises(ValueError, match="format"):
        load_posterior(tmp_path / "future.sbi")
    header["format_version"], header["format"] = FORMAT_VERSION, "something.else"
    torch.save({"header": json.dumps(header), "state_dict": blob["state_dict"]}, tmp_path / "foreign.sbi")
    with pytest.raises(ValueError, match="not an sbi_inn posterior"):
        load_posterior(tmp_path / "foreign.sbi")
    header["format"] = "sbi_inn.posterior"
    state = dict(blob["state_dict"])
    state.pop(next(iter(state)))
    torch.save({"header": json.dumps(header), "state_dict": state}, tmp_path / "missing.sbi")
    with pytest.raises(ValueError, match="weights do not match"):
        load_posterior(tmp_path / "missing.sbi")
    with pytest.raises(FileNotFoundError):
        load_posterior(tmp_path / "absent.sbi")


def test_to_dataframe(posterior):
    df = posterior.to_dataframe(posterior.sample((6,), Y_OBS))
    assert list(df.columns) == ["a", "b"] and len(df) == 6
    dfb = posterior.to_dataframe(posterior.sample_batched((6,), torch.randn(3, 2)))
    assert list(dfb.columns) == ["observation", "a", "b"] and len(dfb) == 18
    assert sorted(dfb["observation"].unique().tolist()) == [0, 1, 2]
    with pytest.raises(ValueError):
        posterior.to_dataframe(torch.zeros(2))


@pytest.mark.parametrize("method", ["meanshift", "gradient"])
def test_map_on_a_unimodal_posterior(posterior, method):
    """The mode of N(0.8 y, 0.2 I). Mean shift locates a Gaussian's mode from n samples only to about
    0.07 (n = 2048) or 0.05 (n = 8192) per coordinate (its spread over exact samples); 8192 samples and 0.2 leave
    3 of those beside the trained model's own error, while a random posterior sample (std 0.45) misses."""
    x_map = posterior.map(Y_OBS, method=method, num_samples=8192)
    torch.testing.assert_close(x_map, POST_MEAN * Y_OBS, atol=0.2, rtol=0)


def test_set_valued_list_input_equals_padded_input(gen):
    torch.manual_seed(0)
    model = ConditionalINN(2, (1,), is_set_valued=True, flow=FlowConfig(num_blocks=2, hidden=8), summary_dim=4,
                           summary_hidden=8)
    post = Posterior(model, param_names=["mu", "s"], obs_shape=(1,), is_set_valued=True)
    sets = [torch.randn(k, 1, generator=gen) for k in (3, 1, 5)]
    padded = torch.zeros(3, 5, 1)
    for i, s in enumerate(sets):
        padded[i, : len(s)] = s
    a = post.sample_batched((4,), sets, seed=0)
    b = post.sample_batched((4,), padded, sizes=torch.tensor([3, 1, 5]), seed=0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(post.sample((4,), sets[0], seed=0), a[:, 0])
    with pytest.raises(ValueError, match="sizes"):
        post.sample_batched((4,), padded, sizes=torch.tensor([3, 0, 5]))
    bad_lists = [
        ([], ValueError, r"empty list of sets \(B = 0\)"),
        ([torch.zeros(3, 1), torch.zeros(2, 2)], ValueError, r"observations\[1\] must be a set of shape \(K, 1\)"),
        ([torch.zeros(3, 1), torch.zeros(0, 1)], ValueError, r"observations\[1\] .*K >= 1 members, got \(0, 1\)"),
        ([torch.zeros(3, 1), [[1.0], [2.0, 3.0]]], ValueError, r"observations\[1\] must be a rectangular array"),
        ([torch.zeros(3, 1), ["a"]], TypeError, r"observations\[1\] must be numbers"),
        ([torch.zeros(3, 1, dtype=torch.complex64)], TypeError, r"observations\[0\] must be real numbers"),
    ]
    for sets_in, error, match in bad_lists:
        with pytest.raises(error, match=match):
            post.sample_batched((4,), sets_in, seed=0)
    with pytest.raises(ValueError, match="sizes come from the list of sets"):
        post.sample_batched((4,), sets, sizes=torch.tensor([3, 1, 5]))


def test_a_device_this_machine_lacks_is_refused_before_any_work():
    from sbi_inn.posterior import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="CUDA devices"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")  # one past the last device, on any machine
    calls = []

    def counting(x):
        calls.append(len(x))
        return x

    with pytest.raises(ValueError, match="CUDA devices"):
        fit_posterior(counting, PRIOR, num_simulations=100, device=f"cuda:{torch.cuda.device_count()}",
                      show_progress=False)
    assert calls == []  # refused before the pilot simulation


def test_silent_wrong_results_are_refused(posterior):
    """Complex observations or parameters, an integer out= buffer, max_rows <= 0, map from one sample and a
    fractional seed each raise naming the argument instead of truncating or returning garbage."""
    y = Y_OBS.to(torch.complex64)
    with pytest.raises(TypeError, match="observations must be real numbers"):
        posterior.sample((5,), y)
    with pytest.raises(TypeError, match="observations must be real numbers"):
        posterior.sample_batched((5,), y[None])
    with pytest.raises(TypeError, match="x must be real numbers"):
        posterior.log_prob(torch.zeros(3, 2, dtype=torch.complex64), Y_OBS)
    with pytest.raises(TypeError, match="out must be a floating-point tensor"):
        posterior.sample_batched((4,), Y_OBS[None], out=torch.zeros(4, 1, 2, dtype=torch.long))
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="max_rows"):
            posterior.sample_batched((4,), Y_OBS[None], max_rows=bad)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        posterior.map(Y_OBS, num_samples=1)
    with pytest.raises(TypeError, match="seed"):
        posterior.sample((5,), Y_OBS, seed=1.5)
    # the valid forms still work: integer observations are taken as real numbers, out of float64 is filled
    out = torch.zeros(4, 1, 2, dtype=torch.float64)
    assert posterior.sample_batched((4,), Y_OBS[None].round().long(), out=out, seed=0) is out
    assert torch.isfinite(out).all() and (out != 0).all()


def test_samples_are_ordinary_tensors(posterior):
    """Sampling runs under inference_mode, but what it returns can be modified in place and differentiated."""
    s = posterior.sample((5,), Y_OBS, seed=0)
    b = posterior.sample_batched((5,), Y_OBS[None], seed=0)
    assert not s.is_inference() and not b.is_inference()
    before = s.clone()
    s.add_(1.0)
    torch.testing.assert_close(s, before + 1.0)
    b.requires_grad_(True)  # refused for an inference tensor
    (b**2).sum().backward()
    torch.testing.assert_close(b.grad, 2 * b.detach())


class _CubingModel(torch.nn.Module):
    """A stand-in model whose samples are c^3 plus noise: an observation of 1e20 overflows to inf."""

    param_dim = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def condition(self, y, sizes=None):
        return y * self.w

    def sample_given(self, c, n, generator=None):
        return c[None] ** 3 + torch.randn(n, c.shape[0], 2, generator=generator)


def test_nonfinite_draws_are_refused_naming_their_observations_across_chunks():
    post = Posterior(_CubingModel(), param_names=["a", "b"], obs_shape=(2,))
    Y = torch.zeros(9, 2)
    Y[6, 1] = Y[8, 0] = 1e20  # in the third and last chunks of 3 observations (max_rows=30 / 10 samples)
    with pytest.raises(FloatingPointError, match=r"observation rows \[6, 8\]"):
        post.sample_batched((10,), Y, max_rows=30, seed=0)
    assert torch.isfinite(post.sample_batched((10,), Y[:6], max_rows=30, seed=0)).all()
