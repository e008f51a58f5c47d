from dataclasses import replace

import pytest
import torch

from sbi_inn.train import TrainConfig, clip_grad_norm, iterate_batches, train, trimmed_mean


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [2.0], [-1.0]]) + 0.1 * torch.randn(1200, 1, generator=gen)
    return (x[:1000], y[:1000]), (x[1000:], y[1000:])


def _model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def _loss(model, batch, step):
    x, y = batch
    noise = 0.01 * torch.randn(y.shape, generator=step.generator)  # the epoch's seeded noise generator
    loss = ((model(x) - y - noise) ** 2).mean()
    return loss, {"mse": loss.item()}


def _scripted_losses(scripted: list[float], interrupt_at: int):
    """``(calls, val_loss, train_loss)``: a validation loss returning the values of ``scripted`` in turn and the
    training loss of :func:`_loss`, which raises ``KeyboardInterrupt`` at its ``interrupt_at``-th call; ``calls``
    counts both (reset ``calls["val"]`` to replay the script)."""
    calls = {"val": 0, "train": 0}

    def val_loss(model, batch, step):
        calls["val"] += 1
        return torch.tensor(scripted[calls["val"] - 1]), {}

    def train_loss(model, batch, step):
        calls["train"] += 1
        if calls["train"] == interrupt_at:
            raise KeyboardInterrupt
        return _loss(model, batch, step)

    return calls, val_loss, train_loss


def _interrupted_then_resumed(cfg: TrainConfig, ckpt, calls: dict, val_loss, train_loss) -> list[dict]:
    """Replay the validation script from its start in a run that ``train_loss`` interrupts, then resume that run from
    its checkpoint ``ckpt`` with the plain loss; the resumed run's history."""
    tr, va = _data()
    calls["val"] = 0
    with pytest.raises(KeyboardInterrupt):
        train(_model(), train_loss, tr, va, cfg, device=CPU, checkpoint_path=ckpt, show_progress=False,
              val_loss_fn=val_loss)
    return train(_model(), _loss, tr, va, cfg, device=CPU, checkpoint_path=ckpt, show_progress=False,
                 val_loss_fn=val_loss)


CFG = TrainConfig(epochs=5, batch_size=64, lr=1e-2, lr_final=1e-3, patience=None)
CPU = torch.device("cpu")


def test_training_reduces_loss_and_records_history():
    tr, va = _data()
    model = _model()
    with torch.no_grad():
        untrained = float(((model(va[0]) - va[1]) ** 2).mean())
    hist = train(model, _loss, tr, va, CFG, device=CPU, show_progress=False)
    assert len(hist) == 5
    assert untrained > 3.0  # y has variance 6: the check below is not met by an untrained model
    assert hist[-1]["val_loss"] < 0.05 * untrained and hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert hist[0]["lr"] == pytest.approx(1e-2) and hist[-1]["lr"] == pytest.approx(1e-3)
    assert {"train_loss", "val_loss", "mse", "skipped_steps", "seconds"} <= set(hist[0])


# "plateau": min_delta 0.5 counts only epoch 0, so the rate halves (and the best weights return) after every epoch
@pytest.mark.parametrize("cfg", [CFG, replace(CFG, ema=0.95),
                                 replace(CFG, ema=0.95, lr_schedule="plateau", lr_patience=1, min_delta=0.5)],
                         ids=["plain", "ema", "plateau"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, cfg):
    tr, va = _data()
    reference = _model()
    train(reference, _loss, tr, va, cfg, device=CPU, show_progress=False)

    calls = {"n": 0}

    def interrupted(model, batch, step):
        calls["n"] += 1
        if calls["n"] == 40:  # inside the third epoch (16 batches per epoch)
            raise KeyboardInterrupt
        return _loss(model, batch, step)

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        train(_model(), interrupted, tr, va, cfg, device=CPU, checkpoint_path=ckpt, show_progress=False)
    assert ckpt.exists()
    resumed = _model()
    hist = train(resumed, _loss, tr, va, cfg, device=CPU, checkpoint_path=ckpt, show_progress=False)
    assert len(hist) == 5
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_non_finite_losses_are_skipped_not_applied():
    tr, va = _data()
    model = _model()
    calls = {"n": 0}

    def sometimes_nan(m, batch, step):
        calls["n"] += 1
        loss, parts = _loss(m, batch, step)
        return (loss * float("nan") if calls["n"] % 3 == 0 else loss), parts

    hist = train(model, sometimes_nan, tr, None, TrainConfig(epochs=2, batch_size=64, patience=None),
                 device=CPU, show_progress=False)
    assert hist[0]["skipped_steps"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_all_non_finite_raises():
    tr, _ = _data()
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(_model(), lambda m, b, s: (m(b[0]).sum() * float("inf"), {}), tr, None,
              TrainConfig(epochs=1, patience=None), device=CPU, show_progress=False)


def test_early_stopping_and_config_validation():
    tr, va = _data()
    hist = train(_model(), _loss, tr, va, TrainConfig(epochs=200, batch_size=256, lr=1e-6, lr_final=1e-6,
                                                       patience=2), device=CPU, show_progress=False)
    assert len(hist) < 200
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(TypeError):
        TrainConfig(epoch=3)


def test_min_delta_ignores_small_improvements_and_resumes(tmp_path):
    """Validation losses falling by 4e-3 per epoch: with ``min_delta=0.01`` only every third epoch counts, so
    patience 2 stops after epoch 2; without it every epoch counts and all ten run. A run interrupted in epoch 2
    resumes from its checkpoint (which holds the last counted loss) to the same stop."""
    tr, va = _data()
    scripted = [1.0 - 4e-3 * e for e in range(10)]
    calls, val_loss, train_loss = _scripted_losses(scripted, interrupt_at=40)  # inside epoch 2 (16 batches each)

    for min_delta, epochs_run in ((0.01, 3), (0.0, 10)):
        calls["val"] = 0
        hist = train(_model(), _loss, tr, va, replace(CFG, epochs=10, patience=2, min_delta=min_delta), device=CPU,
                     show_progress=False, val_loss_fn=val_loss)
        assert [h["val_loss"] for h in hist] == pytest.approx(scripted[:epochs_run])
    with pytest.raises(ValueError, match="min_delta"):
        TrainConfig(min_delta=-1.0)

    cfg = replace(CFG, epochs=10, patience=2, min_delta=0.01)
    hist = _interrupted_then_resumed(cfg, tmp_path / "ckpt.pt", calls, val_loss, train_loss)
    assert [h["val_loss"] for h in hist] == pytest.approx(scripted[:3])


def test_auto_batch_size_gives_small_budgets_enough_steps():
    from sbi_inn.train import batch_size_for

    auto = TrainConfig(batch_size=None)
    assert batch_size_for(auto, 900) == 112  # 1000 simulations, 10 % validation: 9 steps per epoch, not 4
    assert batch_size_for(auto, 300) == 64
    assert batch_size_for(auto, 1200) == 150
    assert batch_size_for(auto, 9000) == 256
    assert batch_size_for(TrainConfig(batch_size=32), 9000) == 32  # an explicit size is kept
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_fresh_data_every_epoch_trains_and_resumes_identically(tmp_path):
    """train_data as a function of the epoch (simulating on the fly): each epoch sees its own data, a resumed run
    sees the same data as an uninterrupted one."""
    seen = []

    def fresh(epoch):
        gen = torch.Generator().manual_seed(100 + epoch)
        x = torch.randn(1000, 3, generator=gen)
        seen.append(float(x[0, 0]))
        return x, x @ torch.tensor([[1.0], [2.0], [-1.0]])

    _, va = _data()
    reference = _model()
    hist = train(reference, _loss, fresh, va, CFG, device=CPU, show_progress=False)
    assert hist[-1]["val_loss"] < 0.2 * hist[0]["val_loss"]
    assert len(set(seen)) == 5  # epochs 0..4
    assert len(seen) == 5  # each drawn once: the data that sized the batches is epoch 0's

    calls = {"n": 0}

    def interrupted(model, batch, step):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return _loss(model, batch, step)

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        train(_model(), interrupted, fresh, va, CFG, device=CPU, checkpoint_path=ckpt, show_progress=False)
    resumed = _model()
    train(resumed, _loss, fresh, va, CFG, device=CPU, checkpoint_path=ckpt, show_progress=False)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    def grads(seed):
        gen = torch.Generator().manual_seed(seed)
        ps = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(3, 4), (4,), (7,)]]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        return ps

    ours, ref = grads(0), grads(0)
    ours.append(torch.nn.Parameter(torch.zeros(2)))  # a parameter without a gradient is ignored
    norm = clip_grad_norm(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert norm == pytest.approx(float(ref_norm), rel=1e-6)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)
    if max_norm < 1:  # clipped to the bound
        total = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in ours[:3]]))
        assert float(total) == pytest.approx(max_norm, rel=1e-4)


def test_clip_grad_norm_reports_non_finite_without_scaling():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, float("nan"), 2.0])
    assert clip_grad_norm([p], 1.0) != clip_grad_norm([p], 1.0)  # NaN
    assert p.grad[0] == 1.0 and p.grad[2] == 2.0


def test_batches_spread_the_remainder_and_cover_every_row_once():
    x = torch.arange(900.0)[:, None]
    batches = list(iterate_batches((x, 2 * x), 112, torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [113] * 4 + [112] * 4  # no short last batch of 4 rows
    rows = torch.cat([b[0] for b in batches])[:, 0]
    assert torch.equal(rows.sort().values, x[:, 0])  # a permutation: every row exactly once
    assert all(torch.equal(b[1], 2 * b[0]) for b in batches)  # columns stay aligned
    assert [len(b[0]) for b in iterate_batches((x[:50],), 112, torch.Generator(), shuffle=False)] == [50]


def test_trimmed_mean_leaves_out_the_largest_values():
    v = torch.tensor([3.0, 1.0, 1e9, 2.0])
    assert trimmed_mean(v, 0.0) == pytest.approx((6.0 + 1e9) / 4)
    assert trimmed_mean(v, 0.01) == pytest.approx(2.0)  # ceil(0.04) = 1 row left out: the largest
    assert trimmed_mean(v, 0.3) == pytest.approx(1.5)  # ceil(1.2) = 2 rows
    assert trimmed_mean(torch.tensor([float("nan"), 1.0, 3.0]), 0.1) == pytest.approx(2.0)  # NaN counts as largest
    assert trimmed_mean(torch.tensor([float("inf"), float("nan"), 1.0]), 0.1) == float("inf")  # one left after cut
    assert trimmed_mean(torch.tensor([5.0]), 0.4) == pytest.approx(5.0)  # never all rows
    with pytest.raises(ValueError, match="val_trim"):
        TrainConfig(val_trim=0.5)


def test_per_row_validation_loss_is_trimmed_so_one_outlier_cannot_stop_training():
    """A per-row validation loss whose one row grows 100x every epoch while the others fall: with val_trim the
    validation loss follows the other rows and training runs all epochs; without it, patience 2 stops early. The
    recorded value is the mean of the kept rows, over all validation batches (1024 rows each)."""
    tr, _ = _data()
    gen = torch.Generator().manual_seed(3)
    va = (torch.randn(2500, 3, generator=gen), torch.randn(2500, 1, generator=gen))
    epoch = {"n": -1, "rows": 0, "batches": 0}

    def val_rows(model, batch, step):
        first = epoch["rows"] == 0  # the epoch's first validation batch holds the outlier row
        epoch["n"] += first
        epoch["batches"] += 1
        epoch["rows"] = (epoch["rows"] + batch[0].shape[0]) % 2500
        losses = torch.full((batch[0].shape[0],), 1.0 - 0.1 * epoch["n"])
        if first:
            losses[0] = 100.0 ** epoch["n"]
        return losses, {}

    cfg = replace(CFG, epochs=6, patience=2)
    hist = train(_model(), _loss, tr, va, replace(cfg, val_trim=1e-4), device=CPU, show_progress=False,
                 val_loss_fn=val_rows)
    assert [h["val_loss"] for h in hist] == pytest.approx([1.0 - 0.1 * e for e in range(6)])
    assert epoch["batches"] == 12  # two validation batches per epoch
    epoch.update(n=-1, rows=0)
    hist = train(_model(), _loss, tr, va, cfg, device=CPU, show_progress=False, val_loss_fn=val_rows)
    assert len(hist) == 4  # the untrimmed mean grows after epoch 1: patience 2 stops after epoch 3
    assert hist[2]["val_loss"] == pytest.approx((2499 * 0.8 + 1e4) / 2500)
    with pytest.raises(ValueError, match="val_trim"):  # a scalar validation loss cannot be trimmed
        train(_model(), _loss, tr, va, replace(cfg, val_trim=0.01), device=CPU, show_progress=False)


def test_max_time_plans_the_epochs_from_the_first_so_the_lr_decay_completes(monkeypatch):
    """With a budget the number of epochs is floor(max_time / first epoch's seconds), and the learning rate still
    reaches lr_final at the last planned epoch; the plan is recorded in the history."""
    import sbi_inn.train as train_module

    clock = {"t": 0.0}

    def fake_perf_counter():  # every call advances the clock by 1 s: an epoch takes 1 s (two calls)
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(train_module.time, "perf_counter", fake_perf_counter)
    tr, va = _data()
    cfg = replace(CFG, epochs=50, max_time=7.5)
    hist = train(_model(), _loss, tr, va, cfg, device=CPU, show_progress=False)
    assert [h["epoch"] for h in hist] == list(range(7)) and hist[-1]["planned_epochs"] == 7
    assert hist[0]["lr"] == pytest.approx(1e-2) and hist[-1]["lr"] == pytest.approx(1e-3)
    no_budget = train(_model(), _loss, tr, va, replace(CFG, epochs=3), device=CPU, show_progress=False)
    assert len(no_budget) == 3 and no_budget[-1]["planned_epochs"] == 3
    with pytest.raises(ValueError, match="max_time"):
        TrainConfig(max_time=0)


def test_a_dataset_gives_the_same_batches_as_tensors():
    """Tensors and a Dataset over the same rows are cut into the same batches in the same order, so streamed and
    in-memory training are the same computation."""
    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20.0)[:, None]
    ds = torch.utils.data.TensorDataset(x, y)
    a = list(iterate_batches((x, y), 6, torch.Generator().manual_seed(1)))
    b = list(iterate_batches(ds, 6, torch.Generator().manual_seed(1)))
    assert len(a) == len(b) == 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    before = torch.get_rng_state()
    list(iterate_batches(ds, 6, torch.Generator().manual_seed(1)))
    assert torch.equal(torch.get_rng_state(), before)  # the loader draws nothing from the global RNG


@pytest.mark.parametrize("field, value", [("epochs", 2.5), ("batch_size", 64.0), ("patience", True), ("seed", "0")])
def test_integer_settings_refuse_other_types_at_once(field, value):
    with pytest.raises(TypeError, match=f"TrainConfig: {field} must be an integer"):
        TrainConfig(**{field: value})


def test_ema_returns_the_moving_average_of_the_trajectory():
    """The weights returned with ``ema=d`` are ``w_ema <- d w_ema + (1 - d) w`` over the steps of the same run (the
    average does not change the trajectory), starting from the initial weights."""
    tr, _ = _data()
    cfg = replace(CFG, epochs=2)
    trajectory = []

    def recording(model, batch, step):  # the weights before each step = after the previous one
        trajectory.append([p.detach().clone() for p in model.parameters()])
        return _loss(model, batch, step)

    plain = _model()
    train(plain, recording, tr, None, cfg, device=CPU, show_progress=False)
    trajectory.append([p.detach().clone() for p in plain.parameters()])
    d = 0.9
    expected = trajectory[0]
    for weights in trajectory[1:]:
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights)]
    averaged = _model()
    train(averaged, _loss, tr, None, replace(cfg, ema=d), device=CPU, show_progress=False)
    for got, want in zip(averaged.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(next(averaged.parameters()), next(plain.parameters()))


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
        TrainConfig(ema=1.0)


def test_plateau_schedule_halves_the_rate_when_validation_stalls_and_stops_at_the_floor(tmp_path):
    """Scripted validation losses that improve for three epochs, then stay flat: with ``lr_patience=2`` the rate
    halves after epochs 4, 6 and 8; the halving due after epoch 10 would go below ``lr_final``, so training stops
    there (11 epochs of the cap's 50). A run interrupted in epoch 7 resumes to the same rates and stop."""
    tr, va = _data()
    scripted = [1.0, 0.9, 0.8] + [0.8] * 60
    calls, val_loss, train_loss = _scripted_losses(scripted, interrupt_at=16 * 7 + 3)  # inside epoch 7

    cfg = replace(CFG, epochs=50, lr_schedule="plateau", lr_patience=2, lr_factor=0.5)
    expected = [1e-2] * 5 + [5e-3] * 2 + [2.5e-3] * 2 + [1.25e-3] * 2
    starts = {}  # the weights at the start of each epoch

    def recording_loss(model, batch, step):
        if step.batch == 0:
            starts[step.epoch] = torch.cat([p.detach().flatten() for p in model.parameters()])
        return _loss(model, batch, step)

    hist = train(_model(), recording_loss, tr, va, cfg, device=CPU, show_progress=False, val_loss_fn=val_loss)
    assert [h["lr"] for h in hist] == pytest.approx(expected)
    # each reduction (after epochs 4, 6, 8) goes on from the best epoch's weights (epoch 2's, the start of epoch 3)
    for epoch in (5, 7, 9):
        assert torch.equal(starts[epoch], starts[3])
    assert not torch.equal(starts[4], starts[3]) and not torch.equal(starts[6], starts[3])

    hist = _interrupted_then_resumed(cfg, tmp_path / "ckpt.pt", calls, val_loss, train_loss)
    assert [h["lr"] for h in hist] == pytest.approx(expected)

    # an improvement after a reduction restarts the count: the next halving waits lr_patience epochs from it
    scripted[:] = [1.0, 0.9, 0.9, 0.9, 0.8] + [0.8] * 60
    calls["val"] = 0
    hist = train(_model(), _loss, tr, va, replace(cfg, lr_final=4e-3), device=CPU, show_progress=False,
                 val_loss_fn=val_loss)
    assert [h["lr"] for h in hist] == pytest.approx([1e-2] * 4 + [5e-3] * 3)  # halved after 3, then after 6: floor
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_factor"):
        TrainConfig(lr_schedule="plateau", lr_factor=1.0)
