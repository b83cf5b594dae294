"""Dataset requests and answers; the source names come from the engine's registry."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field

from app.text import Input
from workers.engine.ledger import NAME_PATTERN as NAME
from workers.engine.sources import SOURCES

# Sources read by name; the others read a file: uploaded (multipart), or a server-side
# path under LETHE_IMPORT_DIR (JSON, admins).
PUBLIC_SOURCES = tuple(n for n in SOURCES if not SOURCES.get(n).needs_file)
FILE_SOURCES = tuple(n for n in SOURCES if SOURCES.get(n).needs_file)


def _info(name: str):
    return Field(validation_alias=AliasChoices(name, AliasPath("info", name)))


class DatasetImport(Input):
    """Import a public data set (owners are assigned from ``seed`` with a Zipf skew), or a
    file already on the server (``path``, relative to ``LETHE_IMPORT_DIR``) with the
    owners it names."""

    name: str = Field(pattern=NAME)
    source: Literal[PUBLIC_SOURCES + FILE_SOURCES]
    path: str | None = Field(None, max_length=4096, description="file sources: a path under LETHE_IMPORT_DIR")
    options: dict | None = Field(None, description="table: label_column, owner_column, feature_columns, "
                                 "categorical_columns, format; image-folder: image_size, channels, owners_csv")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    owners: int | None = Field(None, ge=1, description="number of owners (default: samples / 20)")
    zipf_a: float = Field(0.75, ge=0.0, le=5.0)
    label_alpha: float | None = Field(
        None, gt=0.0, le=1e6, description="public sets: owners get a class mix of their own, shares drawn from "
                                          "Dirichlet(label_alpha) (small: one or two classes each); unset: a random mix")


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    source: str
    n_samples: int
    n_owners: int
    n_test: int = _info("n_test")
    num_classes: int = _info("num_classes")
    input_shape: list[int] = _info("input_shape")
    x_scale: float = _info("x_scale")
    owners_assigned: dict | None = Field(
        None, validation_alias=AliasChoices("owners_assigned", AliasPath("info", "source", "owners")),
        description="public sets: how Lethe assigned the owners (zipf_a, seed, count, label_alpha)")
    classes: list[str] | None = Field(None, validation_alias=AliasChoices("classes", AliasPath("info", "source", "classes")),
                                      description="class names by label index, where the labels were names")
    encoding: dict | None = Field(None, validation_alias=AliasChoices("encoding",
                                                                      AliasPath("info", "source", "encoding")),
                                  description="a table's encoding: each feature's mean and std or categories, in "
                                              "input order (encode rows for predict the same way)")
    created_at: datetime


class OwnerCount(BaseModel):
    owner_id: str
    sample_count: int


class OwnerPage(BaseModel):
    owners: list[OwnerCount]
    next_cursor: str | None
