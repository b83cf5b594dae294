"""Training recipes: optimisers, learning-rate schedules, label smoothing, clipping and
image augmentation on digits; their validation, determinism, and the API's answers."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tests.service_helpers import A, TINY_MODEL, make_app, run_worker_inline
from workers.engine import nets, sources
from workers.engine.sisa import Strategy
from workers.engine.training import (
    DeviceData,
    TrainConfig,
    augment_batch,
    make_optimizer,
    make_scheduler,
    predict_proba,
    train_epochs,
)

OLD_RECIPE = {"epochs": 3, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "seed": 0, "slice_epochs": "each"}


@pytest.fixture(scope="module")
def digits():
    raw = sources.load_digits(seed=0)
    data = DeviceData(np.arange(len(raw.y)), raw.x, raw.y, raw.x_scale, "cpu")
    x_test = torch.as_tensor(raw.x_test.astype(np.float32) * np.float32(raw.x_scale))
    return raw, data, x_test, raw.y_test


def _train(digits, cfg: TrainConfig, architecture: str = "mlp", rows=None, calls: int = 1):
    raw, data, _, _ = digits
    model = nets.build(architecture, raw.input_shape, raw.num_classes, seed=cfg.seed)
    optimizer = make_optimizer(model, cfg)
    rows = torch.arange(len(raw.y)) if rows is None else rows
    for call in range(calls):  # like a SISA constituent's slice steps
        train_epochs(model, optimizer, data, rows, cfg, epochs=cfg.epochs, seed=cfg.seed + call)
    return model, optimizer


def _accuracy(digits, model) -> float:
    _, _, x_test, y_test = digits
    return float((predict_proba(model, x_test).argmax(1).numpy() == y_test).mean())


def _state(model) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


# -- defaults: an old recipe trains exactly as before ---------------------------------

def _old_train_epochs(model, optimizer, data, rows, cfg, *, epochs, seed):
    """The loop before recipes existed (its per-step loss.item() aside), for comparison;
    images into convolutions in channels_last, as Lethe's loop now runs them on every
    device (a memory layout, not a recipe setting)."""
    images = data.x.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if images:
        model.to(memory_format=torch.channels_last)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    n = len(rows)
    for _ in range(epochs):
        order = rows[torch.randperm(n, generator=gen)].to(data.device)
        for start in range(0, n, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            x = data.x[batch].contiguous(memory_format=torch.channels_last) if images else data.x[batch]
            loss = nn.functional.cross_entropy(model(x), data.y[batch])
            loss.backward()
            optimizer.step()


def test_an_old_stored_recipe_loads_with_every_new_setting_at_its_default():
    cfg = TrainConfig(**OLD_RECIPE)
    assert cfg == TrainConfig(epochs=3, batch_size=64)
    d = cfg.to_dict()
    assert {k: d[k] for k in OLD_RECIPE} == OLD_RECIPE
    assert (d["optimizer"], d["schedule"], d["label_smoothing"], d["max_grad_norm"]) == ("adam", "none", 0.0, None)
    assert not d["random_crop_padding"] and not d["random_horizontal_flip"] and not d["mixed_precision"]
    assert TrainConfig(**d) == cfg  # a full recipe round-trips


@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_the_default_recipe_trains_bit_for_bit_as_the_old_loop(digits, architecture):
    raw, data, _, _ = digits
    cfg = TrainConfig(**{**OLD_RECIPE, "epochs": 2})
    rows = torch.arange(0, len(raw.y), 2)
    new, new_opt = _train(digits, cfg, architecture, rows=rows, calls=2)
    old = nets.build(architecture, raw.input_shape, raw.num_classes, seed=cfg.seed)
    old_opt = torch.optim.Adam(old.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for call in range(2):
        _old_train_epochs(old, old_opt, data, rows, cfg, epochs=cfg.epochs, seed=cfg.seed + call)
    assert all(torch.equal(a, b) for a, b in zip(_state(new), _state(old)))
    # The optimiser is left as it was (a schedule would add keys to the checkpoint).
    assert new_opt.state_dict()["param_groups"] == old_opt.state_dict()["param_groups"]


# -- each optimiser and schedule learns ------------------------------------------------

LEARNING = {
    "adam": dict(),
    "adam_cosine_warmup": dict(schedule="cosine", warmup_epochs=1),
    "adamw_one_cycle": dict(optimizer="adamw", weight_decay=0.05, schedule="one_cycle", lr=3e-3),
    "adamw_step": dict(optimizer="adamw", weight_decay=0.01, schedule="step", step_size=3, gamma=0.5),
    "sgd_nesterov_cosine": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, schedule="cosine",
                                warmup_steps=10),
    "sgd_momentum_step": dict(optimizer="sgd", lr=0.05, momentum=0.9, schedule="step", step_size=4, gamma=0.3),
    "sgd_plain_one_cycle": dict(optimizer="sgd", lr=0.2, schedule="one_cycle", warmup_epochs=2),
    "smoothing_and_clipping": dict(label_smoothing=0.1, max_grad_norm=1.0, weight_decay=1e-4),
}


@pytest.mark.parametrize("name", list(LEARNING))
def test_each_optimiser_and_schedule_learns(digits, name):
    cfg = TrainConfig(epochs=8, batch_size=64, seed=0, **{"lr": 2e-3, **LEARNING[name]})
    model, _ = _train(digits, cfg)
    assert _accuracy(digits, model) > 0.8, name  # chance is 0.1


def test_an_augmented_cnn_learns(digits):
    cfg = TrainConfig(epochs=8, batch_size=64, lr=3e-3, random_crop_padding=1, random_horizontal_flip=True)
    model, _ = _train(digits, cfg, "cnn")
    assert _accuracy(digits, model) > 0.6  # chance is 0.1; digits are not mirror-symmetric


# -- the schedules' learning rates --------------------------------------------------------

def _lrs(cfg: TrainConfig, steps_per_epoch: int, epochs: int) -> list[float]:
    """The learning rate of each optimiser step, as train_epochs steps the scheduler."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    scheduler = make_scheduler(opt, cfg, steps_per_epoch=steps_per_epoch, epochs=epochs)
    total, out = steps_per_epoch * epochs, []
    for step in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler is not None and step < total - 1:
            scheduler.step()
    return out


def test_no_schedule_keeps_the_rate_and_leaves_the_optimiser_alone():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.5)
    assert make_scheduler(opt, TrainConfig(lr=0.5), steps_per_epoch=5, epochs=3) is None
    assert "initial_lr" not in opt.param_groups[0]
    assert _lrs(TrainConfig(lr=0.5), 5, 3) == [0.5] * 15


def test_cosine_anneals_to_zero_after_a_linear_warm_up():
    lr, spe, epochs, warm = 0.1, 5, 4, 5
    got = _lrs(TrainConfig(lr=lr, epochs=epochs, schedule="cosine", warmup_epochs=1), spe, epochs)
    total = spe * epochs
    want = [lr * (i + 1) / (warm + 1) for i in range(warm)]
    want += [lr * (1 + math.cos(math.pi * j / (total - warm))) / 2 for j in range(total - warm)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert got[-1] < 0.02 * lr  # one step short of zero


def test_step_decays_by_gamma_every_step_size_epochs():
    got = _lrs(TrainConfig(lr=1.0, epochs=6, schedule="step", step_size=2, gamma=0.5), 3, 6)
    assert got == pytest.approx([1.0] * 6 + [0.5] * 6 + [0.25] * 6)
    # With a warm-up, the decays count from its end.
    got = _lrs(TrainConfig(lr=1.0, epochs=3, schedule="step", step_size=1, gamma=0.5, warmup_steps=2), 3, 3)
    assert got == pytest.approx([1 / 3, 2 / 3] + [1.0] * 3 + [0.5] * 3 + [0.25])


def test_one_cycle_rises_to_lr_over_the_warm_up_then_falls():
    lr, total = 0.2, 20
    got = _lrs(TrainConfig(lr=lr, schedule="one_cycle", warmup_steps=5), 10, 2)
    assert len(got) == total
    assert got[0] == pytest.approx(lr / 25)  # torch's div_factor
    assert max(got) == pytest.approx(lr) and got.index(max(got)) == 4
    assert all(a < b for a, b in zip(got[:5], got[1:5]))
    assert all(a > b for a, b in zip(got[4:], got[5:]))
    assert got[-1] == pytest.approx(lr / 25 / 1e4)  # final_div_factor
    default = _lrs(TrainConfig(lr=lr, schedule="one_cycle"), 10, 2)
    assert default.index(max(default)) == 5  # 30% of 20 steps, then the peak
    for total in (1, 2, 3):  # tiny shards do not break it
        assert len(_lrs(TrainConfig(lr=lr, schedule="one_cycle", warmup_steps=1), total, 1)) == total


def test_warm_up_alone_then_a_constant_rate():
    assert _lrs(TrainConfig(lr=1.0, warmup_steps=3), 3, 2) == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])


def test_training_uses_the_schedules_rates_and_each_slice_step_restarts_it(digits):
    raw, data, _, _ = digits
    cfg = TrainConfig(epochs=2, batch_size=100, lr=0.05, optimizer="sgd", momentum=0.9, schedule="cosine",
                      warmup_steps=3)
    rows = torch.arange(450)
    model = nets.build("mlp", raw.input_shape, raw.num_classes, seed=0)
    optimizer = make_optimizer(model, cfg)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    for call in range(2):
        train_epochs(model, optimizer, data, rows, cfg, epochs=2, seed=call)
    expected = _lrs(cfg, steps_per_epoch=5, epochs=2)
    assert seen == pytest.approx(expected * 2)


# -- augmentation -----------------------------------------------------------------------

def test_augmentation_is_per_sample_and_matches_torchvision():
    from torchvision.transforms.v2 import functional as tvf

    x = torch.arange(3 * 2 * 5 * 6, dtype=torch.float32).reshape(3, 2, 5, 6) + 1
    pad = 2
    shifts = torch.tensor([[0, 4], [2, 2], [3, 1]])
    flips = torch.tensor([True, False, True])
    got = augment_batch(x, padding=pad, shifts=shifts, flips=flips)
    padded = tvf.pad(x, [pad])
    for i in range(3):
        want = tvf.crop(padded[i], int(shifts[i, 0]), int(shifts[i, 1]), 5, 6)
        want = tvf.horizontal_flip(want) if flips[i] else want
        assert torch.equal(got[i], want), i
    assert torch.equal(augment_batch(x, padding=pad, shifts=torch.full((3, 2), pad), flips=None), x)  # centred
    assert torch.equal(augment_batch(x, padding=0, shifts=None, flips=flips)[0], x[0].flip(-1))
    assert torch.equal(augment_batch(x, padding=0, shifts=None, flips=flips)[1], x[1])


def test_augmentation_changes_training_and_is_off_by_default(digits):
    base = TrainConfig(epochs=1, batch_size=64, lr=2e-3)
    plain, _ = _train(digits, base, "cnn")
    flipped, _ = _train(digits, TrainConfig(**{**base.to_dict(), "random_horizontal_flip": True}), "cnn")
    cropped, _ = _train(digits, TrainConfig(**{**base.to_dict(), "random_crop_padding": 2}), "cnn")
    assert not torch.equal(_state(plain)[0], _state(flipped)[0])
    assert not torch.equal(_state(plain)[0], _state(cropped)[0])
    assert not torch.equal(_state(flipped)[0], _state(cropped)[0])


@pytest.mark.parametrize("augment", [{"random_horizontal_flip": True}, {"random_crop_padding": 2}])
def test_augmentation_of_non_image_inputs_is_refused(digits, augment):
    raw, _, _, _ = digits
    cfg = TrainConfig(epochs=1, **augment)
    with pytest.raises(ValueError, match="augment images"):
        cfg.check_input_shape([64])
    cfg.check_input_shape([1, 8, 8])
    flat = DeviceData(np.arange(len(raw.y)), raw.x.reshape(len(raw.y), -1), raw.y, raw.x_scale, "cpu")
    model = nets.build("mlp", [64], raw.num_classes, seed=0)
    with pytest.raises(ValueError, match="augment images"):
        train_epochs(model, make_optimizer(model, cfg), flat, torch.arange(100), cfg, epochs=1, seed=0)
    TrainConfig(epochs=1).check_input_shape([64])  # no augmentation: any shape


# -- determinism ----------------------------------------------------------------------------

FULL = dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="cosine",
            warmup_steps=4, label_smoothing=0.1, max_grad_norm=2.0, random_crop_padding=1,
            random_horizontal_flip=True)


def test_the_same_seed_gives_the_same_weights(digits):
    cfg = TrainConfig(epochs=2, batch_size=64, **FULL)
    rows = torch.arange(0, 1400, 2)
    a, _ = _train(digits, cfg, "cnn", rows=rows, calls=2)
    b, _ = _train(digits, cfg, "cnn", rows=rows, calls=2)
    assert all(torch.equal(x, y) for x, y in zip(_state(a), _state(b)))
    c, _ = _train(digits, TrainConfig(**{**cfg.to_dict(), "seed": 1}), "cnn", rows=rows, calls=2)
    assert not all(torch.equal(x, y) for x, y in zip(_state(a), _state(c)))


@pytest.mark.parametrize("recipe", [FULL, dict(optimizer="adamw", lr=3e-3, weight_decay=0.01,
                                               schedule="one_cycle", warmup_epochs=1)])
def test_sisa_unlearning_with_a_full_recipe_equals_a_full_retrain_bit_for_bit(digits_engine, recipe):
    """Retraining a shard from a checkpoint (optimiser state and schedule included) gives
    what training it from scratch gives; the version record carries the whole recipe."""
    cfg = TrainConfig(epochs=2, batch_size=64, seed=3, **recipe)
    v1 = digits_engine.train("m", dataset="digits", architecture="cnn", strategy=Strategy("sisa", 2, 3), config=cfg)
    assert v1["recipe"] == cfg.to_dict()
    owner_of = digits_engine.dataset("digits").owner_map()
    last_slices = [slices[-1] for slices in digits_engine.slice_ids(v1)]
    owners = [owner_of[int(last_slices[0][0])], owner_of[int(last_slices[1][0])]]  # resumes from checkpoints
    fast = digits_engine.unlearn("m", owners)
    assert [c["retrained_from_slice"] for c in fast["constituents"]] == [2, 2]
    full = digits_engine.retrain_full("m")
    assert [c["weights"] for c in fast["constituents"]] == [c["weights"] for c in full["constituents"]]
    assert fast["recipe"] == full["recipe"] == cfg.to_dict()


# -- validation --------------------------------------------------------------------------------

BAD = [
    dict(optimizer="rmsprop"),
    dict(optimizer="adam", momentum=0.9),
    dict(optimizer="adamw", nesterov=True),
    dict(optimizer="sgd", nesterov=True),  # nesterov needs momentum
    dict(optimizer="sgd", momentum=1.0),
    dict(schedule="linear"),
    dict(schedule="step"),  # no step_size
    dict(schedule="step", step_size=0),
    dict(schedule="step", step_size=2, gamma=0.0),
    dict(schedule="cosine", step_size=2),
    dict(schedule="none", gamma=0.5),
    dict(warmup_epochs=1, warmup_steps=10),
    dict(warmup_epochs=6, epochs=5),
    dict(warmup_steps=-1),
    dict(label_smoothing=1.0),
    dict(label_smoothing=-0.1),
    dict(max_grad_norm=0.0),
    dict(random_crop_padding=-1),
    dict(lr=0.0),
]


@pytest.mark.parametrize("bad", BAD, ids=[str(b) for b in BAD])
def test_invalid_recipes_are_refused(bad):
    from pydantic import ValidationError

    from app.models.schemas import TrainingSettings

    with pytest.raises(ValueError):
        TrainConfig(**bad)
    with pytest.raises(ValidationError):
        TrainingSettings(**bad)


# -- the API -------------------------------------------------------------------------------------

@pytest.fixture
def client(tmp_path):
    warnings.filterwarnings("ignore", message=".*httpx.*")
    from fastapi.testclient import TestClient

    app = make_app(tmp_path / "lethe")
    with TestClient(app) as c:
        c.app_ = app
        assert c.post("/v1/datasets", json={"name": "digits", "source": "digits"}, headers=A).status_code == 201
        yield c


def test_a_bad_recipe_is_422_and_a_good_one_is_stored_shown_and_recorded(client):
    r = client.post("/v1/models", json={**TINY_MODEL, "training": {"optimizer": "adam", "momentum": 0.9}},
                    headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
    error = r.json()["errors"][0]
    assert error["type"] == "invalid_recipe" and error["loc"] == ["body", "training"]
    assert "momentum" in r.json()["detail"]
    r = client.post("/v1/models", json={**TINY_MODEL, "training": {"schedule": "exponential"}}, headers=A)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "training", "schedule"]

    training = {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                "schedule": "step", "step_size": 1, "gamma": 0.5, "warmup_steps": 3, "label_smoothing": 0.05,
                "max_grad_norm": 5.0, "random_crop_padding": 1}
    r = client.post("/v1/models", json={**TINY_MODEL, "architecture": "cnn", "training": training}, headers=A)
    assert r.status_code == 202, r.text
    run_worker_inline(client.app_)
    shown = client.get("/v1/models/m", headers=A).json()
    assert shown["status"] == "ready", shown
    assert shown["training"] == {**TrainConfig().to_dict(), **training, "seed": 0}
    assert client.get("/v1/models/m/versions/1", headers=A).json()["recipe"] == shown["training"]


def test_augmenting_a_dataset_of_vectors_is_422(client):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.random((40, 4)).astype(np.float32), y=rng.integers(0, 2, 40),
             owner_id=np.array([f"u{i % 8}" for i in range(40)]))
    r = client.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}, data={"name": "flat"}, headers=A)
    assert r.status_code == 201, r.text
    body = {**TINY_MODEL, "dataset": "flat", "training": {"random_horizontal_flip": True}}
    r = client.post("/v1/models", json=body, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "invalid_model", r.text
    assert r.json()["errors"][0]["type"] == "invalid_recipe" and "augment images" in r.json()["detail"]
    assert client.get("/v1/models/m", headers=A).status_code == 404
    body["training"] = {"label_smoothing": 0.1}
    assert client.post("/v1/models", json=body, headers=A).status_code == 202
