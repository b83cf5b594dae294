"""The image-folder source: labelled images in a zip or tar upload, or a directory on
the server, with an owners CSV that says whose each image is.

Layout (optionally all under one common top folder, e.g. ``pets/cat/1.png``)::

    <class>/<file>                      every image is a training row, or
    train/<class>/<file>                training rows, and
    test/<class>/<file>                 held-out rows (optional; they belong to no owner)
    owners.csv                          path,owner_id; paths relative to the training root

Classes are the sorted folder names (a label is the index in that list, kept as
``source["classes"]``). Archives are read in memory, never extracted, so a hostile
member name cannot write anywhere; unsafe names, links and devices are refused, and the
member count and uncompressed bytes are capped against archive bombs. Images are decoded
with torchvision and, given ``image_size``, resized to cover it and centre-cropped.
"""
from __future__ import annotations

import csv
import io
import os
import stat
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from workers.engine.errors import DatasetError
from workers.engine.rows import MAX_CLASSES, SourceData, owner_id_problem

OWNERS_FILE = "owners.csv"
MAX_MEMBERS = 1_000_000
DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_PIXELS = 1 << 26  # per image, checked from its header before it is decoded
MAX_IMAGE_SIDE = 4096
IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
OPTIONS = ("owners_csv", "channels", "image_size", "max_bytes", "max_pixels")


@dataclass(frozen=True)
class _Settings:
    channels: int
    size: tuple[int, int] | None
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class _Image:
    name: str  # as in the upload, for messages
    key: str  # relative to the training (or test) root: what owners.csv names
    label: str
    test: bool


def load_image_folder(path: str | os.PathLike | bytes, *, options: dict,
                      max_classes: int = MAX_CLASSES) -> SourceData:
    """Rows from an image folder: ``path`` is a zip or tar archive (a file, or its bytes)
    or a directory. ``options``: ``owners_csv`` (when the upload holds no owners.csv: its
    bytes, or a path beside the archive or directory), ``channels`` (3: RGB, 1: grey), ``image_size`` (a side or [H, W];
    without it every image must have the first one's size), ``max_bytes`` and
    ``max_pixels`` (lower caps than the defaults, never higher: options come from callers).
    """
    options = {k: v for k, v in options.items() if v is not None}
    settings = _settings(options)
    decoded: dict[str, torch.Tensor] = {}
    csv_candidates: dict[str, bytes] = {}
    for name, data in _members(path, settings.max_bytes):
        if name.rsplit("/", 1)[-1] == OWNERS_FILE and name.count("/") <= 1:
            csv_candidates[name] = data
        else:
            decoded[name] = _decode(name, data, settings)
    images, csv_name = _layout(list(decoded), csv_candidates)
    train = [i for i in images if not i.test]
    test = [i for i in images if i.test]
    classes = _classes(train, test, max_classes)
    owners_name, owners_data = _owners_source(options.get("owners_csv"), csv_name, csv_candidates, path)
    owners = _match_owners(train, _read_owners(owners_data, owners_name), owners_name)
    shape = _common_shape(images, decoded)
    index = {c: i for i, c in enumerate(classes)}
    x, y = _stack(train, decoded, index, shape)
    x_test, y_test = _stack(test, decoded, index, shape) if test else (None, None)
    return SourceData(
        x=x,
        y=y,
        owner_ids=np.array([owners[i.key] for i in train]),
        x_test=x_test,
        y_test=y_test,
        num_classes=len(classes),
        input_shape=[settings.channels, *shape],
        x_scale=1 / 255,
        source={"kind": "image-folder", "classes": classes, "image_size": list(shape),
                "channels": settings.channels, "files": len(train), "test_files": len(test)},
    )


def _settings(options: dict) -> _Settings:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DatasetError(f"unknown image-folder option(s) {unknown}; known: {', '.join(OPTIONS)}")
    channels = options.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DatasetError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return _Settings(
        channels=int(channels),
        size=_image_size(options.get("image_size")),
        max_bytes=_cap(options, "max_bytes", DEFAULT_MAX_BYTES),
        max_pixels=_cap(options, "max_pixels", DEFAULT_MAX_PIXELS),
    )


def _cap(options: dict, key: str, ceiling: int) -> int:
    """A caller may tighten a cap but not lift it: a bomb's author would lift it."""
    value = options.get(key, ceiling)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ceiling:
        raise DatasetError(f"{key} must be an integer from 1 to {ceiling:,}, got {value!r}")
    return value


def _image_size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    sides = [value, value] if isinstance(value, int) else value
    if (not isinstance(sides, (list, tuple)) or len(sides) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_IMAGE_SIDE for s in sides)):
        raise DatasetError(f"image_size must be a side or [height, width] of 1 to {MAX_IMAGE_SIDE} pixels, "
                           f"got {value!r}")
    return int(sides[0]), int(sides[1])


# -- reading the upload ------------------------------------------------------

def _members(path, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular, non-hidden file, names normalised to ``a/b/c``."""
    if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
        yield from _budgeted(_directory(Path(path)), max_bytes)
        return
    try:
        fh = io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb")
    except OSError as exc:
        raise DatasetError(f"cannot read the image folder {path}: {exc.strerror}") from None
    with fh:
        if zipfile.is_zipfile(fh):
            fh.seek(0)
            yield from _budgeted(_zip(fh), max_bytes)
            return
        fh.seek(0)
        try:
            archive = tarfile.open(fileobj=fh, mode="r:*")
        except (tarfile.TarError, EOFError, OSError):
            raise DatasetError("an image folder must be a zip or tar archive (.zip, .tar, .tar.gz, .tgz) "
                               "or a directory") from None
        with archive:
            yield from _budgeted(_tar(archive), max_bytes)


def _budgeted(entries: Iterator[tuple[str, int, object]], max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """Read each entry (name, declared size, reader) in turn, within the member and byte caps.

    The declared size is checked before anything is read, and the read is cut one byte
    past what is left, so a member that lies about its size cannot blow the budget either.
    """
    total = 0
    for count, (raw_name, size, read) in enumerate(entries, start=1):
        if count > MAX_MEMBERS:
            raise DatasetError(f"the upload holds more than {MAX_MEMBERS:,} entries")
        name = _safe_name(raw_name)
        if name is None or read is None:
            continue
        if total + size > max_bytes:
            raise DatasetError(f"{name}: the upload holds more than {max_bytes:,} bytes uncompressed (max_bytes)")
        data = read(max_bytes - total + 1)
        total += len(data)
        if total > max_bytes:
            raise DatasetError(f"{name}: the upload holds more than {max_bytes:,} bytes uncompressed (max_bytes)")
        yield name, data


def _safe_name(raw: str) -> str | None:
    """The member's name as ``a/b/c``; None for hidden files (``.DS_Store``, ``__MACOSX/``)
    and folders; an absolute name or a ``..`` component is refused, whichever the
    separator, as an extractor elsewhere might follow it out of the folder."""
    name = raw.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DatasetError(f"{raw}: unsafe member path (absolute, or with '..'); refused")
    if not parts or name.endswith("/"):
        return None
    if any(p.startswith(".") or p in IGNORED_NAMES for p in parts):
        return None
    return "/".join(parts)


def _zip(fh) -> Iterator[tuple[str, int, object]]:
    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"not a readable zip archive: {exc}") from None
    with archive:
        for info in archive.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir():
                yield info.filename, 0, None
                continue
            if kind not in (0, stat.S_IFREG):
                raise DatasetError(f"{info.filename}: links and special files are refused in an upload")
            if info.flag_bits & 0x1:
                raise DatasetError(f"{info.filename}: encrypted zip members cannot be read")
            yield info.filename, info.file_size, _zip_reader(archive, info)


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo):
    def read(limit: int) -> bytes:
        try:
            with archive.open(info) as member:
                return member.read(limit)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise DatasetError(f"{info.filename}: damaged zip member: {exc}") from None
    return read


def _tar(archive: tarfile.TarFile) -> Iterator[tuple[str, int, object]]:
    """Members in stream order, read as they come: a .tar.gz is decompressed once."""
    while True:
        try:
            member = archive.next()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"damaged tar archive: {exc}") from None
        if member is None:
            return
        if member.isdir():
            yield member.name, 0, None
            continue
        if not member.isfile():
            raise DatasetError(f"{member.name}: links and special files are refused in an upload")
        yield member.name, member.size, _tar_reader(archive, member)


def _tar_reader(archive: tarfile.TarFile, member: tarfile.TarInfo):
    def read(limit: int) -> bytes:
        try:
            return archive.extractfile(member).read(limit)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"{member.name}: damaged tar member: {exc}") from None
    return read


def _directory(root: Path) -> Iterator[tuple[str, int, object]]:
    """Files under ``root`` in name order; links are refused as in an archive, since one
    could point anywhere on the server."""
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name, reverse=True):
            name = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                raise DatasetError(f"{name}: links are refused in an image folder")
            if entry.is_dir(follow_symlinks=False):
                if not (entry.name.startswith(".") or entry.name in IGNORED_NAMES):
                    stack.append(Path(entry.path))
                yield name + "/", 0, None
            elif entry.is_file(follow_symlinks=False):
                yield name, entry.stat(follow_symlinks=False).st_size, _file_reader(entry.path)
            else:
                raise DatasetError(f"{name}: special files are refused in an image folder")


def _file_reader(path: str):
    def read(limit: int) -> bytes:
        with open(path, "rb") as fh:
            return fh.read(limit)
    return read


# -- decoding ----------------------------------------------------------------

def _decode(name: str, data: bytes, settings: _Settings) -> torch.Tensor:
    """The image as uint8 C x H x W with the requested channels, resized when asked."""
    from torchvision.io import ImageReadMode, decode_image

    _check_pixels(name, data, settings.max_pixels)
    mode = ImageReadMode.RGB if settings.channels == 3 else ImageReadMode.GRAY
    try:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # an empty file raises here
        try:
            image = decode_image(encoded, mode=mode)
        except RuntimeError:  # GIF and WebP decoders know no grey mode
            image = decode_image(encoded, mode=ImageReadMode.UNCHANGED)
    except Exception:  # torchvision raises RuntimeError and others for bad bytes
        raise DatasetError(f"{name}: not a decodable image") from None
    image = _channels(image, settings.channels)
    return image if settings.size is None else _resize(image, settings.size)


def _check_pixels(name: str, data: bytes, max_pixels: int) -> None:
    """Refuse a decompression bomb (a small file declaring a huge image) from its header,
    before the decoder allocates it; a header Pillow cannot read is left to the decoder."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{name}: {exc}") from None
    except Exception:  # not Pillow's to judge: decode_image reports it
        return
    if width * height > max_pixels:
        raise DatasetError(f"{name}: {width}x{height} pixels is more than max_pixels ({max_pixels:,})")


def _channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    if image.ndim == 4:  # an animated GIF: its first frame
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = F.to_dtype(image, torch.uint8, scale=True)
    have = image.shape[0]
    if channels == 3:
        return image[:3] if have >= 3 else image[:1].expand(3, -1, -1).contiguous()
    return image[:1] if have <= 2 else F.rgb_to_grayscale(image[:3])


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale to cover ``size`` keeping the aspect ratio, then centre-crop: no image is
    stretched, and every one comes out the same size."""
    from torchvision.transforms import v2

    h, w = image.shape[1:]
    scale = max(size[0] / h, size[1] / w)
    cover = [max(size[0], round(h * scale)), max(size[1], round(w * scale))]
    return v2.Compose([v2.Resize(cover, antialias=True), v2.CenterCrop(list(size))])(image)


# -- layout, classes, owners ---------------------------------------------------

def _layout(names: list[str], csv_candidates: dict[str, bytes]) -> tuple[list[_Image], str]:
    """The images with their class and split, and where owners.csv would be.

    One top folder common to every image is skipped (``pets/cat/1.png``) unless it is
    ``train``/``test`` or the images sit right in it (then it is the only class); the
    CSV may be in it or beside it."""
    tops = {n.split("/", 1)[0] for n in names}
    top = next(iter(tops)) if len(tops) == 1 else None
    prefix = ""
    if top not in (None, "train", "test") and all(n.count("/") >= 2 for n in names):
        prefix = top + "/"
    csv_name = prefix + OWNERS_FILE if prefix + OWNERS_FILE in csv_candidates else OWNERS_FILE
    misplaced = sorted(n for n in csv_candidates if n != csv_name)
    if misplaced:
        raise DatasetError(f"{misplaced[0]}: {OWNERS_FILE} belongs at the top of the upload, not in a class folder")
    relative = {n: n[len(prefix):] for n in names}
    split = any(r.split("/", 1)[0] == "train" and "/" in r for r in relative.values())
    return [_place(n, r, split) for n, r in sorted(relative.items(), key=lambda kv: kv[1])], csv_name


def _place(name: str, rel: str, split: bool) -> _Image:
    parts = rel.split("/")
    if split:
        if parts[0] not in ("train", "test") or len(parts) < 3:
            raise DatasetError(f"{name}: with a train/ folder, images belong in train/<class>/ or test/<class>/")
        return _Image(name, "/".join(parts[1:]), parts[1], parts[0] == "test")
    if len(parts) < 2:
        raise DatasetError(f"{name}: not in a class folder; lay images out as <class>/<file>")
    if parts[0] == "test":
        raise DatasetError(f"{name}: a test/ folder needs a train/ folder beside it (train/<class>/<file>)")
    return _Image(name, rel, parts[0], False)


def _classes(train: list[_Image], test: list[_Image], max_classes: int) -> list[str]:
    if not train:
        raise DatasetError("the upload holds no training images; lay them out as <class>/<file> "
                           "or train/<class>/<file>")
    classes = sorted({i.label for i in train})
    if len(classes) > max_classes:
        raise DatasetError(f"{len(classes)} class folders, more than the {max_classes} allowed (LETHE_MAX_CLASSES)")
    if len(classes) < 2:
        raise DatasetError(f"only one class folder ({classes[0]!r}); a classifier needs at least 2")
    unknown = next((i for i in test if i.label not in classes), None)
    if unknown is not None:
        raise DatasetError(f"{unknown.name}: class {unknown.label!r} has no training images")
    return classes


def _owners_source(option, csv_name: str, candidates: dict[str, bytes], folder) -> tuple[str, bytes]:
    """The owners CSV: the upload's, or the one given beside it, never both (which of two
    owner lists is meant cannot be guessed, and a wrong owner is a wrong erasure)."""
    if option is not None and csv_name in candidates:
        raise DatasetError(f"owners given twice: the upload holds {csv_name} and owners_csv was given too")
    if option is None:
        if csv_name not in candidates:
            raise DatasetError(f"no {OWNERS_FILE} (header path,owner_id) at the top of the upload, "
                               "and no owners_csv given")
        return csv_name, candidates[csv_name]
    if isinstance(option, bytes):
        return "owners_csv", option
    return _owners_file(option, folder)


def _owners_file(option, folder) -> tuple[str, bytes]:
    """An owners_csv path is read only beside the image folder (in the folder that holds
    the archive or directory; relative paths start there): options come from API
    callers, and a path anywhere would let one probe any file on the server through the
    error messages."""
    if not isinstance(option, (str, os.PathLike)) or isinstance(folder, bytes):
        raise DatasetError("owners_csv must be the CSV's bytes, or a path when the image folder is one")
    base = Path(folder).resolve().parent
    target = (base / option).resolve()
    if not target.is_relative_to(base):
        raise DatasetError(f"owners_csv: {option} is outside {base}, the image folder's folder")
    try:
        return target.name, target.read_bytes()
    except OSError as exc:
        raise DatasetError(f"owners_csv: cannot read {option}: {exc.strerror}") from None


def _read_owners(data: bytes, name: str) -> dict[str, tuple[str, int]]:
    """path -> (owner id, row) from the CSV; row 1 is the header."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{name}: not UTF-8 text") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    number = 0
    try:
        header = [h.strip() for h in next(rows, [])]
        number = 1
        missing = [c for c in ("path", "owner_id") if header.count(c) != 1]
        if missing:
            raise DatasetError(f"{name} row 1: the header needs one each of path and owner_id, "
                               f"missing or repeated: {', '.join(missing)}")
        at_path, at_owner = header.index("path"), header.index("owner_id")
        owners: dict[str, tuple[str, int]] = {}
        for number, row in enumerate(rows, start=2):
            if row:
                path, owner = _owner_row(row, header, at_path, at_owner, f"{name} row {number}")
                if path in owners:
                    raise DatasetError(f"{name} row {number}: {path} is listed again (first on row {owners[path][1]})")
                owners[path] = (owner, number)
    except csv.Error as exc:
        raise DatasetError(f"{name} row {number + 1}: {exc}") from None
    return owners


def _owner_row(row: list[str], header: list[str], at_path: int, at_owner: int, where: str) -> tuple[str, str]:
    if len(row) != len(header):
        raise DatasetError(f"{where}: {len(row)} field(s), but the header has {len(header)}")
    path = row[at_path].replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    if not path:
        raise DatasetError(f"{where}: the path is empty")
    return path, _check_owner(row[at_owner], where)


def _check_owner(owner: str, where: str) -> str:
    """The rules of a deletion request's owner_id (as for .npz uploads), or the owner
    could never be erased."""
    problem = owner_id_problem(owner)
    if problem:
        raise DatasetError(f"{where}: owner_id {problem}")
    return owner


def _match_owners(train: list[_Image], owners: dict[str, tuple[str, int]], name: str) -> dict[str, str]:
    """Every training image has exactly one owner row, and every row names one."""
    keys = {i.key for i in train}
    stray = next(((p, r) for p, (_, r) in owners.items() if p not in keys), None)
    if stray is not None:
        raise DatasetError(f"{name} row {stray[1]}: {stray[0]} is not a training image in the upload "
                           "(paths are relative to the training root, e.g. cat/1.png)")
    unowned = [i for i in train if i.key not in owners]
    if unowned:
        more = f" (and {len(unowned) - 1} more)" if len(unowned) > 1 else ""
        raise DatasetError(f"{unowned[0].name}: no row in {name} gives its owner{more}")
    return {p: o for p, (o, _) in owners.items()}


def _common_shape(images: list[_Image], decoded: dict[str, torch.Tensor]) -> tuple[int, int]:
    first = images[0]
    shape = tuple(decoded[first.name].shape[1:])
    for image in images:
        other = tuple(decoded[image.name].shape[1:])
        if other != shape:
            raise DatasetError(f"{image.name}: {other[0]}x{other[1]} pixels, but {first.name} is "
                               f"{shape[0]}x{shape[1]}; give image_size to resize them all")
    return int(shape[0]), int(shape[1])


def _stack(images: list[_Image], decoded: dict[str, torch.Tensor], index: dict[str, int],
           shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """N x C x H x W uint8 and the labels; each decoded image is released once copied."""
    channels = decoded[images[0].name].shape[0]
    x = np.empty((len(images), channels, *shape), dtype=np.uint8)
    for row, image in enumerate(images):
        x[row] = decoded.pop(image.name).numpy()
    return x, np.array([index[i.label] for i in images], dtype=np.int64)
