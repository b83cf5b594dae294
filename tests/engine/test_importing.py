"""Importing a model trained elsewhere: the weights become version 1 (kind imported),
evaluated and served; misfitting or pickled weights are refused; the model is then
unlearned approximately and exactly like any other."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from tests.conftest import FAST
from workers.engine import nets
from workers.engine.errors import WeightsError
from workers.engine.sisa import Strategy


def _trained_elsewhere(engine, architecture="mlp", params=None) -> torch.nn.Module:
    """A model 'the company trained': the same architecture, trained here on digits."""
    engine.train("donor", dataset="digits", architecture=architecture, architecture_params=params,
                 strategy=Strategy("monolithic"), config=FAST)
    return engine.load("donor").models[0]


def _safetensors(net) -> bytes:
    return st_save({k: v.contiguous() for k, v in net.state_dict().items()})


def test_imported_weights_become_version_1_and_predict_as_they_did(digits_engine):
    donor = _trained_elsewhere(digits_engine)
    v1 = digits_engine.import_model("acme", dataset="digits", architecture="mlp", weights=_safetensors(donor))
    assert v1["version"] == 1 and v1["kind"] == "imported" and v1["method"]["name"] == "imported"
    assert v1["constituents"][0]["status"] == "imported" and v1["metrics"]["test_accuracy"] > 0.5
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        expected = torch.softmax(donor(x), 1)
    assert torch.allclose(digits_engine.load("acme").predict_proba(x), expected, atol=1e-6)
    assert digits_engine.verify("acme", 1)["ok"] is True


def test_a_torch_save_state_dict_is_read_weights_only(digits_engine):
    donor = _trained_elsewhere(digits_engine)
    buf = io.BytesIO()
    torch.save({"state_dict": donor.state_dict()}, buf)
    v1 = digits_engine.import_model("acme", dataset="digits", architecture="mlp", weights=buf.getvalue())
    assert v1["kind"] == "imported"


class _Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_weights_that_do_not_fit_or_would_unpickle_are_refused(digits_engine):
    net = nets.build("mlp", [1, 8, 8], 10, seed=0)
    state = net.state_dict()
    wrong = {**state, "net.1.weight": torch.zeros(3, 3)}
    with pytest.raises(WeightsError, match="net.1.weight"):
        digits_engine.import_model("a", dataset="digits", architecture="mlp", weights=st_save(wrong))
    missing = {k: v for k, v in state.items() if k != "net.5.bias"}
    with pytest.raises(WeightsError, match="missing key 'net.5.bias'"):
        digits_engine.import_model("a", dataset="digits", architecture="mlp", weights=st_save(missing))
    with pytest.raises(WeightsError, match="weights-only"):
        digits_engine.import_model("a", dataset="digits", architecture="mlp", weights=pickle.dumps(_Boom()))
    assert "a" not in digits_engine.store.model_names()


def _torchscript(net) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(net.eval()), buf)
    return buf.getvalue()


def _exported(net, batch=4) -> bytes:
    buf = io.BytesIO()
    torch.export.save(torch.export.export(net.eval(), (torch.zeros(batch, 1, 8, 8),)), buf)
    return buf.getvalue()


@pytest.mark.parametrize("archive", [_torchscript, _exported], ids=["torchscript", "torch.export"])
@pytest.mark.parametrize("architecture", ["mlp", "cnn"])
def test_a_whole_model_archive_is_imported_by_its_weights(digits_engine, archive, architecture):
    donor = _trained_elsewhere(digits_engine, architecture)
    v1 = digits_engine.import_model("acme", dataset="digits", architecture=architecture, weights=archive(donor))
    assert v1["kind"] == "imported" and v1["metrics"]["test_accuracy"] > 0.5
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        expected = torch.softmax(donor.eval()(x), 1)
    assert torch.allclose(digits_engine.load("acme").predict_proba(x), expected, atol=1e-6)


class _SameKeysOtherModel(torch.nn.Module):
    """The mlp's parameter names and shapes, with another forward (tanh, not ReLU)."""

    def __init__(self, net):
        super().__init__()
        self.net = net.net

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.net:
            h = torch.tanh(h) if isinstance(layer, torch.nn.ReLU) else layer(h)
        return h


@pytest.mark.parametrize("archive", [_torchscript, _exported], ids=["torchscript", "torch.export"])
def test_an_archive_that_computes_something_else_or_is_damaged_is_refused(digits_engine, archive):
    net = nets.build("mlp", [1, 8, 8], 10, seed=0)
    with pytest.raises(WeightsError, match="computes something else"):
        digits_engine.import_model("a", dataset="digits", architecture="mlp", weights=archive(_SameKeysOtherModel(net)))
    with pytest.raises(WeightsError, match="missing key"):  # an archive of another architecture
        digits_engine.import_model("a", dataset="digits", architecture="cnn", weights=archive(net))
    data = archive(net)
    with pytest.raises(WeightsError):  # cut short: no longer a zip, nor a state dict
        digits_engine.import_model("a", dataset="digits", architecture="mlp", weights=data[: len(data) // 2])
    assert "a" not in digits_engine.store.model_names()


@pytest.mark.parametrize("mode,method", [("approximate", "ga"), ("sisa", None)])
def test_an_imported_model_is_unlearned_approximately_or_retrained_exactly(digits_engine, mode, method):
    donor = _trained_elsewhere(digits_engine)
    digits_engine.import_model("acme", dataset="digits", architecture="mlp", weights=_safetensors(donor),
                               config=FAST)
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    gone = digits_engine.dataset("digits").owner_sample_ids(owner)
    v2 = digits_engine.unlearn("acme", [owner], mode=mode, method=method)
    assert v2["version"] == 2 and v2["metrics"]["forget_size"] == len(gone)
    assert v2["exact"] is (mode == "sisa")
    manifest = np.concatenate([np.concatenate(s) for s in digits_engine.slice_ids(v2)])
    assert not np.isin(gone, manifest).any()
    if mode == "sisa":  # retrained from scratch with the recipe: the honest reference
        assert v2["constituents"][0]["status"] == "retrained" and v2["constituents"][0]["retrained_from_slice"] == 0


def test_a_pretrained_backbone_initialises_every_constituent_and_survives_unlearning(digits_engine):
    """A checkpoint for 5 classes (another task): its body starts each constituent, its
    head is skipped; a SISA pass from it equals a full retrain from it, bit for bit."""
    from dataclasses import replace

    donor = nets.build("mlp", [1, 8, 8], 5, seed=7)
    kept = digits_engine.store_backbone("digits", architecture="mlp", architecture_params=None,
                                        data=_safetensors(donor))
    assert kept["skipped"] == ["net.5.bias", "net.5.weight"] and "net.1.weight" in kept["keys"]
    frozen = replace(FAST, optimizer="sgd", lr=1e-12)  # barely moves: the start is what we see
    digits_engine.train("bb", dataset="digits", architecture="mlp", strategy=Strategy("sisa", 2, 2),
                        config=frozen, init_weights=_safetensors(donor))
    for net in digits_engine.load("bb").models:
        assert torch.allclose(net.net[1].weight, donor.net[1].weight, atol=1e-6)
    other = digits_engine.version("bb")["recipe"]["init"]
    assert other == kept["digest"]
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    digits_engine.train("bb-ref", dataset="digits", architecture="mlp", strategy=Strategy("sisa", 2, 2),
                        config=replace(FAST, init=kept["digest"]))
    v2 = digits_engine.unlearn("bb-ref", [owner])
    full = digits_engine.unlearn("bb-ref", [], mode="full")
    for a, b in zip(digits_engine.load("bb-ref", v2["version"]).models, digits_engine.load("bb-ref", full["version"]).models):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_backbone_of_which_nothing_fits_is_refused(digits_engine):
    with pytest.raises(WeightsError, match="no parameter of the checkpoint fits"):
        digits_engine.store_backbone("digits", architecture="mlp", architecture_params=None,
                                     data=_safetensors(nets.build("cnn", [1, 8, 8], 10, seed=0)))
