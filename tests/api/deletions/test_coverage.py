"""Forgotten everywhere: a request naming one model still covers every model trained on
the dataset whose raw rows it erases; each outcome says which method produced its
version; after completion the owner's raw rows are in no file under the data directory."""
from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

from app.engine import build_engine
from tests.service_helpers import A, C, TINY_MODEL, an_owner, change_settings, run_worker_inline


def test_a_request_naming_one_model_covers_every_model_on_its_dataset(ready):
    assert ready.post("/v1/models", json={**TINY_MODEL, "name": "m2"}, headers=A).status_code == 202
    run_worker_inline(ready.app_)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready), "models": ["m"]},
                     headers=C).json()["id"]
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed" and req["models"] == ["m", "m2"]
    assert all(o["version"] == 2 and o["published_method"] == "exact" for o in req["outcomes"])
    for model in ("m", "m2"):  # neither keeps serving a version trained on the owner
        assert ready.get(f"/v1/models/{model}/versions/1", headers=C).json()["status"] == "revoked"
    (accepted,) = [e for e in ready.get(f"/v1/audit?request_id={rid}", headers=A).json()["events"]
                   if e["kind"] == "request.accepted"]
    assert accepted["data"]["models_added"] == ["m2"] and "erases" in accepted["data"]["why_added"]


def test_an_outcome_shows_the_method_asked_for_and_the_one_that_produced_the_version(ready):
    change_settings(ready, gate_ua_tolerance=-1.0, gate_mia_tolerance=-1.0, gate_max_ta_drop=-1.0, gate_beat_no_op=False)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready), "method": "auto"},
                     headers=C).json()["id"]
    run_worker_inline(ready.app_)
    (outcome,) = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["outcomes"]
    assert outcome["method"] == "auto" and outcome["published_method"] == "exact"  # the gate fell back


def _arrays(path: Path):
    """Every array in ``path`` if it is an archive or array file Lethe writes."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if data[:4] == b"PK\x03\x04":  # .npz (and zips)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, zipfile.BadZipFile, OSError):
            return {}
    return {}


def test_after_completion_the_owners_raw_rows_are_in_no_file(ready):
    owner = an_owner(ready)
    engine = build_engine(ready.app_.state.settings)
    ds = engine.dataset("digits")
    arrays = ds.load_arrays()
    mine = np.isin(arrays.sample_ids, ds.owner_sample_ids(owner))
    rows = arrays.x[mine].reshape(mine.sum(), -1)
    others = {r.tobytes() for r in arrays.x[~mine].reshape((~mine).sum(), -1)}
    unique = [r for r in rows if r.tobytes() not in others]  # digits has a few identical images
    assert len(unique) > 0
    rid = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "completed"
    scanned = 0
    for path in Path(ready.app_.state.settings.data_dir).rglob("*"):
        if not path.is_file():
            continue
        scanned += 1
        raw = path.read_bytes()
        for row in unique:  # as stored (uint8) and as the models see it (float32, scaled)
            for form in (row.tobytes(), (row.astype(np.float32) / 16).astype(np.float32).tobytes()):
                assert form not in raw, f"{path} holds a row of the erased owner"
        for name, array in _arrays(path).items():
            if array.ndim >= 2 and array.shape[0]:
                flat = {r.tobytes() for r in np.ascontiguousarray(array).reshape(array.shape[0], -1)}
                assert not any(r.tobytes() in flat for r in unique), f"{path}:{name} holds a row of the erased owner"
    assert scanned > 20
