"""Certified removal (Guo et al., ICML 2020) and the ``linear`` model kind: the Newton
step against an exact retrain, the residual bound against the true residual, the
budget, and the method through the engine."""
from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

from workers.engine import certified, gate, nets
from workers.engine.errors import MethodNotSupported, ModelError
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig


@pytest.fixture(scope="module")
def digits_features():
    x, y = load_digits(return_X_y=True)
    return nets.certified_features(torch.tensor(x, dtype=torch.float64)), torch.tensor(y)


def test_features_have_norm_at_most_one():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], dtype=torch.float64)
    norms = nets.certified_features(x).norm(dim=1)
    assert torch.all(norms <= 1 + 1e-12) and math.isclose(float(norms[0]), 1.0)


def test_newton_removals_stay_within_their_bound_of_the_exact_retrain(digits_features):
    phi, y = digits_features
    budget = certified.Budget(epsilon=1.0, delta=1e-4, noise=1.0, l2=1e-3)
    head = certified.fit(phi, y, 10, budget, seed=3)
    assert head.bound < 1e-4  # the optimiser's own residual, measured and counted
    b = certified.noise(budget, phi.shape[1], 10, seed=3)
    keep = torch.ones(len(y), dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        held = torch.nonzero(keep).squeeze(1)
        gone = torch.zeros_like(keep)
        gone[held[torch.randperm(len(held), generator=gen)[:8]]] = True
        before = head.bound
        head, added = certified.remove(head, phi[keep & ~gone], phi[gone], y[gone], budget.l2)
        keep &= ~gone
        assert added > 0 and math.isclose(head.bound, before + added)
        ypm = certified.signs(y[keep], 10)
        # The guarantee: the true gradient residual on the remaining rows is within the bound.
        residual = float(certified.gradient(head.weights, phi[keep], ypm, budget.l2, b).norm())
        assert residual <= head.bound
        # Strong convexity (l2 n') turns the residual into a distance to the exact retrain.
        exact = certified.solve(phi[keep], ypm, budget.l2, b)
        distance = float((head.weights - exact).norm())
        assert distance <= head.bound / (budget.l2 * int(keep.sum())) + 1e-6
    assert head.removals == 3 and head.n == int(keep.sum())


def test_a_step_is_closer_to_the_exact_retrain_than_no_step(digits_features):
    phi, y = digits_features
    budget = certified.Budget(noise=1.0, l2=1e-3)
    head = certified.fit(phi, y, 10, budget, seed=1)
    gone = torch.zeros(len(y), dtype=torch.bool)
    gone[:20] = True
    after, _ = certified.remove(head, phi[~gone], phi[gone], y[gone], budget.l2)
    exact = certified.solve(phi[~gone], certified.signs(y[~gone], 10), budget.l2,
                            certified.noise(budget, phi.shape[1], 10, seed=1))
    assert float((after.weights - exact).norm()) < 0.05 * float((head.weights - exact).norm())


def test_remove_checks_the_rows_it_is_given(digits_features):
    phi, y = digits_features
    head = certified.fit(phi[:200], y[:200], 10, certified.Budget(), seed=0)
    with pytest.raises(ValueError, match="leaves 195"):
        certified.remove(head, phi[:190], phi[195:200], y[195:200], 1e-3)


@pytest.mark.parametrize("settings", [{"epsilon": 0}, {"epsilon": -1}, {"epsilon": math.inf}, {"delta": 0},
                                      {"delta": 1}, {"noise": 0}, {"l2": 0}])
def test_a_budget_outside_its_range_is_refused(settings):
    with pytest.raises(ValueError):
        certified.Budget(**settings)
    with pytest.raises(ValueError):
        Strategy("linear", **settings)


def test_budget_follows_theorem_3():
    b = certified.Budget(epsilon=2.0, delta=1e-5, noise=3.0)
    assert math.isclose(b.residual_budget, 2.0 * 3.0 / math.sqrt(2 * math.log(1.5e5)))
    with pytest.raises(ValueError, match="settings of the linear and gd kinds only"):
        Strategy("sisa", 2, 1, epsilon=1.0)


def test_the_gate_accepts_certified_removals_on_their_bound():
    t = gate.Thresholds()
    within = {"certified": {"certified": True, "retrained": False, "residual_bound": 0.1, "budget": 0.2},
              "ua": 0.0, "expected_ua": 0.5, "forget_size": 10}  # UA alone would fail
    assert gate.check(within, 0.9, t, method="certified") == []
    over = {"certified": {"certified": False, "retrained": False, "residual_bound": 0.3, "budget": 0.2}}
    assert "exceeds the budget" in gate.check(over, 0.9, t, method="certified")[0]
    assert gate.check({"certified": {**over["certified"], "retrained": True}}, 0.9, t, method="certified") == []
    assert gate.check({}, 0.9, t, method="certified")


def _train_linear(engine, name: str, **budget) -> dict:
    return engine.train(name, dataset="digits", architecture="linear", strategy=Strategy("linear", **budget),
                        config=TrainConfig(seed=0))


def test_a_linear_model_forgets_an_owner_with_a_certificate(digits_engine):
    v1 = _train_linear(digits_engine, "lin", l2=0.01)  # digits is small: a stronger penalty, smaller steps
    assert v1["architecture"] == "certified_linear" and v1["metrics"]["test_accuracy"] > 0.7
    assert v1["metrics"]["certified"]["removals_since_training"] == 0
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v2 = digits_engine.unlearn("lin", [owner], mode="approximate", method="certified")
    cert = v2["metrics"]["certified"]
    assert cert["certified"] is True and cert["retrained"] is False and cert["removals_since_training"] == 1
    assert 0 < cert["residual_bound"] <= cert["budget"] and cert["budget_left"] > 0
    assert v2["exact"] is False and v2["method"]["name"] == "certified"
    assert v2["metrics"]["ua"] is not None  # still measured and reported
    # The served weights are the float64 ones the bound was computed for.
    model = digits_engine.load("lin").models[0]
    assert model.weight.dtype == torch.float64


def test_an_exhausted_budget_retrains_the_head_with_fresh_noise(digits_engine):
    v1 = _train_linear(digits_engine, "tight", epsilon=1e-6)
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v2 = digits_engine.unlearn("tight", [owner], mode="approximate", method="certified")
    cert = v2["metrics"]["certified"]
    assert cert["retrained"] is True and cert["removals_since_training"] == 0
    assert cert["exhausted_bound"] > cert["budget"]
    assert v2["exact"] is True  # a retrain on the remaining rows: nothing left to certify
    assert v2["constituents"][0]["weights"] != v1["constituents"][0]["weights"]


def test_an_exact_removal_retrains_the_linear_head(digits_engine):
    _train_linear(digits_engine, "lin")
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v2 = digits_engine.unlearn("lin", [owner])
    assert v2["exact"] is True and v2["metrics"]["certified"]["retrained"] is True


def test_certified_on_another_kind_is_method_not_supported(digits_engine):
    digits_engine.train("mono", dataset="digits", architecture="mlp", strategy=Strategy("monolithic"),
                        config=TrainConfig(epochs=1, seed=0))
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    with pytest.raises(MethodNotSupported, match="linear"):
        digits_engine.unlearn("mono", [owner], mode="approximate", method="certified")


def test_a_linear_head_over_another_architecture_needs_its_pretrained_weights(digits_engine):
    with pytest.raises(ModelError, match="needs that network's pretrained weights"):
        digits_engine.train("x", dataset="digits", architecture="cnn", strategy=Strategy("linear"),
                            config=TrainConfig(seed=0))


def _backbone(engine) -> dict:
    """A CNN's weights, standing in for a backbone a company pretrained elsewhere."""
    engine.train("pre", dataset="digits", architecture="cnn", strategy=Strategy("monolithic"),
                 config=TrainConfig(epochs=25, seed=0))
    return {k: v.contiguous() for k, v in engine.load("pre").models[0].state_dict().items()}


def test_a_linear_head_over_frozen_cnn_features_forgets_with_a_certificate(digits_engine):
    from safetensors.torch import save

    backbone = _backbone(digits_engine)
    v1 = digits_engine.train("feat", dataset="digits", architecture="cnn", strategy=Strategy("linear", l2=0.01),
                             config=TrainConfig(seed=0), init_weights=save(backbone))
    assert v1["architecture"] == "certified_linear"
    assert v1["architecture_params"] == {"features": {"architecture": "cnn", "params": {}}}
    raw = _train_linear(digits_engine, "raw", l2=0.01)
    assert v1["metrics"]["test_accuracy"] > 0.85  # chance is 0.1
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v2 = digits_engine.unlearn("feat", [owner], mode="approximate", method="certified")
    cert = v2["metrics"]["certified"]
    assert cert["certified"] is True and cert["retrained"] is False and 0 < cert["residual_bound"] <= cert["budget"]
    # The extractor stays frozen at the backbone's weights; only the head moved.
    served = digits_engine.load("feat").models[0]
    for key, value in served.extractor.state_dict().items():
        assert torch.equal(value.cpu(), backbone[key]), key
    assert served.weight.shape[1] == 128 + 1  # the CNN's penultimate width, and the bias
    assert v2["metrics"]["test_accuracy"] >= raw["metrics"]["test_accuracy"] - 0.05
    # The predictions served are the extractor's features through the head.
    x = torch.as_tensor(digits_engine.dataset("digits").load_test()[0][:5], dtype=torch.float32) / 16
    expected = nets.certified_features(served.extractor(x).double()) @ served.weight.T
    assert torch.allclose(served(x).double(), expected, atol=1e-5)


def test_a_backbone_that_lacks_the_extractors_weights_is_refused(digits_engine):
    from safetensors.torch import save

    partial = {k: v for k, v in _backbone(digits_engine).items() if not k.startswith("head.0")}
    with pytest.raises(ModelError, match="lacks the feature extractor's 'head.0"):
        digits_engine.train("feat", dataset="digits", architecture="cnn", strategy=Strategy("linear"),
                            config=TrainConfig(seed=0), init_weights=save(partial))


def test_a_certified_removal_after_another_method_retrains(digits_engine):
    _train_linear(digits_engine, "lin", l2=0.01)
    owners = [o for o, _ in digits_engine.dataset("digits").owners(limit=2)]
    v2 = digits_engine.unlearn("lin", owners[:1], mode="approximate", method="ft")
    assert "certified" not in v2["metrics"]  # ft's weights carry no certified state
    v3 = digits_engine.unlearn("lin", owners[1:], mode="approximate", method="certified")
    cert = v3["metrics"]["certified"]
    assert cert["retrained"] is True and cert["no_certified_state"] is True and v3["exact"] is True
