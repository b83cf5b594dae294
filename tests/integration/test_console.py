"""The admin console in a real browser: Playwright drives Debian's headless Chromium
against the real stack (uvicorn, PostgreSQL, Redis, a Celery worker): sign in, list
requests, submit a deletion from the console and see it complete, download its
certificate, open the model's versions and charts, and verify the audit chain."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from lethe.client import Client
from tests.service_helpers import ADMIN

pytestmark = pytest.mark.integration


def _browser_path() -> str | None:
    for name in (os.environ.get("LETHE_TEST_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = _browser_path()
    if path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; or set LETHE_TEST_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def model(stack):
    with Client(stack.url, ADMIN, timeout=60) as admin:
        admin.import_dataset("digits", "digits")
        admin.create_model("console-mlp", "digits", architecture="mlp", strategy={"kind": "sisa", "shards": 2,
                                                                                   "slices": 1},
                           training={"epochs": 2, "batch_size": 64})
        assert admin.wait_model("console-mlp", timeout=180, every=0.3).status == "ready"
        yield admin, admin.owners("digits", limit=3)[1].owner_id


def test_an_admin_signs_in_submits_a_deletion_follows_it_and_checks_the_chain(stack, browser, model, tmp_path):
    admin, owner = model
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    errors, failed = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not m.text.startswith(
        "Failed to load resource") else None)  # script errors and CSP refusals; failed loads are below
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: failed.append((r.url.split(stack.url)[-1], r.status)) if r.status >= 400 else None)
    shots = os.environ.get("LETHE_TEST_SCREENSHOTS")  # a folder: keep a picture of each page looked at

    def look(name: str) -> None:
        if shots:
            page.screenshot(path=os.path.join(shots, f"console-{name}.png"), full_page=True)

    page.goto(f"{stack.url}/console")
    assert page.url.endswith("/console/login")
    page.fill("input[name=key]", "client-key-1")  # a client key is not enough
    page.click("button[type=submit]")
    assert "not an admin key" in page.text_content("p.error")
    page.fill("input[name=key]", ADMIN)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/requests")
    cookie = next(c for c in context.cookies() if c["name"] == "lethe_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it

    # A deletion from the console's form, followed on its page until it completes.
    page.fill("#new-request input[name=owner_id]", owner)
    page.fill("#new-request input[name=reason]", "asked at the front desk")
    page.click("#new-request button[type=submit]")
    page.wait_for_url("**/console/requests/*")
    request_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#request-status:text('completed')", timeout=120_000)  # htmx refreshes it
    assert "console-mlp" in page.text_content("#outcomes")
    look("request")
    with page.expect_download() as download:
        page.click("text=Download the certificate")
    token = json.loads(download.value.path().read_text())["certificate"]
    assert admin.verify_certificate(token)["request_id"] == request_id

    # The list, filtered.
    page.goto(f"{stack.url}/console/requests?status=completed")
    assert request_id[:8] in page.text_content("#requests")
    look("requests")
    page.goto(f"{stack.url}/console/requests?status=failed")
    assert request_id[:8] not in page.text_content("#requests")

    # The model: its versions (v1 revoked by v2) and four charts.
    page.goto(f"{stack.url}/console/models/console-mlp")
    assert page.locator("svg.chart").count() == 4
    versions = page.text_content("#versions")
    assert "v2" in versions and "revoked" in versions
    look("model")

    # The audit chain, checked with one button (htmx posts with the CSRF header).
    page.goto(f"{stack.url}/console/audit")
    page.click("#verify-chain")
    page.wait_for_selector("#chain-result")
    assert page.text_content("#chain-result").startswith("chain OK")
    look("audit")

    page.click("text=Sign out")
    page.wait_for_url("**/console/login")
    page.goto(f"{stack.url}/console/requests")
    assert page.url.endswith("/console/login")
    assert errors == [], errors  # no script or CSP error on any page
    assert failed == [("/console/login", 401)], failed  # only the client key's sign-in failed
    context.close()
