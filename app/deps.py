"""Typed dependencies: the database session and the authenticated caller."""
from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.settings import Settings
from workers.engine.engine import Engine


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for one request. Write routes commit it themselves before they answer,
    so a 2xx is only ever sent for work that is in the database; anything else rolls back.

    The dependencies here are ``async`` because they do no I/O worth a thread (a session
    connects lazily, in the route's thread): each sync dependency would cost a hop
    through the thread pool on every request.
    """
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


@dataclass(frozen=True)
class Caller:
    key_id: str  # sha256 prefix of the API key: names the caller without revealing the key
    role: str  # client | admin

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


async def get_caller(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    role = request.app.state.key_roles.get(digest)
    if role is None:
        raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return Caller(key_id=digest[:16], role=role)


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise ApiError(403, "forbidden", "this needs an admin API key")
    return caller


SessionDep = Annotated[Session, Depends(get_session)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[Engine, Depends(get_engine)]
