"""What a dataset larger than memory needs (bench/larger_than_memory.py): ids, labels
and rows read from the chunks where they are used, stored id lists memory-mapped, and
an import that never loads torch."""
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models_store.errors import BlobCorrupt
from workers.engine import datasets as engine_datasets
from workers.engine import ids as engine_ids
from workers.engine import verification
from workers.engine.ledger import ChunkedIds

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chunked(engine, monkeypatch):
    """Digits in chunks of 100 rows, one owner erased (ids with gaps) and one chunk emptied."""
    from workers.engine import ledger

    monkeypatch.setattr(ledger, "CHUNK_ROWS", 100)
    engine.import_dataset("digits", "digits", seed=0)
    ds = engine.dataset("digits")
    owner = next(o for o, c in ds.owners(limit=500) if c >= 2)
    ds.erase_owners([owner])
    whole = ds.load_arrays()
    in_chunk_3 = whole.sample_ids[(whole.sample_ids >= 300) & (whole.sample_ids < 400)]
    owners = {o for o, _ in ds.owners(limit=10_000) if np.isin(ds.owner_sample_ids(o), in_chunk_3).any()}
    ds.erase_owners(sorted(owners))  # chunk 3 is left with no rows
    return ds


def test_chunked_ids_find_the_positions_the_ids_in_memory_give(chunked):
    whole = chunked.load_arrays()
    chunks = chunked.load_chunks()
    assert not len(chunks.sample_ids.parts[3]) and len(chunks.sample_ids) == len(whole.sample_ids)
    assert np.array_equal(np.asarray(chunks.sample_ids), whole.sample_ids)
    rng = np.random.default_rng(0)
    pick = rng.permutation(whole.sample_ids)[:700]  # any order, as a slice step's concatenation
    assert np.array_equal(chunks.sample_ids.positions(pick), np.searchsorted(whole.sample_ids, pick))
    assert chunks.sample_ids.positions(pick, np.int32).dtype == np.int32
    assert np.array_equal(chunks.labels(np.int8), whole.y)
    assert np.array_equal(chunks.x[pick[:50] % 10], whole.x[pick[:50] % 10])
    gone = np.setdiff1d(np.arange(whole.sample_ids.max() + 1), whole.sample_ids)
    for missing in (gone[:1], [whole.sample_ids.max() + 1], [-1]):
        with pytest.raises(KeyError):
            chunks.sample_ids.positions(np.array([whole.sample_ids[0], *missing]))
    assert len(ChunkedIds([np.arange(3)]).positions(np.empty(0, np.int64))) == 0


def test_training_data_over_the_device_limit_holds_no_ids_and_narrow_labels(chunked, monkeypatch):
    eager = engine_datasets.device_data(chunked, "cpu")
    monkeypatch.setenv("LETHE_MAX_DEVICE_DATA_BYTES", "1")
    lazy = engine_datasets.device_data(chunked, "cpu")
    assert lazy.lazy and isinstance(lazy._ids, ChunkedIds) and lazy.y.dtype.itemsize == 1
    ids = eager.sample_ids[::7][::-1].copy()
    pos = lazy.rows(ids)
    assert pos.dtype.itemsize == 4 and np.array_equal(pos.numpy(), eager.rows(ids).numpy())
    assert np.array_equal(lazy.x[pos].numpy(), eager.x[pos].numpy())
    assert np.array_equal(lazy.labels(pos).numpy(), eager.labels(pos).numpy())
    assert np.array_equal(lazy.sample_ids, eager.sample_ids)
    assert [engine_datasets.label_dtype(n).itemsize for n in (2, 128, 129, 1000)] == [1, 1, 2, 2]


def test_the_classes_trained_on_are_counted_chunk_by_chunk(chunked):
    whole = chunked.load_arrays()
    assert np.array_equal(verification.trained_classes(chunked), np.unique(whole.y))
    few = whole.sample_ids[np.isin(whole.y, [2, 7])][::-3]  # unsorted, two classes only
    assert verification.trained_classes(chunked, few).tolist() == [2, 7]
    assert verification.trained_classes(chunked, np.empty(0, np.int64)).tolist() == []


def test_retain_rows_read_only_their_chunks_rows(chunked):
    whole = chunked.load_arrays()
    ids = np.sort(np.concatenate([whole.sample_ids[::97], [10**9]]))
    rows = verification.held_rows(chunked, ids, "cpu")
    at = np.searchsorted(whole.sample_ids, rows.ids)
    assert np.array_equal(rows.ids, whole.sample_ids[::97]) and np.array_equal(rows.y, whole.y[at])
    assert rows.x.shape == (len(at), *whole.x.shape[1:])


def test_ids_and_owner_codes_are_int32_where_they_fit(chunked):
    ids, codes, names = chunked.owner_codes()
    held = chunked.sample_ids()
    assert ids.dtype == np.int32 and held.dtype == np.int32
    assert np.array_equal(np.sort(ids), held) and np.array_equal(held, chunked.load_arrays().sample_ids)
    assert len(codes) == len(ids) and codes.max() == len(names) - 1


def test_a_large_id_list_is_memory_mapped_and_its_digest_checked(engine):
    store = engine.store
    big = np.arange(0, 3 * engine_ids.MAP_BYTES // 8 * 2, 2, dtype=np.int32)  # int32 in, int64 stored
    key = engine_ids.put_ids(store, big[::-1])
    got = engine_ids.get_ids(store, key)
    assert isinstance(getattr(got.base, "obj", got.base), mmap.mmap) and got.dtype == np.dtype("<i8")
    assert np.array_equal(got, big) and not got.flags.writeable
    assert np.array_equal(engine_ids.get_ids(store, engine_ids.put_ids(store, big[:5])), big[:5])  # small: read
    path = engine_ids._local_blob(store, key)
    data = bytearray(path.read_bytes())
    data[8] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupt):
        engine_ids.get_ids(store, key)


def test_lethe_import_never_loads_torch(tmp_path):
    """An import needs no torch: in a 512 MiB worker that is the difference between
    fitting and not (an idle process with torch's CUDA build holds 276 MiB)."""
    csv = tmp_path / "t.csv"
    csv.write_text("owner,a,b,label\n" + "".join(f"o{i % 7},{i},{i * 0.5},{i % 2}\n" for i in range(60)))
    code = ("import sys; from app.cli import main; "
            f"rc = main(['--data-dir', {str(tmp_path / 'data')!r}, '--quiet', 'import', 't', '--source', 'table', "
            f"'--path', {str(csv)!r}, '--option', 'label_column=label', '--option', 'owner_column=owner']); "
            "assert rc == 0, rc; print(sorted(m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
