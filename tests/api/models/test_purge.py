"""Purge: what a revoked version learned leaves the store (mark and sweep over the
version records); live versions keep every byte, verify and predict as before."""
from __future__ import annotations

import json

import numpy as np

from app.cli import main as lethe
from app.db import make_sessionmaker
from app.engine import build_engine
from app.models.purge import purge
from app.models.service import EnsembleCache
from tests.service_helpers import A, C, an_owner, change_settings, run_worker_inline
from workers.engine.purge import learned

X = np.random.default_rng(0).uniform(0, 16, (5, 64)).round().tolist()



def _delete(client, owner: str) -> None:
    rid = client.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    run_worker_inline(client.app_)
    assert client.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "completed"


def test_gc_deletes_what_the_revoked_version_learned_and_nothing_live(ready, capsys):
    change_settings(ready, purge_after_hours=1.0)  # keep v1's artifacts for now
    _delete(ready, an_owner(ready))
    engine = build_engine(ready.app_.state.settings)
    v1, v2 = engine.version("m", 1), engine.version("m", 2)
    only_v1 = learned(v1) - set(v2["artifacts"].values())
    shared = learned(v1) & set(v2["artifacts"].values())  # the untouched shard's checkpoints
    assert only_v1 and shared and all(engine.store.has_blob(d) for d in only_v1)
    before = ready.post("/v1/models/m/versions/2/predict", json={"inputs": X}, headers=C).json()
    settings = ready.app_.state.settings
    assert purge(make_sessionmaker(settings.db_url), engine, settings, actor="test").purged == []  # not due: 1 h
    data_dir = str(settings.data_dir)  # the CLI's own settings purge at once (the default, 0 h)
    assert lethe(["--data-dir", data_dir, "--json", "gc", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert [p["version"] for p in dry["purged"]] == [1] and all(engine.store.has_blob(d) for d in only_v1)
    assert lethe(["--data-dir", data_dir, "gc"]) == 0
    assert f"freed {dry['freed_bytes']} bytes in 1 revoked versions" in capsys.readouterr().out
    report = engine.store.purge("m", 1)
    assert report["bytes"] == dry["freed_bytes"] > 0 and set(report["digests"]) == only_v1
    assert not any(engine.store.has_blob(d) for d in only_v1)
    assert all(engine.store.has_blob(d) for d in shared | set(v2["artifacts"].values()))

    ready.app_.state.ensembles = EnsembleCache()  # load v2 again, from the store as it is now
    after = ready.post("/v1/models/m/versions/2/predict", json={"inputs": X}, headers=C).json()
    assert after == before  # bit-identical: the live version kept every byte
    assert engine.verify("m", 2)["ok"] is True
    v1_report = engine.verify("m", 1)
    assert v1_report["ok"] is True and v1_report["purged"]["bytes"] == report["bytes"]
    assert ready.get("/v1/models/m/versions/1", headers=C).json()["purged_at"] is not None
    (event,) = [e for e in ready.get("/v1/audit?model=m", headers=A).json()["events"] if e["kind"] == "store.purged"]
    assert event["version"] == 1 and event["data"]["bytes"] == report["bytes"]
    assert lethe(["--data-dir", data_dir, "gc"]) == 0 and "freed 0 bytes" in capsys.readouterr().out  # once


def test_a_deletion_purges_the_revoked_version_at_once_by_default(ready):
    _delete(ready, an_owner(ready))
    engine = build_engine(ready.app_.state.settings)
    only_v1 = learned(engine.version("m", 1)) - set(engine.version("m", 2)["artifacts"].values())
    assert only_v1 and not any(engine.store.has_blob(d) for d in only_v1)
    assert engine.store.purge("m", 1) is not None and engine.verify("m", 1)["ok"] is True


def test_a_running_jobs_blobs_are_never_swept(ready):
    change_settings(ready, purge_after_hours=1.0)
    _delete(ready, an_owner(ready))
    engine = build_engine(ready.app_.state.settings)
    doomed = learned(engine.version("m", 1)) - set(engine.version("m", 2)["artifacts"].values())
    held = sorted(doomed)[:1]
    report = engine.purge(keep=set(held))
    assert engine.store.has_blob(held[0]) and held[0] not in report.purged[0]["digests"]


def test_a_sweep_that_died_after_the_store_purge_is_recorded_by_the_next(ready):
    """The store's purge record was written but the database was not (a crash in between):
    the next sweep marks the version purged and audits it, once."""
    change_settings(ready, purge_after_hours=1.0)
    _delete(ready, an_owner(ready))
    engine = build_engine(ready.app_.state.settings)
    assert [p["version"] for p in engine.purge().purged] == [1]  # the store side only
    assert ready.get("/v1/models/m/versions/1", headers=C).json()["purged_at"] is None
    settings = ready.app_.state.settings
    for _ in range(2):
        assert purge(make_sessionmaker(settings.db_url), engine, settings, actor="test").purged == []
    assert ready.get("/v1/models/m/versions/1", headers=C).json()["purged_at"] is not None
    events = [e for e in ready.get("/v1/audit?model=m", headers=A).json()["events"] if e["kind"] == "store.purged"]
    assert [e["version"] for e in events] == [1] and events[0]["data"]["bytes"] == engine.store.purge("m", 1)["bytes"]
