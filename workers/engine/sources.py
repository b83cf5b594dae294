"""Where datasets come from, registered by name: Fashion-MNIST files, scikit-learn
digits, a user's .npz. A source is a loader ``load(*, path, seed, cache_dir) ->
SourceData`` and whether it needs a file from the caller; adding one is a loader and
its ``SOURCES.add`` line.

Public image sets have no owners, so :func:`assign_owners` gives them owners from a
seed with a Zipf skew: a few owners hold many samples, most hold a few.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from workers.engine.errors import DatasetError
from workers.engine.registry import Registry
from workers.engine.rows import MAX_CLASSES, SourceData, owner_id_problem

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@dataclass(frozen=True)
class Source:
    load: Callable[..., SourceData]  # (*, path, seed, cache_dir, options, max_classes) -> SourceData
    needs_file: bool = False  # an upload (npz), not a data set Lethe can read by name
    takes_options: bool = False  # options (a dict) describe the file (a table's label column, ...)


SOURCES: Registry[Source] = Registry("source")


def load(source: str, *, path=None, seed: int = 0, cache_dir: str | os.PathLike,
         max_classes: int = MAX_CLASSES, options: dict | None = None) -> SourceData:
    """Raw rows of ``source``; ``path`` is the caller's file or directory, if any, and
    ``options`` what the caller says about it (a table's label column, ...)."""
    try:
        entry = SOURCES.get(source)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    if entry.needs_file and path is None:
        raise DatasetError(f"an import from source {source!r} needs the file")
    if options and not entry.takes_options:
        raise DatasetError(f"source {source!r} takes no options")
    raw = entry.load(path=path, seed=seed, cache_dir=cache_dir, options=dict(options or {}),
                     max_classes=max_classes)
    if raw.num_classes > max_classes:
        raise DatasetError(f"class labels must be in [0, {max_classes}) (LETHE_MAX_CLASSES), "
                           f"got a label of {raw.num_classes - 1}")
    return raw


def assign_owners(n: int, *, seed: int, n_owners: int | None = None, zipf_a: float = 0.75,
                  labels: np.ndarray | None = None, label_alpha: float | None = None) -> np.ndarray:
    """Give ``n`` samples owner ids with a Zipf(``zipf_a``) skew, reproducibly from ``seed``.

    Owner k (by rank) gets a share proportional to ``k ** -zipf_a``; the ranks are
    shuffled onto the ids ``owner-00000 ...`` so the biggest owner is not always the first.
    With ``label_alpha``, owners are not a random mix of the classes (real people's data
    rarely is): see :func:`_label_skewed_owners`.
    """
    if label_alpha is not None:
        return _label_skewed_owners(n, labels, seed=seed, n_owners=n_owners, zipf_a=zipf_a, alpha=label_alpha)
    if n <= 0:
        raise DatasetError("cannot assign owners to an empty dataset")
    n_owners = n_owners or max(1, n // 20)
    if not 1 <= n_owners <= n:
        raise DatasetError(f"owners must be between 1 and the number of samples ({n}), got {n_owners}")
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_owners + 1, dtype=np.float64) ** -zipf_a
    # Every owner holds at least one sample; the rest follows the Zipf shares.
    counts = 1 + rng.multinomial(n - n_owners, weights / weights.sum())
    names = np.array([f"owner-{i:05d}" for i in rng.permutation(n_owners)])
    owners = np.repeat(names, counts)
    return owners[rng.permutation(n)]


def _label_skewed_owners(n: int, labels: np.ndarray, *, seed: int, n_owners: int | None, zipf_a: float,
                         alpha: float) -> np.ndarray:
    """Owners with a class mix of their own (non-IID, as in federated-learning benchmarks):
    owner k draws class shares ``p_k ~ Dirichlet(alpha)``, and each class's samples are
    split among the owners in proportion to ``zipf_k * p_k[class]``. Small ``alpha``:
    each owner holds mostly one or two classes; large: the random mix of the default.
    Owners that draw no sample do not exist (the count can come out below ``n_owners``)."""
    if labels is None or len(labels) != n:
        raise DatasetError("label_alpha needs the labels of every sample")
    if not alpha > 0:
        raise DatasetError(f"label_alpha must be > 0, got {alpha}")
    n_owners = n_owners or max(1, n // 20)
    if not 1 <= n_owners <= n:
        raise DatasetError(f"owners must be between 1 and the number of samples ({n}), got {n_owners}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    zipf = np.arange(1, n_owners + 1, dtype=np.float64) ** -zipf_a
    weight = zipf[:, None] * rng.dirichlet(np.full(len(classes), alpha), size=n_owners)  # owners x classes
    names = np.array([f"owner-{i:05d}" for i in rng.permutation(n_owners)])
    owners = np.empty(n, dtype=names.dtype)
    for j, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        share = weight[:, j] / weight[:, j].sum()
        owners[rng.permutation(members)] = np.repeat(names, rng.multinomial(len(members), share))
    return owners


def load_fashion_mnist(directory: str | os.PathLike | None, cache_dir: str | os.PathLike) -> SourceData:
    """Read Fashion-MNIST with torchvision (``download=False``) from local IDX files.

    ``directory`` holds the four IDX files, gzipped or not (Debian's
    ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``).
    torchvision wants them uncompressed under ``<root>/FashionMNIST/raw``, so they are
    laid out in a temporary folder for the read and deleted after it: no copy of the
    rows outlives the import (an owner erased later must not stay in a cache). An older
    release's copy under ``cache_dir`` is deleted too.
    """
    shutil.rmtree(Path(cache_dir) / "FashionMNIST", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="lethe-fmnist-") as root:
        return _read_fashion_mnist(Path(directory or DEFAULT_FASHION_MNIST_DIR), Path(root))


def _read_fashion_mnist(src: Path, cache_dir: Path) -> SourceData:
    from torchvision.datasets import FashionMNIST

    raw = cache_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        target = raw / name
        if target.exists():
            continue
        if (src / name).exists():
            shutil.copyfile(src / name, target)
        elif (src / f"{name}.gz").exists():
            with gzip.open(src / f"{name}.gz", "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            raise DatasetError(
                f"Fashion-MNIST file {name}(.gz) not found in {src}; install Debian's "
                "dataset-fashion-mnist or pass the directory that holds the IDX files"
            )
    train = FashionMNIST(str(cache_dir), train=True, download=False)
    test = FashionMNIST(str(cache_dir), train=False, download=False)
    return SourceData(
        x=train.data.numpy()[:, None],
        y=train.targets.numpy(),
        owner_ids=None,
        x_test=test.data.numpy()[:, None],
        y_test=test.targets.numpy(),
        num_classes=10,
        input_shape=[1, 28, 28],
        x_scale=1 / 255,
        source={"kind": "fashion-mnist", "directory": str(src)},
    )


def load_digits(*, seed: int, test_fraction: float = 0.2) -> SourceData:
    """scikit-learn's bundled 8x8 digits, split into train and held-out test by ``seed``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    x = digits.images.astype(np.uint8)[:, None]  # values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return SourceData(
        x=x_tr,
        y=y_tr,
        owner_ids=None,
        x_test=x_te,
        y_test=y_te,
        num_classes=10,
        input_shape=[1, 8, 8],
        x_scale=1 / 16,
        source={"kind": "digits", "test_fraction": test_fraction},
    )


def load_npz(data: bytes | str | os.PathLike) -> SourceData:
    """A user's ``.npz`` with ``x`` (n, ...), ``y`` (n,) int labels and ``owner_id`` (n,).

    Optional ``x_test`` / ``y_test`` hold evaluation rows that belong to no owner.
    Uploaded data keeps its own owner ids.
    """
    try:
        fh = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")
        with fh, np.load(fh, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise DatasetError(f"no such file: {data}") from None
    except Exception as exc:  # numpy raises several types for a bad archive
        raise DatasetError(f"not a readable .npz archive: {exc}") from None
    missing = [k for k in ("x", "y", "owner_id") if k not in arrays]
    if missing:
        raise DatasetError(f".npz is missing array(s) {missing}; it needs x, y and owner_id")
    x, y, owners = arrays["x"], arrays["y"], arrays["owner_id"]
    _check_rows(x, y, "x", "y")
    if owners.ndim != 1 or len(owners) != len(x):
        raise DatasetError(f"owner_id must be 1-D with one entry per row of x ({len(x)}), got {owners.shape}")
    if owners.dtype.kind not in "iuUS":
        raise DatasetError(f"owner_id must hold integers or strings, got dtype {owners.dtype}")
    try:
        owner_ids = np.array([o.decode() if isinstance(o, bytes) else str(o) for o in owners.tolist()])
    except UnicodeDecodeError:
        raise DatasetError("owner_id bytes must be UTF-8 text") from None
    for o in owner_ids.tolist():
        problem = owner_id_problem(o)
        if problem:
            raise DatasetError(f"owner_id {problem}")
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if (x_test is None) != (y_test is None):
        raise DatasetError("give both x_test and y_test, or neither")
    if x_test is not None:
        _check_rows(x_test, y_test, "x_test", "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetError(f"x_test rows have shape {x_test.shape[1:]}, x rows {x.shape[1:]}")
    num_classes = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    shape = list(x.shape[1:])
    if len(shape) == 2:  # H x W images get a channel axis
        shape = [1, *shape]
        x = x.reshape(len(x), *shape)
        x_test = None if x_test is None else x_test.reshape(len(x_test), *shape)
    elif len(shape) not in (1, 3):
        raise DatasetError(f"x rows must be vectors, HxW or CxHxW images, got shape {x.shape[1:]}")
    return SourceData(
        x=x.astype(np.float32),
        y=y.astype(np.int64),
        owner_ids=owner_ids,
        x_test=None if x_test is None else x_test.astype(np.float32),
        y_test=None if y_test is None else y_test.astype(np.int64),
        num_classes=num_classes,
        input_shape=shape,
        x_scale=1.0,
        source={"kind": "npz"},
    )


SOURCES.add("fashion-mnist", Source(lambda *, path, seed, cache_dir, **_: load_fashion_mnist(path, cache_dir)))
SOURCES.add("digits", Source(lambda *, path, seed, cache_dir, **_: load_digits(seed=seed)))
SOURCES.add("npz", Source(lambda *, path, seed, cache_dir, **_: load_npz(path), needs_file=True))
SOURCES.add("table", Source(lambda *, path, options, max_classes, **_: _tables().load_table(
    path, options=options, max_classes=max_classes), needs_file=True, takes_options=True))
SOURCES.add("image-folder", Source(lambda *, path, options, max_classes, **_: _images().load_image_folder(
    path, options=options, max_classes=max_classes), needs_file=True, takes_options=True))


def _images():
    from workers.engine import images  # torchvision is imported only for an image folder

    return images


def _tables():
    from workers.engine import tables  # pyarrow is imported only for a table

    return tables


def _check_rows(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    if x.ndim < 2 or len(x) == 0:
        raise DatasetError(f"{xname} must have at least one row and one feature, got shape {x.shape}")
    if x.dtype.kind not in "iuf" or not np.isfinite(x.astype(np.float64)).all():
        raise DatasetError(f"{xname} must be finite numbers, got dtype {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{yname} must be 1-D with one label per row of {xname} ({len(x)}), got {y.shape}")
    if y.dtype.kind not in "iu" or (y < 0).any():
        raise DatasetError(f"{yname} must be non-negative integer class labels, got dtype {y.dtype}")
