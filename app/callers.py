"""Who is asking: an API key's role, named by a digest of the key (never the key)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    key_id: str  # sha256 prefix of the API key: names the caller without revealing the key
    role: str  # client | admin

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
