"""The evidence vault: a request's forget set sealed with AES-256-GCM under its own key,
readable only while the key is held, gone when the key is."""
from __future__ import annotations

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from workers.engine.vault import MAGIC, MemoryKeyring, Vault


def _rows(n=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    return ids, rng.integers(0, 255, size=(n, 8, 8), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int64)


def test_sealed_rows_read_back_and_the_file_holds_no_plaintext(tmp_path):
    vault = Vault(tmp_path / "evidence", MemoryKeyring())
    ids, x, y = _rows()
    assert vault.seal("req-1", "digits", ids, x, y)
    got = vault.rows("digits", ["req-1"])
    assert np.array_equal(got[0], ids) and np.array_equal(got[1], x) and np.array_equal(got[2], y)
    sealed = (tmp_path / "evidence" / "req-1" / "digits.sealed").read_bytes()
    assert sealed.startswith(MAGIC)
    for row in x:
        assert row.tobytes() not in sealed
    assert b"PK\x03\x04" not in sealed  # not an npz either
    assert vault.held() == ["req-1"]


def test_a_second_seal_keeps_the_first_copy(tmp_path):
    vault = Vault(tmp_path, MemoryKeyring())
    ids, x, y = _rows()
    vault.seal("r", "d", ids, x, y)
    vault.seal("r", "d", ids[:1], x[:1], y[:1])
    assert len(vault.rows("d", ["r"])[0]) == 5


def test_rows_of_several_requests_are_merged_once_per_sample(tmp_path):
    vault = Vault(tmp_path, MemoryKeyring())
    ids, x, y = _rows(6)
    vault.seal("a", "d", ids[:4], x[:4], y[:4])
    vault.seal("b", "d", ids[2:], x[2:], y[2:])  # the same owner in two requests
    got_ids, got_x, _ = vault.rows("d", ["a", "b", "never-sealed"])
    assert np.array_equal(got_ids, ids) and np.array_equal(got_x, x)
    assert len(vault.rows("other-dataset", ["a", "b"])[0]) == 0


def test_a_destroyed_key_makes_the_evidence_unreadable_and_unsealable(tmp_path):
    keyring = MemoryKeyring()
    vault = Vault(tmp_path, keyring)
    vault.seal("r", "d", *_rows())
    keyring.destroy("r")
    assert len(vault.rows("d", ["r"])[0]) == 0  # the file is still there, but nobody can open it
    assert vault.held() == ["r"]
    assert vault.seal("r", "d2", *_rows()) is False  # no new key for a destroyed request
    assert vault.sweep(["r"]) == ["r"] and vault.held() == []


def test_a_file_moved_to_another_request_or_tampered_with_does_not_open(tmp_path):
    keyring = MemoryKeyring()
    vault = Vault(tmp_path, keyring)
    vault.seal("r", "d", *_rows())
    path = tmp_path / "r" / "d.sealed"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidTag):
        vault.rows("d", ["r"])
    keyring.keys(["s"], create=True)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "d.sealed").write_bytes((tmp_path / "r" / "d.sealed").read_bytes())
    with pytest.raises(InvalidTag):  # another request's key, and the file names its request
        vault.rows("d", ["s"])


def test_sweep_deletes_only_the_dead_and_the_plaintext_of_older_releases(tmp_path):
    vault = Vault(tmp_path / "evidence", MemoryKeyring())
    vault.seal("live", "d", *_rows())
    vault.seal("dead", "d", *_rows())
    legacy = tmp_path / "scratch"
    legacy.mkdir()
    (legacy / "job.npz").write_bytes(b"plaintext rows")
    assert vault.sweep(["dead"]) == ["dead"]
    assert vault.held() == ["live"] and not legacy.exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 200])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError):
        Vault(tmp_path, MemoryKeyring()).seal(name, "d", *_rows())


def test_a_plan_saved_before_sealed_evidence_reads_its_requests_evidence():
    from workers.engine.plans import Plan

    legacy = {"model": "m", "kind": "approximate", "parent": 1, "job": "j", "spec": {"dataset": "digits"},
              "started_at": 0.0, "shards": [], "scratch": "j",
              "removal": {"owners": [], "requests": ["req-1"], "sample_count": 3, "sample_ids_digest": "x",
                          "sample_ids": "y"}}
    assert Plan.from_dict(legacy).evidence == ["req-1"]


def test_unlearning_without_a_request_records_none_and_leaves_no_evidence(digits_engine):
    from tests.conftest import FAST
    from workers.engine.sisa import Strategy

    digits_engine.train("m", dataset="digits", architecture="mlp", strategy=Strategy("sisa", 2, 1), config=FAST)
    owner = digits_engine.dataset("digits").owners(limit=1)[0][0]
    v = digits_engine.unlearn("m", [owner], mode="approximate", method="ga")
    assert v["removed"]["requests"] == [] and v["metrics"]["forget_size"] > 0
    assert all(e.reference is None for e in digits_engine.dataset("digits").erasures())
    assert digits_engine.vault.held() == []
