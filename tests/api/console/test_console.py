"""The admin console in-process: sign-in and its cookie, CSRF on writes, each page, a
deletion submitted from the console, the chain check. The browser test is in
tests/integration/test_console.py."""
from __future__ import annotations

import re

import pytest

from app.console import auth
from tests.service_helpers import ADMIN, CLIENT, C, an_owner, run_worker_inline


def sign_in(client, key=ADMIN):
    r = client.post("/console/login", data={"key": key}, follow_redirects=False)
    return r


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_pages_need_a_session_and_sign_in_takes_only_an_admin_key(client):
    for path in ("/console/requests", "/console/models", "/console/datasets", "/console/audit"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/login", path
    assert client.get("/console/requests", headers={"hx-request": "true"}).headers["hx-redirect"] == "/console/login"
    for key, why in ((CLIENT, "not an admin key"), ("nope", "unknown key"), ("", "unknown key")):
        r = sign_in(client, key)
        assert r.status_code == 401 and why in r.text and auth.COOKIE not in r.cookies
    r = sign_in(client)
    assert r.status_code == 303 and r.headers["location"] == "/console/requests"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert ADMIN not in cookie  # the key never leaves the server
    page = client.get("/console/requests")
    assert page.status_code == 200 and "Deletion requests" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"] and "cdn" not in page.text.lower()
    assert client.get("/console/static/htmx.min.js").status_code == 200


def test_a_forged_expired_or_other_processes_cookie_is_refused(client):
    secret = client.app_.state.console_secret
    import hashlib

    digest = hashlib.sha256(ADMIN.encode()).hexdigest()
    assert auth.read(secret, auth.issue(secret, digest)) == digest
    assert auth.read(secret, auth.issue(secret, digest, now=0)) is None  # expired
    assert auth.read(b"x" * 32, auth.issue(secret, digest)) is None  # another secret
    forged = auth.issue(secret, digest).split(".")[0] + ".AAAA"
    client.cookies.set(auth.COOKIE, forged, path="/console")
    assert client.get("/console/requests", follow_redirects=False).status_code == 303
    client_digest = hashlib.sha256(CLIENT.encode()).hexdigest()  # a signed cookie for a client key
    client.cookies.set(auth.COOKIE, auth.issue(secret, client_digest), path="/console")
    assert client.get("/console/requests", follow_redirects=False).status_code == 303


def test_writes_need_the_sessions_csrf_token(ready):
    sign_in(ready)
    page = ready.get("/console/requests").text
    owner = an_owner(ready)
    for token in (None, "wrong"):
        data = {"owner_id": owner, **({"csrf": token} if token else {})}
        r = ready.post("/console/requests", data=data, follow_redirects=False)
        assert r.status_code == 403 and r.json()["code"] == "csrf_failed"
    assert ready.get("/v1/deletion-requests", headers={"Authorization": f"Bearer {ADMIN}"}).json() == []
    r = ready.post("/console/requests", data={"owner_id": owner, "csrf": csrf_of(page), "reason": "asked by mail"},
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/requests/")


def test_a_deletion_from_the_console_is_listed_followed_and_certified(ready):
    sign_in(ready)
    owner = an_owner(ready)
    token = csrf_of(ready.get("/console/requests").text)
    r = ready.post("/console/requests", data={"owner_id": owner, "csrf": token, "method": "exact"},
                   follow_redirects=False)
    rid = r.headers["location"].rsplit("/", 1)[1]
    queued = ready.get(f"/console/requests/{rid}").text
    assert "queued" in queued and "Download the certificate" not in queued and "left)" in queued
    run_worker_inline(ready.app_)
    done = ready.get(f"/console/requests/{rid}").text
    assert 'id="request-status">completed' in done and "v2" in done and "request.completed" in done
    cert = ready.get(f"/console/requests/{rid}/certificate")
    assert cert.headers["content-disposition"].startswith("attachment") and cert.json()["certificate"].count(".") == 2
    listed = ready.get("/console/requests?status=completed").text
    assert rid[:8] in listed and owner in listed
    assert rid[:8] not in ready.get("/console/requests?status=failed").text
    assert rid[:8] in ready.get(f"/console/requests?owner_id={owner}").text
    # audit: the request's events, and the chain check (a write: CSRF in the header, as htmx sends it)
    assert "request.completed" in ready.get(f"/console/audit?request_id={rid}").text
    assert ready.post("/console/audit/verify").status_code == 403
    ok = ready.post("/console/audit/verify", headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and "chain OK" in ok.text


def test_bad_console_input_is_shown_not_raised(ready):
    sign_in(ready)
    token = csrf_of(ready.get("/console/requests").text)
    r = ready.post("/console/requests", data={"owner_id": "nobody-at-all", "csrf": token})
    assert r.status_code == 404 and "owner_not_found" in r.text and "Deletion requests" in r.text
    r = ready.post("/console/requests", data={"owner_id": "", "csrf": token})
    assert r.status_code == 422 and "invalid_request" in r.text
    r = ready.post("/console/requests", data={"owner_id": an_owner(ready), "csrf": token, "method": "bogus"})
    assert r.status_code == 422
    assert ready.get("/console/requests/not-a-request").json()["code"] == "request_not_found"
    assert ready.get("/console/models/nope").json()["code"] == "model_not_found"
    assert ready.get("/console/audit?cursor=-5").status_code == 200


def test_models_versions_charts_and_datasets(ready):
    ready.post("/v1/deletion-requests", json={"owner_id": an_owner(ready)}, headers=C)
    run_worker_inline(ready.app_)
    sign_in(ready)
    models = ready.get("/console/models").text
    assert "/console/models/m" in models and "ready" in models
    page = ready.get("/console/models/m").text
    assert page.count("<svg class=\"chart\"") == 4 and "TA over versions" in page
    charts = {m.group(1): m.group(0) for m in re.finditer(r'aria-label="([^"]+) over versions".*?</svg>', page, re.S)}
    assert charts["TA"].count("<circle") == 2  # v1 and v2 measured
    assert "<circle" in charts["UA"] and "<circle" in charts["RA"]  # the deletion's version was measured on its owner
    assert "v1" in page and "v2" in page and "revoked" in page  # v1 learned the owner: revoked by v2
    assert "approximate" not in page.split('id="versions"')[1]  # trained and retrained exactly
    job = ready.get("/console/models/m/job").text
    assert 'id="job-m"' in job and "hx-trigger" not in job  # a finished job is not polled
    datasets = ready.get("/console/datasets").text
    assert "digits" in datasets and re.search(r"<td>1</td></tr>", datasets)  # one owner erased


def test_signing_out_ends_the_session(ready):
    sign_in(ready)
    token = csrf_of(ready.get("/console/requests").text)
    r = ready.post("/console/logout", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert ready.get("/console/requests", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("path", ["/console/requests?status=%00", "/console/requests?owner_id=%00x"])
def test_unstorable_text_in_console_queries_is_a_4xx(ready, path):
    sign_in(ready)
    assert ready.get(path).status_code in (200, 422)
