"""Tables (CSV, Parquet) as datasets: encoded in two streaming passes, written chunk by
chunk, trained and forgotten like any other; bad files are refused naming the row."""
from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAST
from workers.engine import datasets as engine_datasets
from workers.engine import ledger
from workers.engine.errors import DatasetError
from workers.engine.ledger import DatasetStore
from workers.engine.sisa import Strategy
from workers.engine.tables import TableReader, TableSpec

SPEC = {"label_column": "label", "owner_column": "customer"}


def _rows(n: int = 300, seed: int = 0) -> list[dict]:
    """A churn-like table: two numeric columns, a categorical one, string labels that
    depend on them (so a model can learn them), 30 customers."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = float(rng.integers(18, 80))
        spend = float(rng.normal(100, 30))
        plan = ["basic", "plus", "pro"][int(rng.integers(0, 3))]
        label = "churned" if (spend < 100) != (plan == "pro") else "stayed"
        rows.append({"customer": f"cust-{i % 30:03d}", "age": age, "spend": spend, "plan": plan, "label": label})
    return rows


def _csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("write", [_csv, _parquet], ids=["csv", "parquet"])
def test_a_table_is_encoded_and_its_encoding_kept(tmp_path, write):
    rows = _rows()
    path = write(tmp_path / "t", rows)
    store = DatasetStore(tmp_path / "ds")
    info = engine_datasets.import_dataset(store, "churn", "table", cache_dir=tmp_path, path=path, options=SPEC)
    assert info.n_samples == 300 and info.n_owners == 30 and info.num_classes == 2
    assert info.input_shape == [5]  # age, spend, plan=basic|plus|pro
    enc = info.source["encoding"]
    assert enc["classes"] == ["churned", "stayed"]
    assert [f["column"] for f in enc["features"]] == ["age", "spend", "plan"]
    assert enc["features"][2] == {"column": "plan", "kind": "categorical", "categories": ["basic", "plus", "pro"]}
    arrays = store.open("churn").load_arrays()
    ages = np.array([r["age"] for r in rows])
    assert np.allclose(arrays.x[:, 0], (ages - ages.mean()) / ages.std(), atol=1e-5)
    assert np.array_equal(arrays.x[:, 2:].argmax(1), [["basic", "plus", "pro"].index(r["plan"]) for r in rows])
    assert np.array_equal(arrays.y, [enc["classes"].index(r["label"]) for r in rows])
    owners = dict(store.open("churn").owners(limit=100))
    assert owners["cust-000"] == 10


def test_integer_labels_stay_class_indices_and_named_categoricals_are_one_hot(tmp_path):
    rows = [{**r, "label": int(r["label"] == "stayed"), "zone": i % 4} for i, r in enumerate(_rows(40))]
    path = _csv(tmp_path / "t.csv", rows)
    reader = TableReader(path, TableSpec(**SPEC, categorical_columns=["zone"]))
    enc = reader.learn(max_classes=10)
    assert enc["classes"] is None and enc["num_classes"] == 2
    assert enc["features"][-1] == {"column": "zone", "kind": "categorical", "categories": ["0", "1", "2", "3"]}


def test_a_table_larger_than_one_chunk_streams_into_many(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger, "CHUNK_ROWS", 64)
    monkeypatch.setattr("workers.engine.tables.BATCH_BYTES", 4096)  # many small batches
    rows = _rows(1000)
    path = _csv(tmp_path / "t.csv", rows)
    store = DatasetStore(tmp_path / "ds")
    engine_datasets.import_dataset(store, "churn", "table", cache_dir=tmp_path, path=path, options=SPEC)
    ds = store.open("churn")
    assert len(list((ds.path / "chunks").iterdir())) == 16
    lazy = ds.load_arrays(lazy=True)
    full = ds.load_arrays()
    assert isinstance(lazy.x, ledger.ChunkedRows) and lazy.x.shape == full.x.shape
    pick = np.array([999, 0, 63, 64, 500, 500])
    assert np.array_equal(lazy.x[pick], full.x[pick]) and np.array_equal(lazy.x[10:20], full.x[10:20])
    assert np.array_equal(np.asarray(ds.sample_ids()), full.sample_ids)


BAD = [
    ("ragged", "customer,age,label\nc1,3,a\nc2,4\n", "line 3 has 2 fields, the header has 3"),
    ("no owner column", "who,age,label\nc1,3,a\nc2,4,b\n", "no column 'customer'"),
    ("no label column", "customer,age,class\nc1,3,a\nc2,4,b\n", "no column 'label'"),
    ("empty owner", "customer,age,label\nc1,3,a\n,4,b\n", "line 3 has no owner id"),
    ("long owner", "customer,age,label\nc1,3,a\n" + "x" * 129 + ",4,b\n", "line 3: the owner id must be 1 to 128"),
    ("missing number", "customer,age,label\nc1,3,a\nc2,,b\n", "line 3 has no value in numeric column 'age'"),
    ("no label", "customer,age,label\nc1,3,a\nc2,4,\n", "line 3 has no label"),
    ("one class", "customer,age,label\nc1,3,a\nc2,4,a\n", "fewer than two classes"),
    ("too many classes", "customer,age,label\n" + "".join(f"c{i},{i},k{i}\n" for i in range(12)),
     "more than 10 classes"),
    ("no rows", "customer,age,label\n", "no rows"),
]


@pytest.mark.parametrize("content,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_tables_are_refused_naming_the_row_and_leave_nothing(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    store = DatasetStore(tmp_path / "ds")
    with pytest.raises(DatasetError, match=message) as exc:
        engine_datasets.import_dataset(store, "bad", "table", cache_dir=tmp_path, path=path, options=SPEC,
                                       max_classes=10)
    assert "bad.csv" in str(exc.value) and exc.value.code == "invalid_dataset"
    assert store.names() == [] and not [p for p in (tmp_path / "ds").iterdir()]


def test_a_table_needs_its_columns_named_and_a_readable_file(tmp_path):
    path = _csv(tmp_path / "t.csv", _rows(10))
    store = DatasetStore(tmp_path / "ds")
    with pytest.raises(DatasetError, match="needs option 'owner_column'"):
        engine_datasets.import_dataset(store, "t", "table", cache_dir=tmp_path, path=path,
                                       options={"label_column": "label"})
    with pytest.raises(DatasetError, match="unknown table option"):
        engine_datasets.import_dataset(store, "t", "table", cache_dir=tmp_path, path=path,
                                       options={**SPEC, "sep": ";"})
    with pytest.raises(DatasetError, match="takes no options"):
        engine_datasets.import_dataset(store, "t", "digits", cache_dir=tmp_path, options=SPEC)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        engine_datasets.import_dataset(store, "t", "table", cache_dir=tmp_path, path=tmp_path / "junk.parquet",
                                       options=SPEC)


def test_a_table_trains_as_sisa_and_forgets_an_owner(tmp_path):
    from workers.engine.engine import Engine

    engine = Engine(tmp_path / "data", device="cpu")
    engine.import_dataset("churn", "table", path=_csv(tmp_path / "t.csv", _rows(600)), options=SPEC)
    v1 = engine.train("churn-mlp", dataset="churn", architecture="mlp", strategy=Strategy("sisa", 3, 2),
                      config=FAST)
    assert v1["metrics"]["test_accuracy"] is None or v1["metrics"]["test_accuracy"] >= 0
    gone = engine.dataset("churn").owner_sample_ids("cust-007")
    v2 = engine.unlearn("churn-mlp", ["cust-007"])
    manifest = np.concatenate([np.concatenate(s) for s in engine.slice_ids(v2)])
    assert len(gone) == 20 and not np.isin(gone, manifest).any()
    assert engine.verify("churn-mlp", 2)["ok"] is True


def test_a_dataset_over_the_device_limit_trains_from_its_chunks_with_the_same_weights(tmp_path, monkeypatch):
    """Held whole or read batch by batch from the memory-mapped chunks: the same rows in
    the same order, so the same weights."""
    from workers.engine.engine import Engine

    path = _csv(tmp_path / "t.csv", _rows(400))
    weights = {}
    for limit in (str(1 << 30), "1"):
        monkeypatch.setenv("LETHE_MAX_DEVICE_DATA_BYTES", limit)
        engine = Engine(tmp_path / f"data-{limit}", device="cpu")
        engine.import_dataset("churn", "table", path=path, options=SPEC)
        assert engine_datasets.device_data(engine.dataset("churn"), "cpu").lazy is (limit == "1")
        engine.train("m", dataset="churn", architecture="mlp", strategy=Strategy("sisa", 2, 2), config=FAST)
        weights[limit] = [p.detach().clone() for net in engine.load("m").models for p in net.parameters()]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(*weights.values()))
