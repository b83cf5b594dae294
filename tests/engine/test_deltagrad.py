"""DeltaGrad: replaying a gradient-descent training without some rows lands next to
retraining by the same steps, for a fraction of the full gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.engine import certified, deltagrad, nets, sources


@pytest.fixture(scope="module")
def digits():
    raw = sources.load_digits(seed=0)
    phi = nets.certified_features(torch.as_tensor(raw.x.astype(np.float64)))
    return phi, certified.signs(torch.as_tensor(raw.y.astype(np.int64)), raw.num_classes)


def _gone(n: int, r: int, seed: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:r]] = True
    return mask


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("r, seed", [(1, 0), (20, 1), (150, 2)])
def test_the_replay_lands_next_to_retraining_with_a_fraction_of_the_full_gradients(digits, r, seed):
    phi, ypm = digits
    schedule = deltagrad.Schedule(iterations=200)
    trained, trajectory = deltagrad.train(phi, ypm, schedule)
    gone = _gone(len(phi), r, seed)
    exact = deltagrad.retrain(phi[~gone], ypm[~gone], schedule)
    replay = deltagrad.remove(trajectory, phi[~gone], ypm[~gone], phi[gone], ypm[gone], schedule)
    assert _rel(replay.weights, exact) < 2e-3
    assert _rel(replay.weights, exact) < 0.1 * _rel(trained, exact)  # it did move off the original
    assert replay.exact_steps == schedule.j0 + math.ceil((schedule.iterations - schedule.j0) / schedule.t0)
    assert replay.exact_steps + replay.approximate_steps == schedule.iterations


def test_a_replay_with_every_step_exact_is_retraining(digits):
    phi, ypm = digits
    schedule = deltagrad.Schedule(iterations=60, t0=1)
    _, trajectory = deltagrad.train(phi, ypm, schedule)
    gone = _gone(len(phi), 40, 3)
    replay = deltagrad.remove(trajectory, phi[~gone], ypm[~gone], phi[gone], ypm[gone], schedule)
    assert replay.approximate_steps == 0
    assert _rel(replay.weights, deltagrad.retrain(phi[~gone], ypm[~gone], schedule)) < 1e-12


def test_bad_removals_and_schedules_are_refused(digits):
    phi, ypm = digits
    schedule = deltagrad.Schedule(iterations=5)
    _, trajectory = deltagrad.train(phi, ypm, schedule)
    with pytest.raises(ValueError, match="cannot remove 0"):
        deltagrad.remove(trajectory, phi, ypm, phi[:0], ypm[:0], schedule)
    with pytest.raises(ValueError, match="rows the trajectory was trained on"):
        deltagrad.remove(trajectory, phi[2:], ypm[2:], phi[:1], ypm[:1], schedule)
    with pytest.raises(ValueError, match="invalid DeltaGrad schedule"):
        deltagrad.Schedule(t0=0)


def test_removals_in_a_row_follow_retraining(digits):
    """The replayed path is the next removal's trajectory: two removals in a row land
    next to retraining without both sets of rows."""
    phi, ypm = digits
    schedule = deltagrad.Schedule(iterations=200)
    _, trajectory = deltagrad.train(phi, ypm, schedule)
    first, second = _gone(len(phi), 30, 4), _gone(len(phi), 60, 5)
    second &= ~first
    one = deltagrad.remove(trajectory, phi[~first], ypm[~first], phi[first], ypm[first], schedule)
    keep = ~(first | second)
    gone = second[~first]
    two = deltagrad.remove(one.trajectory, phi[keep], ypm[keep], phi[~first][gone], ypm[~first][gone], schedule)
    assert two.trajectory.n == int(keep.sum())
    assert _rel(two.weights, deltagrad.retrain(phi[keep], ypm[keep], schedule)) < 4e-3


# -- the linear kind's gd trainer and the deltagrad method, through the engine ----------

def _train_gd(engine, name: str = "gd", iterations: int = 120):
    from workers.engine.sisa import Strategy
    from workers.engine.training import TrainConfig

    return engine.train(name, dataset="digits", architecture="linear", config=TrainConfig(seed=0),
                        strategy=Strategy("linear", trainer="gd", iterations=iterations))


def _weights(engine, name: str, version: dict) -> torch.Tensor:
    from workers.engine import checkpoints

    blob = engine.store.get_blob(version["constituents"][0]["weights"])
    return checkpoints.loads(blob).model_state["weight"].double()


def test_a_gd_linear_model_forgets_owners_by_replay_next_to_an_exact_retrain(digits_engine):
    v1 = _train_gd(digits_engine)
    assert v1["strategy"]["trainer"] == "gd" and v1["metrics"]["test_accuracy"] > 0.7
    assert v1["metrics"]["deltagrad"]["retrained"] is False and "certified" not in v1["metrics"]
    owners = [o for o, _ in digits_engine.dataset("digits").owners(limit=3)]
    v2 = digits_engine.unlearn("gd", owners[:1], mode="approximate", method="deltagrad")
    report = v2["metrics"]["deltagrad"]
    assert report["retrained"] is False and report["exact_steps"] + report["approximate_steps"] == 120
    assert report["approximate_steps"] > report["exact_steps"]
    assert v2["exact"] is False and v2["method"]["name"] == "deltagrad" and v2["metrics"]["ua"] is not None
    v3 = digits_engine.unlearn("gd", owners[1:], mode="approximate", method="deltagrad")  # from v2's replayed path
    reference = digits_engine.unlearn("gd", [], mode="full")  # the same steps on the rows held now
    replayed, exact, original = (_weights(digits_engine, "gd", v) for v in (v3, reference, v1))
    assert (replayed - exact).norm() < 1e-2 * exact.norm()
    assert (replayed - exact).norm() < 0.1 * (original - exact).norm()


def test_deltagrad_needs_a_gd_head_and_certified_a_solver_one(digits_engine):
    from workers.engine.errors import MethodNotSupported
    from workers.engine.sisa import Strategy
    from workers.engine.training import TrainConfig

    _train_gd(digits_engine, iterations=20)
    digits_engine.train("solver", dataset="digits", architecture="linear", strategy=Strategy("linear"),
                        config=TrainConfig(seed=0))
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    with pytest.raises(MethodNotSupported, match="trained with gd"):
        digits_engine.unlearn("solver", [owner], mode="approximate", method="deltagrad")
    with pytest.raises(MethodNotSupported, match="trained with solver"):
        digits_engine.unlearn("gd", [owner], mode="approximate", method="certified")


def test_deltagrad_after_another_method_retrains_by_gradient_descent(digits_engine):
    _train_gd(digits_engine, iterations=30)
    owners = [o for o, _ in digits_engine.dataset("digits").owners(limit=2)]
    v2 = digits_engine.unlearn("gd", owners[:1], mode="approximate", method="ft")
    assert "deltagrad" not in v2["metrics"]  # ft's weights carry no trajectory
    v3 = digits_engine.unlearn("gd", owners[1:], mode="approximate", method="deltagrad")
    assert v3["metrics"]["deltagrad"]["no_trajectory"] is True and v3["exact"] is True


@pytest.mark.parametrize("t0", [5, 7, 10])
def test_a_second_removal_on_another_schedule_takes_pairs_only_where_gradients_are_exact(digits, t0):
    """The replayed path stores approximated gradients at its approximate steps; a pair
    against one of them is not curvature (with t0 = 7 after t0 = 5 the replay diverged)."""
    phi, ypm = digits
    first_schedule = deltagrad.Schedule(lr=4.0, iterations=150)
    _, trajectory = deltagrad.train(phi, ypm, first_schedule)
    first, second = _gone(len(phi), 30, 6), _gone(len(phi), 60, 7)
    second &= ~first
    one = deltagrad.remove(trajectory, phi[~first], ypm[~first], phi[first], ypm[first], first_schedule)
    assert one.trajectory.exact is not None and int(one.trajectory.exact.sum()) == one.exact_steps
    keep, gone = ~(first | second), second[~first]
    other = deltagrad.Schedule(lr=4.0, iterations=150, t0=t0)
    two = deltagrad.remove(one.trajectory, phi[keep], ypm[keep], phi[~first][gone], ypm[~first][gone], other)
    assert two.trajectory.replays == 2
    assert _rel(two.weights, deltagrad.retrain(phi[keep], ypm[keep], first_schedule)) < 1e-2  # was 95 at t0 = 7


def test_after_max_replays_the_head_is_retrained(digits_engine):
    _train_gd(digits_engine, iterations=30)
    owners = [o for o, _ in digits_engine.dataset("digits").owners(limit=2)]
    v2 = digits_engine.unlearn("gd", owners[:1], mode="approximate", method="deltagrad",
                               method_config={"max_replays": 1})
    assert v2["metrics"]["deltagrad"]["replays"] == 1 and v2["exact"] is False
    v3 = digits_engine.unlearn("gd", owners[1:], mode="approximate", method="deltagrad",
                               method_config={"max_replays": 1})
    report = v3["metrics"]["deltagrad"]
    assert report["replay_limit"] == 1 and report["retrained"] is True and v3["exact"] is True


@pytest.mark.parametrize("trainer", ["gd", "solver"])
def test_removing_every_row_of_a_linear_head_is_a_clear_error(engine, trainer):
    from workers.engine.errors import ModelError
    from workers.engine.sisa import Strategy
    from workers.engine.training import TrainConfig

    engine.import_dataset("two", "digits", seed=0, owners=2)
    engine.train("lin", dataset="two", architecture="linear", config=TrainConfig(seed=0),
                 strategy=Strategy("linear", trainer=trainer, **({"iterations": 10} if trainer == "gd" else {})))
    everyone = [o for o, _ in engine.dataset("two").owners(limit=2)]
    method = "deltagrad" if trainer == "gd" else "certified"
    for mode, kwargs in (("approximate", {"method": method}), ("sisa", {})):
        with pytest.raises(ModelError, match="nothing left to train it on"):
            engine.unlearn("lin", everyone, mode=mode, **kwargs)


# -- the gd kind: a network trained by full-batch gradient descent -------------------------

MLP = {"architecture": "mlp", "architecture_params": {"hidden": 32}}


def _train_net(engine, name: str = "net", **strategy) -> dict:
    from workers.engine.sisa import Strategy
    from workers.engine.training import TrainConfig

    return engine.train(name, dataset="digits", **MLP, strategy=Strategy("gd", **{"iterations": 150, **strategy}),
                        config=TrainConfig(seed=0))


def _flat(engine, version: dict) -> torch.Tensor:
    from workers.engine import checkpoints

    state = checkpoints.loads(engine.store.get_blob(version["constituents"][0]["weights"])).model_state
    return torch.cat([state[k].double().flatten() for k in sorted(state)])


def test_a_network_replay_lands_closer_to_retraining_than_the_network_it_started_from():
    """The algorithm on an MLP (not convex): DeltaGrad's replay against the same steps
    on the remaining rows, with most full gradients approximated."""
    from torch.nn.utils import parameters_to_vector

    from workers.engine import gdnet

    raw = sources.load_digits(seed=0)
    x = torch.as_tensor(raw.x.astype(np.float64) * raw.x_scale)
    y = torch.as_tensor(raw.y.astype(np.int64))
    gone = _gone(len(y), 20, 0)
    spec = {**MLP, "input_shape": [1, 8, 8], "num_classes": 10, "recipe": {"seed": 0}}
    schedule = deltagrad.Schedule(lr=0.1, iterations=150, l2=1e-4)
    model = gdnet.network(spec)
    v0 = parameters_to_vector(model.parameters()).detach()[:, None]
    original, trajectory = deltagrad.descend(v0, gdnet.Objective(model, x, y), len(y), schedule)
    keep = gdnet.Objective(model, x[~gone], y[~gone])
    exact, _ = deltagrad.descend(v0, keep, int((~gone).sum()), schedule)
    replay = deltagrad.replay(trajectory, int((~gone).sum()), keep, 20, gdnet.Objective(model, x[gone], y[gone]),
                              schedule, curvature=gdnet.curvature_bound(schedule.lr))
    assert replay.approximate_steps > replay.exact_steps
    assert (replay.weights - exact).norm() < 0.6 * (original - exact).norm()


def test_a_gd_network_forgets_an_owner_by_replay_and_retrains_for_an_exact_removal(digits_engine):
    v1 = _train_net(digits_engine)
    assert v1["strategy"] == {"kind": "gd", "shards": 1, "slices": 1, "aggregation": "mean_softmax",
                              "iterations": 150, "lr": 0.1, "l2": 1e-4}
    assert v1["metrics"]["test_accuracy"] > 0.6 and v1["metrics"]["deltagrad"]["retrained"] is False  # chance: 0.1
    owners = [o for o, _ in digits_engine.dataset("digits").owners(limit=2)]
    v2 = digits_engine.unlearn("net", owners[:1], mode="approximate", method="deltagrad")
    report = v2["metrics"]["deltagrad"]
    assert report["retrained"] is False and report["approximate_steps"] > report["exact_steps"]
    assert v2["exact"] is False and v2["method"]["name"] == "deltagrad"
    assert v2["metrics"]["test_accuracy"] > 0.6
    assert not torch.equal(_flat(digits_engine, v2), _flat(digits_engine, v1))
    v3 = digits_engine.unlearn("net", owners[1:])  # exact: the same steps from scratch on what is left
    assert v3["exact"] is True and v3["metrics"]["deltagrad"]["retrained"] is True
    served = digits_engine.load("net").models[0]  # a plain MLP, served like any other
    assert isinstance(served, nets.MLP)


def test_the_gd_kind_refuses_what_does_not_fit(digits_engine):
    from workers.engine.errors import MethodNotSupported, ModelError
    from workers.engine.sisa import Strategy

    with pytest.raises(ValueError, match="linear kind only"):
        Strategy("gd", epsilon=1.0)
    with pytest.raises(ValueError, match="iterations >= 1"):
        Strategy("gd", lr=0.0)
    with pytest.raises(ModelError, match="MiB limit"):
        _train_net(digits_engine, "huge", iterations=100_000)
    _train_net(digits_engine, iterations=10)
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    with pytest.raises(MethodNotSupported, match="linear"):
        digits_engine.unlearn("net", [owner], mode="approximate", method="certified")


def test_a_replay_that_diverges_is_retrained_not_published(digits_engine, monkeypatch):
    from workers.engine import deltagrad as math

    _train_net(digits_engine, iterations=20)
    real = math.replay

    def runaway(*args, **kwargs):
        result = real(*args, **kwargs)
        return math.Replay(result.weights * float("nan"), result.trajectory, result.exact_steps,
                           result.approximate_steps)

    monkeypatch.setattr(math, "replay", runaway)
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v2 = digits_engine.unlearn("net", [owner], mode="approximate", method="deltagrad")
    assert v2["metrics"]["deltagrad"]["diverged"] is True and v2["metrics"]["deltagrad"]["retrained"] is True
    assert v2["exact"] is True and torch.isfinite(_flat(digits_engine, v2)).all()
