"""The owner-keyed data ledger: import, owner look-up, erasure, bad input."""
import io

import numpy as np
import pytest

from tests.engine.conftest import write_idx
from workers.engine.digests import ids_digest
from workers.engine.errors import DatasetError, DatasetExists, OwnerNotFound
from workers.engine.sources import assign_owners


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_digits_import_records_every_sample_with_an_owner(digits_engine):
    ds = digits_engine.dataset("digits")
    info = ds.info()
    arrays = ds.load_arrays()
    assert info.n_samples == len(arrays.sample_ids) == 1437
    assert info.n_test == 360
    assert sum(c for _, c in ds.owners(limit=10_000)) == info.n_samples
    assert info.source["owners"]["assigned"] == "zipf"


def test_assigned_owners_are_skewed_and_reproducible():
    owners = assign_owners(6000, seed=3)
    counts = np.sort(np.unique(owners, return_counts=True)[1])[::-1]
    assert len(counts) == 300
    assert counts[0] > 5 * np.median(counts)  # a few owners hold many samples
    assert counts.min() >= 1
    assert (assign_owners(6000, seed=3) == owners).all()
    assert not (assign_owners(6000, seed=4) == owners).all()


def test_owner_lookup_uses_the_owner_index(digits_engine):
    plan = digits_engine.dataset("digits").owner_query_plan()
    assert "ix_samples_owner_id" in plan
    assert "SCAN" not in plan


def test_owner_lookup_returns_exactly_the_owners_samples(digits_engine):
    ds = digits_engine.dataset("digits")
    owner, count = ds.owners(limit=1)[0]
    ids = ds.owner_sample_ids(owner)
    assert len(ids) == count
    owner_map = ds.owner_map()
    assert {i for i, o in owner_map.items() if o == owner} == set(ids.tolist())


def test_erasure_physically_removes_the_rows_and_returns_ids_and_digest(digits_engine):
    ds = digits_engine.dataset("digits")
    owner, _ = ds.owners(limit=1)[0]
    ids = ds.owner_sample_ids(owner)
    before = ds.load_arrays()

    [erasure] = ds.erase_owners([owner], reference="req-1")

    assert erasure.sample_ids == ids.tolist()
    assert erasure.digest == ids_digest(ids)
    assert erasure.reference == "req-1"
    assert len(ds.owner_sample_ids(owner)) == 0
    after = ds.load_arrays()
    assert not np.isin(after.sample_ids, ids).any()
    assert len(after.sample_ids) == len(before.sample_ids) - len(ids)
    # No array file left on disk still holds the erased rows.
    assert not list(ds.path.glob("arrays-*.npz"))
    held = np.concatenate([np.load(f) for f in ds.path.glob("chunks/*/sample_id.npy")])
    assert not np.isin(held, ids).any() and len(held) == len(after.x)


def test_erasing_again_returns_the_same_receipt(digits_engine):
    ds = digits_engine.dataset("digits")
    owner, _ = ds.owners(limit=1)[0]
    first = ds.erase_owners([owner])
    assert ds.erase_owners([owner]) == first


def test_unknown_owner_is_refused(digits_engine):
    with pytest.raises(OwnerNotFound) as err:
        digits_engine.dataset("digits").erase_owners(["nobody"])
    assert err.value.code == "owner_not_found"


def test_npz_upload_keeps_its_owner_ids(engine, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "up.npz"
    path.write_bytes(_npz_bytes(x=rng.random((30, 5)), y=rng.integers(0, 3, 30), owner_id=np.repeat(["ann", "bob", "cy"], 10)))
    info = engine.import_dataset("up", "npz", path=path)
    assert info.n_owners == 3 and info.num_classes == 3 and info.input_shape == [5]
    assert len(engine.dataset("up").owner_sample_ids("bob")) == 10


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x=np.zeros((4, 3)), y=np.zeros(4, int)), "missing"),
        (dict(x=np.zeros((4, 3)), y=np.zeros(3, int), owner_id=np.arange(4)), "one label per row"),
        (dict(x=np.zeros((4, 3)), y=-np.ones(4, int), owner_id=np.arange(4)), "non-negative"),
        (dict(x=np.zeros((4, 3)), y=np.zeros(4, int), owner_id=np.arange(3)), "owner_id"),
        (dict(x=np.full((4, 3), np.nan), y=np.zeros(4, int), owner_id=np.arange(4)), "finite"),
        (dict(x=np.zeros((0, 3)), y=np.zeros(0, int), owner_id=np.arange(0)), "at least one row"),
    ],
)
def test_malformed_npz_gets_a_clear_error(engine, arrays, message):
    with pytest.raises(DatasetError, match=message):
        engine.import_dataset("bad", "npz", path=_npz_bytes(**arrays))
    assert not engine.datasets.exists("bad")


def test_a_file_that_is_not_npz_is_refused(engine):
    with pytest.raises(DatasetError, match="not a readable .npz"):
        engine.import_dataset("bad", "npz", path=b"this is not a zip archive")


def test_empty_dataset_is_refused(engine):
    with pytest.raises(DatasetError, match="empty"):
        engine.datasets.create("empty", x=np.zeros((0, 2)), y=np.zeros(0), owner_ids=np.array([]),
                               x_test=None, y_test=None, num_classes=2, input_shape=[2], x_scale=1.0, source={})


def test_duplicate_and_badly_named_datasets_are_refused(digits_engine):
    with pytest.raises(DatasetExists):
        digits_engine.import_dataset("digits", "digits")
    with pytest.raises(DatasetError, match="invalid dataset name"):
        digits_engine.import_dataset("../escape", "digits")
    with pytest.raises(DatasetError, match="unknown source"):
        digits_engine.import_dataset("x", "cifar")


def test_fashion_mnist_loads_through_torchvision_from_idx_files(engine, tmp_path):
    src = tmp_path / "fmnist"
    src.mkdir()
    rng = np.random.default_rng(0)
    write_idx(src / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28)))
    write_idx(src / "train-labels-idx1-ubyte.gz", np.arange(40) % 10)
    write_idx(src / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    info = engine.import_dataset("fm", "fashion-mnist", path=src, seed=1)
    assert (info.n_samples, info.n_test, info.input_shape) == (40, 10, [1, 28, 28])
    assert (engine.dataset("fm").load_arrays().y == np.arange(40) % 10).all()
    # the uncompressed copy torchvision reads is gone: no row outlives the import in a cache
    assert not [p for p in (engine.data_dir / "cache").rglob("*") if p.is_file()]


def test_missing_fashion_mnist_files_give_a_clear_error(engine, tmp_path):
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        engine.import_dataset("fm", "fashion-mnist", path=tmp_path)


def test_raw_rows_left_by_a_crash_mid_erasure_are_removed_on_next_open(digits_engine, monkeypatch):
    from workers.engine.ledger import Dataset

    ds = digits_engine.dataset("digits")
    owner, _ = ds.owners(limit=1)[0]
    ids = ds.owner_sample_ids(owner)

    def crash(self):
        raise OSError("killed after the ledger switched, before the old file was deleted")

    monkeypatch.setattr(Dataset, "_remove_stale_arrays", crash)
    with pytest.raises(OSError):
        ds.erase_owners([owner])
    monkeypatch.undo()
    # The touched chunks' old generations still hold the rows.
    assert len(list(ds.path.glob("chunks/*"))) == 2

    reopened = digits_engine.dataset("digits")
    [remaining] = list(reopened.path.glob("chunks/*"))
    assert not np.isin(np.load(remaining / "sample_id.npy"), ids).any()
    assert reopened.erasures(owner)[0].sample_ids == ids.tolist()


@pytest.fixture
def chunked(engine, monkeypatch):
    """Digits stored in chunks of 100 rows (15 chunks)."""
    from workers.engine import ledger

    monkeypatch.setattr(ledger, "CHUNK_ROWS", 100)
    engine.import_dataset("digits", "digits", seed=0)
    return engine.dataset("digits")


def _generations(ds) -> dict[str, tuple[str, int]]:
    """chunk -> (directory, inode of its x.npy)."""
    return {d.name.split("-")[0]: (d.name, (d / "x.npy").stat().st_ino) for d in ds.path.glob("chunks/*")}


def test_erasing_an_owner_rewrites_only_the_chunks_that_hold_their_rows(chunked):
    ds = chunked
    before, rows_before = _generations(ds), ds.load_arrays()
    assert len(before) == 15
    owner = next(o for o, c in ds.owners(limit=500) if c >= 2)
    ids = ds.owner_sample_ids(owner)
    touched = {f"{i // 100:06d}" for i in ids.tolist()}
    ds.erase_owners([owner])
    after = _generations(ds)
    assert set(after) == set(before)
    for k in before:
        if k in touched:  # a new generation, without the owner's rows
            assert after[k][0] == f"{k}-000001" and after[k][1] != before[k][1]
        else:  # not read, not written
            assert after[k] == before[k]
    rows = ds.load_arrays()
    keep = ~np.isin(rows_before.sample_ids, ids)
    assert (rows.sample_ids == rows_before.sample_ids[keep]).all() and (rows.x == rows_before.x[keep]).all()


def test_rows_reads_only_what_was_asked(chunked):
    ds = chunked
    everything = ds.load_arrays()
    wanted = np.array([3, 250, 1436, 99999])
    got = ds.rows(wanted)
    assert got.sample_ids.tolist() == [3, 250, 1436]
    assert (got.x == everything.x[[3, 250, 1436]]).all() and (got.y == everything.y[[3, 250, 1436]]).all()
    assert len(ds.rows(np.array([99999])).sample_ids) == 0


def test_a_dataset_written_as_one_array_file_is_split_into_chunks_when_opened(digits_engine):
    """Datasets written before chunks hold one arrays-<generation>.npz; opening one
    splits it, deletes the file, and reads the same rows."""
    import json
    import shutil
    import sqlite3

    ds = digits_engine.dataset("digits")
    rows = ds.load_arrays()
    np.savez(ds.path / "arrays-000003.npz", sample_id=rows.sample_ids, x=rows.x, y=rows.y)
    shutil.rmtree(ds.path / "chunks")
    con = sqlite3.connect(ds.path / "ledger.sqlite")
    with con:
        con.execute("DELETE FROM meta WHERE key IN ('chunks', 'chunk_rows')")
        con.execute("INSERT INTO meta VALUES ('arrays_file', ?)", (json.dumps("arrays-000003.npz"),))
    con.close()
    assert (ds.load_arrays().x == rows.x).all()  # still readable before it is opened again
    reopened = digits_engine.dataset("digits")
    assert not list(reopened.path.glob("arrays-*.npz")) and list(reopened.path.glob("chunks/*"))
    again = reopened.load_arrays()
    assert (again.sample_ids == rows.sample_ids).all() and (again.x == rows.x).all() and (again.y == rows.y).all()
    owner, _ = reopened.owners(limit=1)[0]
    reopened.erase_owners([owner])
    assert len(reopened.owner_sample_ids(owner)) == 0
