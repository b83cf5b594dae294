"""Typed dependencies of the API edge: the request's unit of work, the authenticated
caller, the settings and the unlearning engine."""
from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.callers import Caller
from app.db import session_scope
from app.errors import ApiError
from app.outbox import has_outbox_rows
from app.settings import Settings
from workers.engine.engine import Engine


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's unit of work: committed when the route returns, rolled back if it
    raises. The commit runs before the response is sent, so a 2xx is only ever sent for
    work that is in the database; after it, the outbox relay is poked if the work queued
    a task.

    The dependencies here are ``async`` because they do no I/O worth a thread (a session
    connects lazily, in the route's thread): each sync dependency would cost a hop
    through the thread pool on every request.
    """
    with session_scope(request.app.state.sessionmaker) as session:
        yield session
    if has_outbox_rows(session):
        request.app.state.poke_relay()


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_unlearning_engine(request: Request) -> Engine:
    return request.app.state.engine


bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer <key>`")


async def get_caller(request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    if credentials is None or not credentials.credentials.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    digest = hashlib.sha256(credentials.credentials.strip().encode()).hexdigest()
    role = request.app.state.key_roles.get(digest)
    if role is None:
        raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return Caller(key_id=digest[:16], role=role)


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise ApiError(403, "forbidden", "this needs an admin API key")
    return caller


# scope="function": the commit runs when the route returns, before the response is sent.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_unlearning_engine)]
