"""Revocation and aliases: a version trained on an erased owner is gone (410) for every
caller once the version that removed the owner is published; its record stays readable;
aliases never point at it."""
from __future__ import annotations

import numpy as np

from app.cli import main as lethe
from tests.service_helpers import A, C, an_owner, change_settings, run_worker_inline

X = np.zeros((2, 64)).tolist()


def _delete(client, owner: str, method: str = "exact") -> dict:
    rid = client.post("/v1/deletion-requests", json={"owner_id": owner, "method": method}, headers=C).json()["id"]
    run_worker_inline(client.app_)
    done = client.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert done["status"] == "completed", done
    return done


def test_the_version_trained_on_an_erased_owner_is_revoked_for_every_caller(ready):
    done = _delete(ready, an_owner(ready))
    for headers in (C, A):
        r = ready.post("/v1/models/m/versions/1/predict", json={"inputs": X}, headers=headers)
        assert r.status_code == 410 and r.json()["code"] == "version_revoked" and r.json()["replaced_by"] == 2
        r = ready.get("/v1/models/m/versions/1/artifact", headers=headers)
        assert r.status_code == 410 and r.json()["replaced_by"] == 2
    v1 = ready.get("/v1/models/m/versions/1", headers=C).json()  # the record stays readable
    assert v1["status"] == "revoked" and v1["replaced_by"] == 2 and v1["revoked_for"] == [done["id"]]
    assert v1["revoked_at"] is not None
    assert ready.post("/v1/models/m/versions/2/predict", json={"inputs": X}, headers=C).status_code == 200
    assert ready.get("/v1/models/m/versions/latest/artifact", headers=C).status_code == 200
    listed = {v["version"]: v["status"] for v in ready.get("/v1/models/m/versions", headers=C).json()}
    assert listed == {1: "revoked", 2: "published"}
    events = ready.get("/v1/audit?model=m", headers=A).json()["events"]
    (revoked,) = [e for e in events if e["kind"] == "model.version_revoked"]
    assert revoked["version"] == 1 and revoked["data"] == {"replaced_by": 2, "requests": [done["id"]]}
    assert ready.get("/v1/audit/verify", headers=A).json()["ok"] is True


def test_verify_says_a_revoked_version_is_revoked_and_still_checks_out(ready, capsys):
    _delete(ready, an_owner(ready))
    data_dir = str(ready.app_.state.settings.data_dir)
    assert lethe(["--data-dir", data_dir, "verify", "m", "1"]) == 0
    out = capsys.readouterr().out
    assert "m v1: OK" in out and "REVOKED" in out and "replaced by v2" in out
    assert lethe(["--data-dir", data_dir, "--json", "verify", "m", "2"]) == 0
    assert '"revoked": null' in capsys.readouterr().out


def test_an_alias_moves_off_a_revoked_version_to_the_one_that_replaced_it(ready):
    r = ready.put("/v1/models/m/aliases/production", json={"version": 1}, headers=A)
    assert r.status_code == 200 and r.json()["version"] == 1
    assert ready.post("/v1/models/m/versions/production/predict", json={"inputs": X}, headers=C).json()["version"] == 1
    _delete(ready, an_owner(ready))
    assert ready.get("/v1/models/m/aliases", headers=C).json()[0]["version"] == 2
    p = ready.post("/v1/models/m/versions/production/predict", json={"inputs": X}, headers=C)
    assert p.status_code == 200 and p.json()["version"] == 2
    assert ready.get("/v1/models/m/versions/production", headers=C).json()["version"] == 2
    moved = [e for e in ready.get("/v1/audit?model=m", headers=A).json()["events"] if e["kind"] == "alias.moved"]
    assert [e["data"] for e in moved] == [{"alias": "production", "from": 1, "to": 2, "reason": "version_revoked"}]


def test_alias_mistakes_are_refused_with_a_code(ready):
    for name in ("7", "latest", "Prod", "-x"):
        r = ready.put(f"/v1/models/m/aliases/{name}", json={"version": 1}, headers=A)
        assert r.status_code == 422 and r.json()["code"] == "invalid_alias", name
    r = ready.put("/v1/models/m/aliases/staging", json={"version": 9}, headers=A)
    assert r.status_code == 404 and r.json()["code"] == "version_not_found"
    assert ready.put("/v1/models/m/aliases/staging", json={"version": 1}, headers=C).status_code == 403
    _delete(ready, an_owner(ready))
    r = ready.put("/v1/models/m/aliases/staging", json={"version": 1}, headers=A)
    assert r.status_code == 409 and r.json()["code"] == "version_revoked" and r.json()["replaced_by"] == 2
    r = ready.get("/v1/models/m/versions/staging", headers=C)
    assert r.status_code == 422 and r.json()["code"] == "invalid_version"  # no such alias
    assert ready.delete("/v1/models/m/aliases/staging", headers=A).json()["code"] == "alias_not_found"
    assert ready.put("/v1/models/m/aliases/staging", json={"version": 2}, headers=A).status_code == 200
    assert ready.delete("/v1/models/m/aliases/staging", headers=A).status_code == 204
    assert ready.get("/v1/models/m/aliases", headers=C).json() == []


def test_an_approximate_version_is_not_revoked_for_what_it_unlearned(ready):
    change_settings(ready, gate_ua_tolerance=1.0, gate_mia_tolerance=1.0, gate_max_ta_drop=1.0, gate_beat_no_op=False)
    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=2", headers=A).json()["owners"]]
    _delete(ready, owners[0], method="ssd")
    v2 = ready.get("/v1/models/m/versions/2", headers=C).json()
    assert v2["exact"] is False and v2["status"] == "published"
    assert ready.get("/v1/models/m/versions/1", headers=C).json()["status"] == "revoked"
    _delete(ready, owners[1])  # v2 still holds this owner's rows: now it goes too
    assert ready.get("/v1/models/m/versions/2", headers=C).json()["replaced_by"] == 3
    assert ready.get("/v1/models/m/versions/1", headers=C).json()["replaced_by"] == 2  # its first revocation stays


def test_a_client_sees_removed_owner_ids_only_for_its_own_requests(ready):
    import io
    import json as _json
    import zipfile

    from tests.service_helpers import C2

    owner = an_owner(ready)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    assert ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()["status"] == "completed"

    def owners(headers):
        return ready.get("/v1/models/m/versions/2", headers=headers).json()["removed"]["owners"]

    assert [o["owner_id"] for o in owners(A)] == [owner]  # the admin
    assert [o["owner_id"] for o in owners(C)] == [owner]  # the client that filed it
    (other,) = owners(C2)  # another client: the count and digest, never the id
    assert other["owner_id"] is None and other["redacted"] is True and other["sample_count"] > 0
    zipped = ready.get("/v1/models/m/versions/2/artifact", headers=C2).content
    record = zipfile.ZipFile(io.BytesIO(zipped)).read("version.json")
    assert owner.encode() not in record and _json.loads(record)["removed"]["owners"][0]["owner_id"] is None
    # The record's sha256 covers the owner ids: a client shown a redacted record gets
    # none, as it could check guessed ids against it.
    assert ready.get("/v1/models/m/versions/2", headers=C2).json()["record_sha256"] is None
    assert "x-lethe-record-sha256" not in ready.get("/v1/models/m/versions/2/artifact", headers=C2).headers
    assert len(ready.get("/v1/models/m/versions/2", headers=C).json()["record_sha256"]) == 64
    assert ready.get("/v1/models/m/versions/2", headers=A).json()["record_sha256"]


def test_a_certificate_carries_no_record_sha256_over_another_callers_owners(ready):
    """Two clients' requests coalesced into one version: each certificate omits the
    record's sha256 (it covers the other client's owner id)."""
    from tests.service_helpers import C2

    mine, theirs = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=2", headers=A).json()["owners"]]
    rid = ready.post("/v1/deletion-requests", json={"owner_id": mine}, headers=C).json()["id"]
    ready.post("/v1/deletion-requests", json={"owner_id": theirs}, headers=C2)
    run_worker_inline(ready.app_)
    assert ready.get("/v1/models/m/versions/2", headers=A).json()["requests"].__len__() == 2
    import jwt

    token = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C).json()["certificate"]
    (model,) = jwt.decode(token, options={"verify_signature": False})["models"]
    assert model["record_sha256"] is None and model["manifest_digest"]
