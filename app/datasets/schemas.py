from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class DatasetImport(BaseModel):
    """Import a public data set; owners are assigned from ``seed`` with a Zipf skew."""

    name: str = Field(pattern=NAME)
    source: Literal["fashion-mnist", "digits"]
    seed: int = Field(0, ge=0, le=2**31 - 1)
    owners: int | None = Field(None, ge=1, description="number of owners (default: samples / 20)")
    zipf_a: float = Field(0.75, ge=0.0, le=5.0)


class DatasetOut(BaseModel):
    name: str
    source: str
    n_samples: int
    n_owners: int
    n_test: int
    num_classes: int
    input_shape: list[int]
    x_scale: float
    created_at: datetime


class OwnerCount(BaseModel):
    owner_id: str
    sample_count: int


class OwnerPage(BaseModel):
    owners: list[OwnerCount]
    next_cursor: str | None
