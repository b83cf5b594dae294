"""Architectures: built in, every torchvision classification model by name (adapted to
small and grey images), and plugins from the ``lethe.architectures`` entry-point group."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import FAST
from workers.engine import nets
from workers.engine.sisa import Strategy


@pytest.mark.parametrize("name,shape", [
    ("resnet34", [1, 8, 8]), ("mobilenet_v3_small", [1, 28, 28]), ("efficientnet_b0", [3, 32, 32]),
    ("vit_b_16", [1, 28, 28]), ("convnext_tiny", [3, 20, 20]), ("linear", [64]), ("mlp", [10]),
])
def test_a_named_architecture_builds_for_the_data_it_is_given(name, shape):
    net = nets.build(name, shape, 7, seed=0).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, *shape)).shape == (2, 7)
    again = nets.build(name, shape, 7, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_the_registry_holds_builtin_torchvision_and_plugin_architectures():
    sources = {a["name"]: a["source"] for a in nets.describe()}
    assert sources["cnn"] == sources["linear"] == "builtin"
    assert sources["resnet50"] == sources["vit_b_16"] == sources["convnext_tiny"] == "torchvision"
    assert sources["acme_tabular"] == "plugin"  # examples/lethe-plugin-example, installed by scripts/setup
    assert nets.parameters("acme_tabular") == {"hidden": 64, "dropout": 0.1}
    assert nets.parameters("mlp") == {"hidden": 256}


def test_the_written_out_torchvision_names_are_torchvisions_own_and_naming_them_imports_nothing():
    """The list is torchvision's (a torchvision upgrade that changes it fails here), and a
    process that only names architectures does not import torchvision."""
    import subprocess
    import sys

    from torchvision import models

    assert list(nets.TORCHVISION_CLASSIFIERS) == models.list_models(module=models)
    probe = ("import sys; from workers.engine import nets; import app.cli; "
             "assert 'resnet50' in nets.ARCHITECTURES; print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_parameters_reach_the_builder_and_unknown_ones_are_refused():
    assert nets.build("mlp", [10], 3, seed=0, params={"hidden": 8}).net[1].out_features == 8
    assert nets.build("acme_tabular", [10], 3, seed=0, params={"hidden": 5})[1].out_features == 5
    with pytest.raises(ValueError, match="depth"):
        nets.build("mlp", [10], 3, seed=0, params={"depth": 3})
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        nets.build("nope", [10], 3, seed=0)


def test_a_plugin_is_found_through_its_entry_point_in_a_fresh_process(tmp_path):
    """Any installed distribution that declares the entry point adds its builder."""
    (tmp_path / "acme_vision.py").write_text(textwrap.dedent('''
        from torch import nn
        def build(input_shape, num_classes, width=4):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    '''))
    dist = tmp_path / "acme_vision-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-vision\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lethe.architectures]\nacme_vision = acme_vision:build\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from workers.engine import nets; "
            "print(nets.SOURCES['acme_vision'], nets.parameters('acme_vision'))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "plugin {'width': 4}"


@pytest.mark.parametrize("architecture,params", [("mobilenet_v3_small", {}), ("acme_tabular", {"hidden": 32})])
def test_torchvision_and_plugin_models_train_and_unlearn_as_sisa(digits_engine, architecture, params):
    v1 = digits_engine.train("m", dataset="digits", architecture=architecture, architecture_params=params,
                             strategy=Strategy("sisa", 2, 1), config=FAST)
    assert v1["metrics"]["test_accuracy"] is not None  # (3 epochs on 8x8 digits: no accuracy to speak of)
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v2 = digits_engine.unlearn("m", [owner])
    assert v2["version"] == 2 and v2["metrics"]["retrained_shards"]
    assert digits_engine.verify("m", 2)["ok"] is True
    probs = digits_engine.load("m", 2).predict_proba(torch.zeros(1, 1, 8, 8))
    assert probs.shape == (1, 10)
