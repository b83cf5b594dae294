"""The whole deletion path in-process: a request completes with a new version that excludes the owner, and requests are coalesced."""
from __future__ import annotations

from tests.service_helpers import A, C, an_owner, run_worker_inline


def test_deletion_completes_and_new_version_excludes_the_owner(ready):
    owner = an_owner(ready)
    rid = ready.post("/v1/deletion-requests", json={"owner_id": owner}, headers=C).json()["id"]
    run_worker_inline(ready.app_)
    req = ready.get(f"/v1/deletion-requests/{rid}", headers=C).json()
    assert req["status"] == "completed", req
    (outcome,) = req["outcomes"]
    assert outcome["version"] == 2 and outcome["method"] == "exact"
    version = ready.get("/v1/models/m/versions/2", headers=C).json()
    assert version["parent"] == 1 and rid in version["requests"]
    lineage = ready.get(f"/v1/owners/{owner}", headers=A).json()
    assert lineage["datasets"][0]["remaining_samples"] == 0
    assert lineage["models"][0]["versions_trained_on_owner"] == [1]
    assert lineage["models"][0]["latest_excludes_owner"] is True


def test_requests_for_one_model_are_coalesced_into_one_pass(ready):
    owners = [o["owner_id"] for o in ready.get("/v1/datasets/digits/owners?limit=3", headers=A).json()["owners"]]
    ids = [ready.post("/v1/deletion-requests", json={"owner_id": o}, headers=C).json()["id"] for o in owners]
    run_worker_inline(ready.app_)
    versions = {ready.get(f"/v1/deletion-requests/{i}", headers=C).json()["outcomes"][0]["version"] for i in ids}
    assert versions == {2}
    assert sorted(ready.get("/v1/models/m/versions/2", headers=C).json()["requests"]) == sorted(ids)
