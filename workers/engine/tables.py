"""A table (CSV or Parquet) as a dataset: one row per sample, a label column and an owner
column named by the caller, every other column (or the ones named) a feature.

Read in two streaming passes with pyarrow, so a table larger than memory imports:

1. **Learn the encoding.** Numeric columns: mean and standard deviation. Categorical
   columns (every non-numeric one, and any named in ``categorical_columns``): their
   values, sorted. Labels: integers are kept as class indices; any other label values
   are sorted and mapped to 0, 1, ... (the mapping is kept as ``classes``). Owner ids are
   checked as a deletion request's are, or they could never be erased.
2. **Encode and write.** Numeric features are standardised, categoricals one-hot
   encoded (a missing categorical is its own category), and the rows written to the
   ledger chunk by chunk as they are encoded.

The encoding is stored with the dataset (``source.encoding``), so a caller can encode
rows for prediction the same way. Problems are :class:`DatasetError` naming the file and
the row (1-based; a CSV's header is line 1), and never quoting a cell: the rows are
personal data.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from workers.engine.errors import DatasetError
from workers.engine.rows import SourceData, owner_id_problem

BATCH_BYTES = 4 << 20  # pyarrow's read block: memory per batch, not per table
MAX_CATEGORIES = 1000  # per categorical column: one-hot beyond that is not a feature, it is an id


@dataclass
class _Column:
    name: str
    kind: str  # numeric | categorical
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    values: set = field(default_factory=set)

    def encoding(self) -> dict:
        if self.kind == "categorical":
            return {"column": self.name, "kind": "categorical", "categories": sorted(self.values, key=_order)}
        mean = self.total / self.count if self.count else 0.0
        var = max(self.total_sq / self.count - mean * mean, 0.0) if self.count else 0.0
        std = math.sqrt(var)
        return {"column": self.name, "kind": "numeric", "mean": mean, "std": std if std > 1e-12 else 1.0}


def _order(value):
    return (value is None, str(value))


@dataclass
class TableSpec:
    """What the caller says about the table (the import's ``options``)."""

    label_column: str
    owner_column: str
    feature_columns: list[str] | None = None
    categorical_columns: list[str] = field(default_factory=list)
    format: str | None = None  # csv | parquet; None: from the file

    @classmethod
    def from_options(cls, options: dict) -> "TableSpec":
        unknown = set(options) - {"label_column", "owner_column", "feature_columns", "categorical_columns", "format"}
        if unknown:
            raise DatasetError(f"unknown table option(s) {sorted(unknown)}; the options are label_column, "
                               "owner_column, feature_columns, categorical_columns and format")
        for key in ("label_column", "owner_column"):
            if not isinstance(options.get(key), str) or not options[key]:
                raise DatasetError(f"a table import needs option {key!r}: the name of that column")
        spec = cls(**options)
        if spec.format not in (None, "csv", "parquet"):
            raise DatasetError(f"format must be 'csv' or 'parquet', got {spec.format!r}")
        return spec


def _batches(path: Path, fmt: str, label: str) -> Iterator:
    """The table's record batches, streamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The system allocator: pyarrow's default pool (mimalloc) kept several times the
    # block size per block read (335 MiB at 16 MiB blocks, against 19 MiB here).
    pool = pa.system_memory_pool()
    if fmt == "parquet":
        try:
            reader = pq.ParquetFile(path, memory_map=True)
            yield reader.schema_arrow
            yield from reader.iter_batches(batch_size=16384)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"{label}: not a readable Parquet file ({type(exc).__name__})") from None
        return
    yield from _csv_batches(path, label, pool)


def _csv_batches(path: Path, label: str, pool) -> Iterator:
    """A CSV's schema, then its rows as record batches, read BATCH_BYTES of whole lines
    at a time (each block parsed on its own with the first block's column types).
    pyarrow's streaming CSV reader was not used: it kept hundreds of megabytes a file
    (250 MiB on a 300 MB CSV), where this keeps one block. Values may not hold line
    breaks."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DatasetError(f"{label}: cannot be read ({type(exc).__name__})") from None
    with fh:
        header = fh.readline()
        line = 1  # lines before the block (the header is line 1)
        schema = None
        while True:
            block = fh.read(BATCH_BYTES)
            block += fh.readline() if block and not block.endswith(b"\n") else b""
            if not block and schema is not None:
                return
            bad = {}

            def invalid(row, bad=bad) -> str:
                bad.setdefault("row", row)
                return "error"

            try:
                table = pacsv.read_csv(
                    io.BytesIO(header + block), memory_pool=pool,
                    read_options=pacsv.ReadOptions(use_threads=False),
                    parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
                    convert_options=pacsv.ConvertOptions(column_types=schema))
            except pa.ArrowInvalid as exc:
                row = bad.get("row")
                if row is not None:
                    where = f"line {line + row.number - 1}" if row.number is not None else "a row"
                    raise DatasetError(f"{label}: {where} has {row.actual_columns} fields, the header has "
                                       f"{row.expected_columns}") from None
                last = line + block.count(b"\n")
                raise DatasetError(f"{label}: lines {line + 1}-{last}: {_first_line(exc)} (a value that does not fit the "
                                   "column's type, as read from the first lines?)") from None
            if schema is None:
                schema = table.schema
                yield schema
            yield from table.to_batches()
            line += block.count(b"\n")
            if not block:
                return


def _first_line(exc: Exception) -> str:
    """pyarrow's message without the row it quotes (personal data)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(":")[0][:200]


def _format(path: Path, spec: TableSpec) -> str:
    if spec.format:
        return spec.format
    with open(path, "rb") as fh:
        return "parquet" if fh.read(4) == b"PAR1" else "csv"


class TableReader:
    """The two passes over one table file."""

    def __init__(self, path: str | os.PathLike, spec: TableSpec, *, label: str | None = None):
        self.path = Path(path)
        self.spec = spec
        self.label = label or self.path.name
        if not self.path.is_file():
            raise DatasetError(f"{self.label}: no such file")
        self.fmt = _format(self.path, spec)

    def _stream(self):
        it = _batches(self.path, self.fmt, self.label)
        schema = next(it)
        return schema, it

    def learn(self, max_classes: int) -> dict:
        """Pass 1: the columns' encodings, the labels and the row count."""
        import pyarrow as pa

        schema, batches = self._stream()
        names = list(schema.names)
        spec = self.spec
        for column in (spec.label_column, spec.owner_column, *(spec.feature_columns or []),
                       *spec.categorical_columns):
            if column not in names:
                raise DatasetError(f"{self.label}: no column {column!r} (the columns are {names[:50]})")
        if spec.label_column == spec.owner_column:
            raise DatasetError(f"{self.label}: the label and the owner column must differ")
        features = spec.feature_columns or [n for n in names if n not in (spec.label_column, spec.owner_column)]
        if not features:
            raise DatasetError(f"{self.label}: no feature columns besides the label and the owner")
        if len(set(names)) != len(names):
            raise DatasetError(f"{self.label}: column names repeat")
        columns = {}
        for name in features:
            t = schema.field(name).type
            numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            columns[name] = _Column(name, "numeric" if numeric and name not in spec.categorical_columns
                                    else "categorical")
        labels: set = set()
        label_ints = True
        rows = 0
        for batch in batches:
            n = batch.num_rows
            self._check_owners(batch.column(spec.owner_column), rows)
            lab = batch.column(spec.label_column)
            if lab.null_count:
                raise DatasetError(f"{self.label}: {self._where(rows, _first_null(lab))} has no label")
            values = lab.to_pylist()
            if not pa.types.is_integer(lab.type):
                label_ints = False
                if "" in values:
                    raise DatasetError(f"{self.label}: {self._where(rows, values.index(''))} has no label")
            labels.update(values)
            if len(labels) > max_classes:
                raise DatasetError(f"{self.label}: more than {max_classes} classes in column "
                                   f"{spec.label_column!r} (LETHE_MAX_CLASSES)")
            for name, col in columns.items():
                values = batch.column(name)
                if col.kind == "numeric":
                    if values.null_count:
                        raise DatasetError(f"{self.label}: {self._where(rows, _first_null(values))} has no value "
                                           f"in numeric column {name!r}")
                    a = values.to_numpy(zero_copy_only=False).astype(np.float64)
                    if not np.isfinite(a).all():
                        raise DatasetError(f"{self.label}: {self._where(rows, int(np.flatnonzero(~np.isfinite(a))[0]))}"
                                           f" has a value that is not a finite number in column {name!r}")
                    col.count += n
                    col.total += float(a.sum())
                    col.total_sq += float((a * a).sum())
                else:
                    col.values.update(None if v is None else str(v) for v in values.to_pylist())
                    if len(col.values) > MAX_CATEGORIES:
                        raise DatasetError(f"{self.label}: categorical column {name!r} has more than "
                                           f"{MAX_CATEGORIES} distinct values; drop it or name feature_columns")
            rows += n
        if rows == 0:
            raise DatasetError(f"{self.label}: the table has no rows")
        if label_ints:
            if min(labels) < 0:
                raise DatasetError(f"{self.label}: integer labels must be class indices >= 0")
            classes = None
            num_classes = int(max(labels)) + 1
            if num_classes > max_classes:
                raise DatasetError(f"{self.label}: class labels must be in [0, {max_classes}) (LETHE_MAX_CLASSES), "
                                   f"got a label of {num_classes - 1}")
        else:
            classes = sorted({str(v) for v in labels})
            num_classes = len(classes)
        if num_classes < 2:
            raise DatasetError(f"{self.label}: the label column {spec.label_column!r} has fewer than two classes")
        encoding = [columns[n].encoding() for n in features]
        width = sum(len(e["categories"]) if e["kind"] == "categorical" else 1 for e in encoding)
        return {"features": encoding, "classes": classes, "num_classes": num_classes, "rows": rows, "width": width,
                "label_column": spec.label_column, "owner_column": spec.owner_column}

    def encoded(self, encoding: dict) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Pass 2: ``(x, y, owner_ids)`` batches, encoded with ``encoding``."""
        _, batches = self._stream()
        classes = {c: i for i, c in enumerate(encoding["classes"])} if encoding["classes"] is not None else None
        for batch in batches:
            x = encode(batch, encoding)
            lab = batch.column(encoding["label_column"]).to_pylist()
            y = np.array([classes[str(v)] for v in lab] if classes is not None else lab, dtype=np.int64)
            owners = np.array([str(o) for o in batch.column(encoding["owner_column"]).to_pylist()], dtype=object)
            yield x, y, owners

    def _check_owners(self, owners, offset: int) -> None:
        if owners.null_count:
            raise DatasetError(f"{self.label}: {self._where(offset, _first_null(owners))} has no owner id")
        for i, o in enumerate(owners.to_pylist()):
            o = str(o)
            if not o:
                raise DatasetError(f"{self.label}: {self._where(offset, i)} has no owner id")
            problem = owner_id_problem(o)
            if problem:
                raise DatasetError(f"{self.label}: {self._where(offset, i)}: the owner id {problem}")

    def _where(self, offset: int, i: int) -> str:
        """A row's place as a person finds it in the file: a CSV's line (the header is
        line 1; assumes no line breaks inside values), a Parquet file's row."""
        return f"line {offset + i + 2}" if self.fmt == "csv" else f"row {offset + i + 1}"


def _first_null(array) -> int:
    import pyarrow.compute as pc

    return int(pc.index(pc.is_null(array), True).as_py())


def encode(batch, encoding: dict) -> np.ndarray:
    """A record batch's features as float32 model inputs, by the stored ``encoding``
    (numeric: standardised; categorical: one-hot, an unseen value all zeros)."""
    n = batch.num_rows
    parts = []
    for f in encoding["features"]:
        values = batch.column(f["column"])
        if f["kind"] == "numeric":
            a = values.to_numpy(zero_copy_only=False).astype(np.float64)
            parts.append(((a - f["mean"]) / f["std"]).astype(np.float32)[:, None])
        else:
            index = {c: i for i, c in enumerate(f["categories"])}
            hot = np.zeros((n, len(index)), np.float32)
            codes = np.array([index.get(None if v is None else str(v), -1) for v in values.to_pylist()])
            known = codes >= 0
            hot[np.flatnonzero(known), codes[known]] = 1.0
            parts.append(hot)
    return np.concatenate(parts, axis=1)


def load_table(path, *, options: dict, max_classes: int) -> SourceData:
    """A table file as a source whose rows stream into the ledger (see the module)."""
    spec = TableSpec.from_options(dict(options))
    reader = TableReader(path, spec)
    encoding = reader.learn(max_classes)
    return SourceData(
        x=None, y=None, owner_ids=None, x_test=None, y_test=None,
        num_classes=encoding["num_classes"], input_shape=[encoding["width"]], x_scale=1.0,
        source={"kind": "table", "format": reader.fmt, "rows": encoding["rows"], "classes": encoding["classes"],
                "encoding": {k: encoding[k] for k in ("label_column", "owner_column", "features", "classes")}},
        batches=lambda: reader.encoded(encoding),
    )
