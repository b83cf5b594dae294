"""Text the database can store: no NUL (PostgreSQL refuses it in ``text``) and no lone
surrogates (they cannot be encoded as UTF-8). Checked at validation time, so a bad
string is one caller's 422 ``invalid_request``, never a failed transaction that other
callers' requests were part of (the intake commits requests in groups).

Request bodies inherit :class:`Input`; paths and query strings are checked by
``app.http.StorableText`` before routing.
"""
from __future__ import annotations

from pydantic import BaseModel, model_validator


def unstorable(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None if it can."""
    if "\x00" in value:
        return "must not contain the NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def find_unstorable(value, where: str = "body") -> str | None:
    """The first string in ``value`` (nested lists and dicts, keys included) that cannot
    be stored, as ``"<where>.<path>: <why>"``; None if all can."""
    if isinstance(value, str):
        why = unstorable(value)
        return f"{where}: {why}" if why else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = find_unstorable(k, f"{where} (a key)") if isinstance(k, str) else None
            found = found or find_unstorable(v, f"{where}.{k}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_unstorable(v, f"{where}.{i}")
            if found:
                return found
    return None


class Input(BaseModel):
    """A request body: every string in it, at any depth, must be storable."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data):
        found = find_unstorable(data, "body") if isinstance(data, (dict, list)) else None
        if found:
            raise ValueError(found)
        return data
