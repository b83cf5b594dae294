"""The ``lethe`` command line, end to end on digits."""
import json
import subprocess
import sys
from pathlib import Path

from app.cli import main


def run(tmp_path, *args, capsys):
    code = main(["--data-dir", str(tmp_path / "data"), "--quiet", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_train_unlearn_list_and_show(tmp_path, capsys):
    assert run(tmp_path, "import", "digits", "--source", "digits", capsys=capsys)[0] == 0
    code, out, _ = run(tmp_path, "--json", "owners", "digits", "--limit", "2", capsys=capsys)
    owner = json.loads(out)[0]["owner_id"]
    code, out, _ = run(tmp_path, "train", "m", "--dataset", "digits", "--shards", "2", "--slices", "2",
                       "--epochs", "2", capsys=capsys)
    assert code == 0 and "published m v1" in out
    code, out, _ = run(tmp_path, "unlearn", "m", "--owner", owner, "--request", "r-1", capsys=capsys)
    assert code == 0 and "published m v2" in out
    code, out, _ = run(tmp_path, "versions", "m", capsys=capsys)
    assert out.splitlines()[0].startswith("v1\t") and out.splitlines()[1].startswith("v2\t")
    code, out, _ = run(tmp_path, "--json", "show", "m", "2", capsys=capsys)
    shown = json.loads(out)
    assert shown["parent"] == 1 and shown["lineage"] == [2, 1]
    assert shown["removed"]["owners"][0]["owner_id"] == owner
    assert shown["removed"]["requests"] == ["r-1"]
    code, out, _ = run(tmp_path, "show", "m", capsys=capsys)
    assert "manifest digest " + shown["manifest_digest"] in out


def test_errors_exit_2_with_a_machine_readable_code(tmp_path, capsys):
    run(tmp_path, "import", "digits", "--source", "digits", capsys=capsys)
    code, _, err = run(tmp_path, "train", "m", "--dataset", "digits", "--shards", "500", capsys=capsys)
    assert code == 2 and "[invalid_model]" in err
    code, _, err = run(tmp_path, "unlearn", "nope", "--owner", "x", capsys=capsys)
    assert code == 2 and "[model_not_found]" in err
    code, _, err = run(tmp_path, "import", "u", "--source", "npz", "--path", str(tmp_path / "missing.npz"),
                       capsys=capsys)
    assert code == 2 and "[invalid_dataset]" in err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "lethe"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "unlearn" in out.stdout


def test_demo_forgets_the_largest_owner_and_can_run_again(tmp_path, capsys):
    code, out, _ = run(tmp_path, "demo", capsys=capsys)
    assert code == 0
    assert "digits-sisa v2" in out and "now holds 0 samples" in out
    code, out, _ = run(tmp_path, "demo", capsys=capsys)
    assert code == 0 and "digits-sisa v3" in out


def test_unlearn_with_an_approximate_method_reports_its_metrics(tmp_path, capsys):
    assert run(tmp_path, "import", "digits", "--source", "digits", capsys=capsys)[0] == 0
    code, out, _ = run(tmp_path, "--json", "owners", "digits", "--limit", "1", capsys=capsys)
    owner = json.loads(out)[0]["owner_id"]
    assert run(tmp_path, "train", "m", "--dataset", "digits", "--epochs", "2", capsys=capsys)[0] == 0
    code, out, _ = run(tmp_path, "unlearn", "m", "--owner", owner, "--method", "ssd", capsys=capsys)
    assert code == 0 and "published m v2 (approximate)" in out and "approximate (ssd)" in out and "UA " in out
    code, out, _ = run(tmp_path, "--json", "verify", "m", capsys=capsys)
    report = json.loads(out)
    assert report["ok"] is True and report["exact"] is False
    code, _, err = run(tmp_path, "unlearn", "m", "--owner", owner, "--method", "nope", capsys=capsys)
    assert code == 2


def test_architectures_are_listed_and_a_plugin_trains_with_its_parameters(tmp_path, capsys):
    code, out, _ = run(tmp_path, "--json", "architectures", capsys=capsys)
    listed = {a["name"]: a["source"] for a in json.loads(out)}
    assert code == 0 and listed["acme_tabular"] == "plugin" and listed["vit_b_16"] == "torchvision"
    assert run(tmp_path, "import", "digits", "--source", "digits", capsys=capsys)[0] == 0
    code, out, _ = run(tmp_path, "--json", "train", "acme", "--dataset", "digits", "--arch", "acme_tabular",
                       "--arch-param", "hidden=12", "--shards", "2", "--slices", "1", "--epochs", "1", capsys=capsys)
    assert code == 0
    version = json.loads(out)
    assert version["architecture"] == "acme_tabular" and version["architecture_params"] == {"hidden": 12}
    code, _, err = run(tmp_path, "train", "bad", "--dataset", "digits", "--arch", "acme_tabular",
                       "--arch-param", "hidden", capsys=capsys)
    assert code == 2 and "KEY=VALUE" in err


def test_train_takes_a_recipe_and_its_options_override_it(tmp_path, capsys):
    assert run(tmp_path, "import", "digits", "--source", "digits", capsys=capsys)[0] == 0
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "lr": 0.05,
                                  "schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1, "epochs": 9}))
    code, out, _ = run(tmp_path, "--json", "train", "m", "--dataset", "digits", "--arch", "mlp", "--shards", "2",
                       "--slices", "1", "--epochs", "2", "--recipe", f"@{recipe}", capsys=capsys)
    assert code == 0, out
    stored = json.loads(out)["recipe"]
    assert stored["optimizer"] == "sgd" and stored["nesterov"] is True and stored["schedule"] == "cosine"
    assert stored["epochs"] == 2 and stored["lr"] == 0.05  # --epochs given: it wins; --lr left alone: the recipe's
    code, _, err = run(tmp_path, "train", "bad", "--dataset", "digits", "--recipe", '{"optimizer": "adam", '
                       '"nesterov": true}', capsys=capsys)
    assert code == 2 and "nesterov" in err
    code, _, err = run(tmp_path, "train", "bad", "--dataset", "digits", "--recipe", '{"optimiser": "sgd"}',
                       capsys=capsys)
    assert code == 2 and "optimiser" in err


def test_import_model_takes_a_torch_export_archive(tmp_path, capsys):
    import io

    import torch

    from workers.engine import nets

    assert run(tmp_path, "import", "digits", "--source", "digits", capsys=capsys)[0] == 0
    net = nets.build("cnn", [1, 8, 8], 10, seed=3).eval()
    archive = tmp_path / "acme.pt2"
    buf = io.BytesIO()
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 8, 8),)), buf)
    archive.write_bytes(buf.getvalue())
    code, out, _ = run(tmp_path, "--json", "import-model", "acme", "--dataset", "digits", "--arch", "cnn",
                       "--weights", str(archive), "--recipe", '{"epochs": 1}', capsys=capsys)
    assert code == 0, out
    v1 = json.loads(out)
    assert v1["kind"] == "imported" and v1["recipe"]["epochs"] == 1
    code, _, err = run(tmp_path, "import-model", "other", "--dataset", "digits", "--arch", "mlp",
                       "--weights", str(archive), capsys=capsys)
    assert code == 2 and "[invalid_weights]" in err


def test_a_table_imports_trains_and_forgets_from_the_command_line(tmp_path, capsys):
    """A dataset with no held-out rows has no TA or expected UA: the summary says so."""
    lines = ["customer,age,plan,label"] + [f"c{i % 12},{20 + i % 50},{['basic', 'pro'][i % 2]},"
                                          f"{['stayed', 'churned'][(i // 3) % 2]}" for i in range(120)]
    (tmp_path / "churn.csv").write_text("\n".join(lines))
    code, out, err = run(tmp_path, "import", "churn", "--source", "table", "--path", str(tmp_path / "churn.csv"),
                         "--option", "label_column=label", "--option", "owner_column=customer", capsys=capsys)
    assert code == 0, err
    assert "120 samples, 12 owners" in out
    assert run(tmp_path, "train", "m", "--dataset", "churn", "--arch", "mlp", "--shards", "2", "--slices", "1",
               "--epochs", "1", capsys=capsys)[0] == 0
    code, out, err = run(tmp_path, "unlearn", "m", "--owner", "c3", "--method", "ga", capsys=capsys)
    assert code == 0, err
    assert "forget set 10: UA" in out and "TA None" in out
    code, _, err = run(tmp_path, "import", "bad", "--source", "table", "--path", str(tmp_path / "churn.csv"),
                       "--option", "label_column=label", capsys=capsys)
    assert code == 2 and "[invalid_dataset]" in err and "owner_column" in err


def test_a_linear_model_forgets_an_owner_with_a_certificate_from_the_command_line(tmp_path, capsys):
    run(tmp_path, "import", "digits", "--source", "digits", capsys=capsys)
    code, out, _ = run(tmp_path, "train", "lin", "--dataset", "digits", "--arch", "linear", "--strategy", "linear",
                       "--l2", "0.01", capsys=capsys)
    assert code == 0 and "certified (epsilon 1, delta 0.0001)" in out and "0 removals since training" in out
    owner = json.loads(run(tmp_path, "--json", "owners", "digits", "--limit", "1", capsys=capsys)[1])[0]["owner_id"]
    code, out, _ = run(tmp_path, "unlearn", "lin", "--owner", owner, "--method", "certified", capsys=capsys)
    assert code == 0 and "1 removals since training" in out and "budget had run out" not in out
    code, _, err = run(tmp_path, "train", "bad", "--dataset", "digits", "--arch", "linear", "--strategy", "linear",
                       "--delta", "1.5", capsys=capsys)
    assert code == 2 and "delta must be in (0, 1)" in err
    run(tmp_path, "train", "m", "--dataset", "digits", "--shards", "2", "--slices", "1", "--epochs", "1",
        capsys=capsys)
    code, _, err = run(tmp_path, "unlearn", "m", "--owner", owner, "--method", "certified", capsys=capsys)
    assert code == 2 and "[method_not_supported]" in err


def test_a_gd_linear_model_and_a_clustered_sisa_model_from_the_command_line(tmp_path, capsys):
    code, out, _ = run(tmp_path, "import", "digits", "--source", "digits", "--label-alpha", "0.1", capsys=capsys)
    assert code == 0
    code, out, _ = run(tmp_path, "train", "gd", "--dataset", "digits", "--arch", "linear", "--strategy", "linear",
                       "--trainer", "gd", "--iterations", "40", capsys=capsys)
    assert code == 0, out
    owner = json.loads(run(tmp_path, "--json", "owners", "digits", "--limit", "1", capsys=capsys)[1])[0]["owner_id"]
    code, out, _ = run(tmp_path, "unlearn", "gd", "--owner", owner, "--method", "deltagrad", capsys=capsys)
    assert code == 0 and "approximated steps of the training replayed" in out
    code, _, err = run(tmp_path, "train", "bad", "--dataset", "digits", "--arch", "linear", "--strategy", "linear",
                       "--iterations", "40", capsys=capsys)
    assert code == 2 and "settings of the gd trainer" in err
    code, out, _ = run(tmp_path, "train", "net", "--dataset", "digits", "--arch", "mlp", "--arch-param", "hidden=16",
                       "--strategy", "gd", "--iterations", "30", capsys=capsys)
    assert code == 0, out
    other = json.loads(run(tmp_path, "--json", "owners", "digits", "--limit", "1", capsys=capsys)[1])[0]["owner_id"]
    assert other != owner  # the first was erased
    code, out, _ = run(tmp_path, "unlearn", "net", "--owner", other, "--method", "deltagrad", capsys=capsys)
    assert code == 0 and "approximated steps of the training replayed" in out
    code, out, _ = run(tmp_path, "--json", "train", "km", "--dataset", "digits", "--shards", "2", "--slices", "1",
                       "--epochs", "1", "--partition", "kmeans", capsys=capsys)
    assert code == 0 and json.loads(out)["strategy"]["partition"] == "kmeans"
