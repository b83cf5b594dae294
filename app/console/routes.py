"""``/console``: the admin console's pages. Each route reads the session cookie, calls
the views (or a service, for the writes) and renders a template; writes check the CSRF
token. Not in the OpenAPI schema: the API is ``/v1``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app import logs
from app.audit import anchors
from app.callers import Caller
from app.certificates import service as certificates
from app.console import auth, views
from app.deletions import service as deletions
from app.deletions.schemas import DELETION_METHODS, DeletionCreate
from app.deps import EngineDep, SessionDep
from app.errors import ApiError
from app.statuses import RequestStatus

HERE = Path(__file__).parent
router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
# Every script and style is the console's own (htmx is vendored): nothing from elsewhere runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class NotSignedIn(Exception):
    """Answered with a redirect to the sign-in page."""


def install(app: FastAPI) -> None:
    app.state.console_secret = auth.secret_from(app.state.signing_key.private)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.exception_handler(NotSignedIn)
    async def _sign_in(request: Request, _: NotSignedIn):
        if request.headers.get("hx-request"):  # htmx: a full-page redirect, not a fragment
            return Response(status_code=204, headers={"HX-Redirect": "/console/login"})
        return RedirectResponse("/console/login", status_code=303)


class Admin:
    """The signed-in admin: the caller writes are attributed to, and the CSRF token."""

    def __init__(self, caller: Caller, csrf: str):
        self.caller, self.csrf = caller, csrf


def signed_in(request: Request) -> Admin:
    secret = request.app.state.console_secret
    cookie = request.cookies.get(auth.COOKIE)
    digest = auth.read(secret, cookie)
    if digest is None or request.app.state.key_roles.get(digest) != "admin":
        raise NotSignedIn()
    return Admin(Caller(key_id=digest[:16], role="admin"), auth.csrf_token(secret, cookie))


AdminDep = Annotated[Admin, Depends(signed_in)]


def check_csrf(request: Request, admin: AdminDep, csrf: Annotated[str | None, Form()] = None) -> Admin:
    given = csrf or request.headers.get("x-csrf-token")
    if not auth.csrf_ok(request.app.state.console_secret, request.cookies.get(auth.COOKIE), given):
        raise ApiError(403, "csrf_failed", "the form's CSRF token is missing or not this session's")
    return admin


WriterDep = Annotated[Admin, Depends(check_csrf)]


def page(request: Request, name: str, admin: Admin | None, status_code: int = 200, **context) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, {"admin": admin, **context}, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("")
def home() -> RedirectResponse:
    return RedirectResponse("/console/requests", status_code=303)


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", None)


@router.post("/login")
def login(request: Request, key: Annotated[str, Form(max_length=512)] = "") -> Response:
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    role = request.app.state.key_roles.get(digest)
    if role != "admin":
        message = "that key is not an admin key" if role else "unknown key"
        return page(request, "login.html", None, status_code=401, error=message)
    response = RedirectResponse("/console/requests", status_code=303)
    response.set_cookie(auth.COOKIE, auth.issue(request.app.state.console_secret, digest), max_age=auth.MAX_AGE,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/console")
    return response


@router.post("/logout")
def logout(_: WriterDep) -> RedirectResponse:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/console")
    return response


@router.get("/requests")
def requests_page(request: Request, session: SessionDep, admin: AdminDep, status: str = "", owner_id: str = "",
                  overdue: bool = False) -> HTMLResponse:
    return _requests(request, session, admin, status=status if status in set(RequestStatus) else "",
                     owner_id=owner_id, overdue=overdue)


def _requests(request: Request, session, admin: Admin, *, status: str = "", owner_id: str = "",
              overdue: bool = False, status_code: int = 200, error: str | None = None) -> HTMLResponse:
    """The requests page, filtered; with ``error`` shown above it (a refused submission)."""
    rows = views.requests(session, status=status, owner_id=owner_id.strip(), overdue=overdue)
    return page(request, "requests.html", admin, status_code=status_code, rows=rows, status=status,
                owner_id=owner_id, overdue=overdue, statuses=[s.value for s in RequestStatus],
                methods=DELETION_METHODS, error=error)


@router.post("/requests")
async def submit(request: Request, admin: WriterDep, owner_id: Annotated[str, Form()] = "",
                 models: Annotated[str, Form()] = "", method: Annotated[str, Form()] = "exact",
                 reason: Annotated[str, Form()] = "") -> Response:
    """A deletion request from the console, accepted through the same intake as the API's."""
    try:
        body = DeletionCreate.model_validate({
            "owner_id": owner_id.strip(), "method": method, "reason": reason.strip() or None,
            "models": [m.strip() for m in models.split(",") if m.strip()] or None})
        sub = deletions.Submission(admin.caller, body, None, trace_id=logs.request_id())
        accepted = await request.app.state.intake.submit(sub)
    except ApiError as exc:
        return _requests_error(request, admin, exc.status, f"{exc.code}: {exc.detail}")
    except ValueError as exc:  # pydantic's ValidationError
        return _requests_error(request, admin, 422, f"invalid_request: {str(exc).splitlines()[-1].strip()}")
    return RedirectResponse(f"/console/requests/{accepted.request.id}", status_code=303)


def _requests_error(request: Request, admin: Admin, status: int, message: str) -> HTMLResponse:
    from app.db import session_scope

    with session_scope(request.app.state.sessionmaker) as session:
        return _requests(request, session, admin, status_code=status, error=message)


@router.get("/requests/{request_id}")
def request_page(request: Request, request_id: str, session: SessionDep, admin: AdminDep) -> HTMLResponse:
    return page(request, "request.html", admin, **views.request_detail(session, request_id))


@router.get("/requests/{request_id}/certificate")
def certificate(request: Request, request_id: str, session: SessionDep, engine: EngineDep,
                admin: AdminDep) -> Response:
    claims = certificates.payload(session=session, engine=engine, caller=admin.caller, request_id=request_id)
    token = certificates.sign(claims, request.app.state.signing_key)
    return Response(json.dumps({"certificate": token}) + "\n", media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="certificate-{request_id}.json"', "Cache-Control": "no-store"})


@router.get("/models")
def models_page(request: Request, session: SessionDep, admin: AdminDep) -> HTMLResponse:
    return page(request, "models.html", admin, models=views.models_page(session))


@router.get("/models/{name}")
def model_page(request: Request, name: str, session: SessionDep, admin: AdminDep) -> HTMLResponse:
    return page(request, "model.html", admin, **views.model_detail(session, name))


@router.get("/models/{name}/job")
def model_job(request: Request, name: str, session: SessionDep, admin: AdminDep) -> HTMLResponse:
    """The live job's progress, a fragment the model pages poll (htmx) while one runs."""
    row, job = views.model_job(session, name)
    return page(request, "_job.html", admin, row=row, job=job)


@router.get("/datasets")
def datasets_page(request: Request, session: SessionDep, engine: EngineDep, admin: AdminDep) -> HTMLResponse:
    return page(request, "datasets.html", admin, datasets=views.datasets_page(session, engine))


@router.get("/audit")
def audit_page(request: Request, session: SessionDep, admin: AdminDep, request_id: str = "", model: str = "",
               kind: str = "", cursor: int = 0) -> HTMLResponse:
    events, next_cursor = views.audit_page(session, request_id=request_id.strip(), model=model.strip(),
                                           kind=kind.strip(), after=max(0, min(cursor, 2**31 - 1)))
    return page(request, "audit.html", admin, events=events, next_cursor=next_cursor, request_id=request_id,
                model=model, kind=kind)


@router.post("/audit/verify")
def verify_chain(request: Request, session: SessionDep, engine: EngineDep, admin: WriterDep) -> HTMLResponse:
    """Recompute the chain and hold it against its latest anchor: a fragment for htmx."""
    report = anchors.verify(session, engine.store, request.app.state.signing_key)
    return page(request, "_chain.html", admin, report=report)
