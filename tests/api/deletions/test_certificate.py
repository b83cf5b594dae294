"""Deletion certificates: a JWS (EdDSA) any JOSE library verifies against the published
keys, holding what was erased, which versions replaced and revoked which, and the audit
chain's head; refused before completion and to other callers."""
from __future__ import annotations

import hashlib
import json

import jwt

from app.certificates import keys
from app.cli import main as lethe
from tests.service_helpers import A, C, C2, an_owner, run_worker_inline


def _jwk_set(client) -> jwt.PyJWKSet:
    return jwt.PyJWKSet.from_dict(client.get("/.well-known/jwks.json").json())


def _completed(client) -> tuple[str, str]:
    owner = an_owner(client)
    rid = client.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    r = client.get(f"/v1/deletion-requests/{rid}/certificate", headers=C)
    assert r.status_code == 409 and r.json()["code"] == "request_not_completed"
    run_worker_inline(client.app_)
    return rid, owner


def test_the_certificate_is_a_standard_jws_of_what_was_erased_and_replaced(ready):
    rid, owner = _completed(ready)
    token = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C).json()["certificate"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"]
    (key,) = [k for k in _jwk_set(ready).keys if k.key_id == header["kid"]]
    claims = jwt.decode(token, key.key, algorithms=["EdDSA"])  # PyJWT, as any verifier would
    assert claims["request_id"] == rid and claims["owner_id_sha256"] == hashlib.sha256(owner.encode()).hexdigest()
    assert owner not in json.dumps(claims)
    assert claims["due_at"] > claims["accepted_at"] and claims["completed_at"]
    (dataset,) = claims["datasets"]
    assert dataset["dataset"] == "digits" and dataset["erasures"][0]["sample_count"] > 0
    (model,) = claims["models"]
    v2 = ready.get("/v1/models/m/versions/2", headers=C).json()
    assert model["version"] == 2 and model["record_sha256"] == v2["record_sha256"]
    assert model["manifest_digest"] == v2["manifest_digest"] and model["exact"] is True
    assert model["method_requested"] == model["method"] == "exact" and model["metrics"]["forget_size"] > 0
    assert [r["version"] for r in model["revoked_versions"]] == [1] and model["revoked_versions"][0]["purged_at"]
    (done,) = [e for e in ready.get(f"/v1/audit?request_id={rid}", headers=A).json()["events"]
               if e["kind"] == "request.completed"]
    assert claims["audit"] == {"seq": done["seq"], "head_hash": done["hash"]}


def test_another_callers_certificate_is_not_found(ready):
    rid, _ = _completed(ready)
    r = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C2)
    assert r.status_code == 404 and r.json()["code"] == "request_not_found"
    assert ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=A).status_code == 200


def test_the_cli_verifies_a_certificate_offline_and_rejects_a_forged_one(ready, tmp_path, capsys):
    rid, _ = _completed(ready)
    cert = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C).json()
    (tmp_path / "cert.json").write_text(json.dumps(cert))
    (tmp_path / "jwks.json").write_text(json.dumps(ready.get("/.well-known/jwks.json").json()))
    data_dir = str(ready.app_.state.settings.data_dir)
    assert lethe(["--data-dir", data_dir, "certificate", "verify", str(tmp_path / "cert.json"),
                  "--jwks", str(tmp_path / "jwks.json")]) == 0
    assert "certificate OK" in capsys.readouterr().out
    head, body, sig = cert["certificate"].split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["models"][0]["version"] = 1  # claim the old version was the new one
    forged = ".".join([head, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(), sig])
    (tmp_path / "forged.txt").write_text(forged)
    assert lethe(["--data-dir", data_dir, "certificate", "verify", str(tmp_path / "forged.txt")]) == 1
    out = capsys.readouterr().out
    assert "certificate INVALID" in out and "Signature verification failed" in out


def test_old_keys_stay_published_after_a_rotation(ready, tmp_path):
    rid, _ = _completed(ready)
    token = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C).json()["certificate"]
    new = keys.load(tmp_path / "new-key.pem", create=True)
    with ready.app_.state.sessionmaker() as s:
        keys.publish(s, new)
        s.commit()
    ready.app_.state.signing_key = new
    kids = [k.key_id for k in _jwk_set(ready).keys]
    old_kid = jwt.get_unverified_header(token)["kid"]
    assert set(kids) == {new.kid, old_kid} and new.kid != old_kid
    key = {k.key_id: k for k in _jwk_set(ready).keys}[old_kid]
    assert jwt.decode(token, key.key, algorithms=["EdDSA"])["request_id"] == rid
    fresh = ready.get(f"/v1/deletion-requests/{rid}/certificate", headers=C).json()["certificate"]
    assert jwt.get_unverified_header(fresh)["kid"] == new.kid
