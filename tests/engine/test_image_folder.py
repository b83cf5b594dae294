"""Image folders as datasets: <class>/<file> (or train/ and test/) in a zip, a tar or a
directory, with an owners CSV; read in memory, decoded and resized with torchvision,
trained and forgotten like any other. Bad files and unsafe archives are refused naming
the file, or the CSV row."""
from __future__ import annotations

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from tests.conftest import FAST
from workers.engine import images, sources
from workers.engine import datasets as engine_datasets
from workers.engine.errors import DatasetError
from workers.engine.images import load_image_folder
from workers.engine.ledger import DatasetStore
from workers.engine.sisa import Strategy

CLASSES = ["cat", "dog", "fox"]
PER_CLASS = 20


def _pixels(seed: int, h: int = 12, w: int = 12, c: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _png(pixels: torch.Tensor) -> bytes:
    return encode_png(pixels).numpy().tobytes()


def _images(root: str = "", per_class: int = PER_CLASS, classes=CLASSES) -> dict[str, torch.Tensor]:
    """key (relative to the training root) -> pixels, for ``per_class`` PNGs per class."""
    return {f"{root}{c}/{i}.png": _pixels(100 * k + i) for k, c in enumerate(classes) for i in range(per_class)}


def _owner(key: str) -> str:
    return f"owner-{sum(map(ord, key)) % 6}"


def _owners_lines(keys) -> list[str]:
    return ["path,owner_id", *(f"{k},{_owner(k)}" for k in sorted(keys))]


def _files(pixels: dict[str, torch.Tensor], lines: list[str] | None, top: str = "") -> dict[str, bytes]:
    files = {f"{top}{k}": _png(v) for k, v in pixels.items()}
    if lines is not None:
        files[f"{top}owners.csv"] = "\n".join(lines).encode() + b"\n"
    return files


def _zip(path, files: dict[str, bytes], compression: int = zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tgz(path, files: dict[str, bytes], mode: str = "w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _dir(path, files: dict[str, bytes]):
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def _load(path, **options):
    return load_image_folder(path, options=options)


@pytest.mark.parametrize("pack,top", [(_zip, ""), (_tgz, "pets/"), (_dir, "")], ids=["zip", "tar.gz-top", "dir"])
def test_an_image_folder_is_read_with_its_classes_owners_and_pixels(tmp_path, pack, top):
    pixels = _images()
    raw = _load(pack(tmp_path / "upload", _files(pixels, _owners_lines(pixels), top)))
    keys = sorted(pixels)
    assert raw.x.dtype == np.uint8 and raw.x.shape == (60, 3, 12, 12)
    assert raw.input_shape == [3, 12, 12] and raw.x_scale == pytest.approx(1 / 255) and raw.num_classes == 3
    assert raw.y.tolist() == [CLASSES.index(k.split("/")[0]) for k in keys]
    assert raw.owner_ids.tolist() == [_owner(k) for k in keys]
    assert all(np.array_equal(raw.x[i], pixels[k].numpy()) for i, k in enumerate(keys))  # PNG is lossless
    assert raw.x_test is None and raw.y_test is None
    assert raw.source == {"kind": "image-folder", "classes": CLASSES, "image_size": [12, 12], "channels": 3,
                          "files": 60, "test_files": 0}


def test_archive_bytes_and_hidden_files_are_read_as_the_folder(tmp_path):
    """Also: the images under one top folder, owners.csv beside it."""
    pixels = _images()
    files = _files(pixels, None, "pets/") | _files({}, _owners_lines(pixels))
    files |= {".DS_Store": b"junk", "__MACOSX/pets/cat/._0.png": b"junk", "pets/cat/.hidden.png": b"junk",
              "pets/dog/": b""}
    raw = _load(_zip(tmp_path / "u.zip", files).read_bytes())
    assert len(raw.x) == 60 and raw.source["classes"] == CLASSES


def test_a_test_folder_becomes_the_held_out_split_without_owners(tmp_path):
    train, test = _images(), _images(per_class=4)
    files = {**_files({f"train/{k}": v for k, v in train.items()}, None),
             **_files({f"test/{k}": v for k, v in test.items()}, _owners_lines(train))}
    raw = _load(_tgz(tmp_path / "u.tar", files, mode="w"))
    assert raw.x.shape == (60, 3, 12, 12) and raw.x_test.shape == (12, 3, 12, 12)
    assert raw.y_test.tolist() == [CLASSES.index(k.split("/")[0]) for k in sorted(test)]
    assert np.array_equal(raw.x_test[0], test[sorted(test)[0]].numpy())
    assert len(raw.owner_ids) == 60 and raw.source["test_files"] == 12


def test_grey_channels_and_jpeg_images(tmp_path):
    grey = {f"{c}/{i}.png": _pixels(10 * k + i, c=1) for k, c in enumerate(CLASSES[:2]) for i in range(3)}
    raw = _load(_zip(tmp_path / "g.zip", _files(grey, _owners_lines(grey))), channels=1)
    assert raw.x.shape == (6, 1, 12, 12) and raw.input_shape == [1, 12, 12]
    assert np.array_equal(raw.x[0], grey[sorted(grey)[0]].numpy())
    jpegs = {f"{c}/{i}.jpg": encode_jpeg(_pixels(i, 16, 16)).numpy().tobytes()
             for c in CLASSES[:2] for i in range(3)}
    jpegs["owners.csv"] = "\n".join(_owners_lines(k for k in jpegs)).encode()
    raw = _load(_zip(tmp_path / "j.zip", jpegs))
    assert raw.x.shape == (6, 3, 16, 16) and raw.x.dtype == np.uint8


def test_image_size_resizes_and_centre_crops_every_image(tmp_path):
    pixels = _images(per_class=3) | {"cat/big.png": _pixels(7, 16, 20), "dog/tall.png": _pixels(8, 20, 9)}
    path = _zip(tmp_path / "u.zip", _files(pixels, _owners_lines(pixels)))
    raw = _load(path, image_size=8)
    assert raw.x.shape == (11, 3, 8, 8) and raw.source["image_size"] == [8, 8] and raw.input_shape == [3, 8, 8]
    raw = _load(path, image_size=[6, 10])
    assert raw.x.shape == (11, 3, 6, 10)
    with pytest.raises(DatasetError, match=r"cat/big.png: 16x20 pixels, but cat/0.png is 12x12; give image_size"):
        _load(path)


def test_the_owners_csv_can_come_beside_the_upload_but_not_twice_nor_from_elsewhere(tmp_path):
    pixels = _images(per_class=3)
    path = _zip(tmp_path / "u.zip", _files(pixels, None))
    csv_text = "\n".join(_owners_lines(pixels)).encode()
    assert _load(path, owners_csv=csv_text).owner_ids.tolist() == [_owner(k) for k in sorted(pixels)]
    (tmp_path / "owners-of-u.csv").write_bytes(csv_text)
    assert len(_load(path, owners_csv="owners-of-u.csv").owner_ids) == 9
    elsewhere = tmp_path / "secret"
    elsewhere.mkdir()
    upload = _zip(elsewhere / "u.zip", _files(pixels, None))
    with pytest.raises(DatasetError, match="outside"):
        _load(upload, owners_csv=str(tmp_path / "owners-of-u.csv"))
    with pytest.raises(DatasetError, match="owners given twice"):
        _load(_zip(tmp_path / "v.zip", _files(pixels, _owners_lines(pixels))), owners_csv=csv_text)
    with pytest.raises(DatasetError, match="no owners.csv"):
        _load(path)


def _set(lines, row, text):
    lines[row - 1] = text


BAD = [
    # (id, change to the images {name: bytes} and the CSV lines, message)
    ("corrupt image", lambda f, l: f.update({"cat/3.png": b"\x89PNG not really"}), r"cat/3.png: not a decodable image"),
    ("empty image", lambda f, l: f.update({"dog/3.png": b""}), r"dog/3.png: not a decodable image"),
    ("not an image", lambda f, l: f.update({"README.md": b"hello"}), r"README.md: not a decodable image"),
    ("ragged row", lambda f, l: _set(l, 4, l[3] + ",extra"), r"owners.csv row 4: 3 field\(s\), but the header has 2"),
    ("no owner_id column", lambda f, l: _set(l, 1, "path,owner"), r"owners.csv row 1: .*owner_id"),
    ("no path column", lambda f, l: _set(l, 1, "file,owner_id"), r"owners.csv row 1: .*path"),
    ("empty owner", lambda f, l: _set(l, 2, "cat/0.png,"), r"owners.csv row 2: owner_id must be 1 to 128"),
    ("long owner", lambda f, l: _set(l, 3, "cat/1.png," + "x" * 129), r"owners.csv row 3: owner_id must be 1 to 128"),
    ("NUL in owner", lambda f, l: _set(l, 5, "cat/12.png,a\x00b"), r"owners.csv row 5: .*NUL"),
    ("not UTF-8", lambda f, l: _set(l, 5, "cat/12.png,\udcff"), r"owners.csv: not UTF-8 text"),
    ("image without owner", lambda f, l: l.remove("dog/5.png," + _owner("dog/5.png")),
     r"dog/5.png: no row in owners.csv gives its owner"),
    ("row for a missing file", lambda f, l: l.append("cat/99.png,alice"),
     r"owners.csv row 62: cat/99.png is not a training image"),
    ("duplicate row", lambda f, l: l.append(l[1]), r"owners.csv row 62: cat/0.png is listed again \(first on row 2\)"),
    ("image at the top", lambda f, l: f.update({"loose.png": f["cat/0.png"]}), r"loose.png: not in a class folder"),
    ("test without train", lambda f, l: f.update({"test/cat/0.png": f["cat/0.png"]}), r"needs a train/ folder"),
    ("owners.csv in a class", lambda f, l: f.update({"cat/owners.csv": b"path,owner_id\n"}),
     r"cat/owners.csv: owners.csv belongs at the top"),
]


@pytest.mark.parametrize("change,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_folders_are_refused_naming_the_file_or_row(tmp_path, change, message):
    pixels = _images()
    files = _files(pixels, None)
    lines = _owners_lines(pixels)
    change(files, lines)
    files["owners.csv"] = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    with pytest.raises(DatasetError, match=message) as exc:
        _load(_zip(tmp_path / "bad.zip", files))
    assert exc.value.code == "invalid_dataset"


def test_too_few_or_too_many_classes_or_no_images_are_refused(tmp_path):
    one = _images(classes=["cat"])
    with pytest.raises(DatasetError, match="only one class folder \\('cat'\\)"):
        _load(_zip(tmp_path / "one.zip", _files(one, _owners_lines(one))))
    three = _images(per_class=2)
    with pytest.raises(DatasetError, match="3 class folders, more than the 2 allowed"):
        load_image_folder(_zip(tmp_path / "three.zip", _files(three, _owners_lines(three))), options={},
                          max_classes=2)
    with pytest.raises(DatasetError, match="no training images"):
        _load(_zip(tmp_path / "none.zip", {"owners.csv": b"path,owner_id\n", ".DS_Store": b"x"}))


def _tar_with(path, info: tarfile.TarInfo, data: bytes = b""):
    with tarfile.open(path, "w") as tf:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["../evil.png", "cat/../../evil.png", "/etc/evil.png", "..\\evil.png"])
def test_members_that_climb_out_of_the_folder_are_refused(tmp_path, name):
    with pytest.raises(DatasetError, match="unsafe member path"):
        _load(_tar_with(tmp_path / "evil.tar", tarfile.TarInfo(name), _png(_pixels(0))))
    with pytest.raises(DatasetError, match="unsafe member path"):
        _load(_zip(tmp_path / "evil.zip", {name: _png(_pixels(0))}))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_in_a_tar_are_refused(tmp_path, kind):
    info = tarfile.TarInfo("cat/0.png")
    info.type, info.linkname = kind, "/etc/passwd"
    with pytest.raises(DatasetError, match="cat/0.png: links and special files are refused"):
        _load(_tar_with(tmp_path / "link.tar", info))


def test_a_link_in_a_directory_or_zip_is_refused(tmp_path):
    pixels = _images(per_class=2)
    folder = _dir(tmp_path / "folder", _files(pixels, _owners_lines(pixels)))
    os.symlink("/etc/passwd", folder / "cat" / "9.png")
    with pytest.raises(DatasetError, match="cat/9.png: links are refused"):
        _load(folder)
    info = zipfile.ZipInfo("cat/9.png")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="cat/9.png: links and special files are refused"):
        _load(tmp_path / "link.zip")


def test_archive_bombs_are_capped_by_bytes_members_and_pixels(tmp_path, monkeypatch):
    pixels = _images(per_class=3)
    path = _zip(tmp_path / "u.zip", _files(pixels, _owners_lines(pixels)))
    with pytest.raises(DatasetError, match="more than 1,000 bytes uncompressed"):
        _load(path, max_bytes=1000)
    with pytest.raises(DatasetError, match="more than 100 pixels|max_pixels"):
        _load(path, max_pixels=100)
    with pytest.raises(DatasetError, match="max_bytes must be an integer from 1 to"):
        _load(path, max_bytes=images.DEFAULT_MAX_BYTES + 1)  # a caller cannot lift the cap
    monkeypatch.setattr(images, "MAX_MEMBERS", 5)
    with pytest.raises(DatasetError, match="more than 5 entries"):
        _load(path)
    zeros = _zip(tmp_path / "zeros.zip", {"cat/0.png": bytes(5_000_000)}, zipfile.ZIP_DEFLATED)  # ~5 kB
    monkeypatch.setattr(images, "MAX_MEMBERS", 10)
    with pytest.raises(DatasetError, match="cat/0.png: the upload holds more than 1,000,000 bytes"):
        _load(zeros, max_bytes=1_000_000)


def test_options_and_files_that_are_not_an_image_folder_are_refused(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not an archive " * 200)
    with pytest.raises(DatasetError, match="must be a zip or tar archive"):
        _load(tmp_path / "junk.bin")
    with pytest.raises(DatasetError, match="cannot read the image folder"):
        _load(tmp_path / "missing.zip")
    pixels = _images(per_class=2)
    path = _zip(tmp_path / "u.zip", _files(pixels, _owners_lines(pixels)))
    for options, message in [({"channels": 4}, "channels must be 1"), ({"image_size": [0, 4]}, "image_size"),
                             ({"image_size": "big"}, "image_size"), ({"resize": 8}, "unknown image-folder option")]:
        with pytest.raises(DatasetError, match=message):
            _load(path, **options)


def test_sources_load_passes_the_options_and_the_class_limit(tmp_path):
    pixels = _images(per_class=2)
    path = _zip(tmp_path / "u.zip", _files(pixels, _owners_lines(pixels)))
    raw = sources.load("image-folder", path=path, cache_dir=tmp_path, options={"image_size": 6})
    assert raw.x.shape == (6, 3, 6, 6)
    with pytest.raises(DatasetError, match="more than the 2 allowed"):
        sources.load("image-folder", path=path, cache_dir=tmp_path, max_classes=2)


def test_an_image_folder_is_imported_trained_and_forgets_an_owner(tmp_path):
    from workers.engine.engine import Engine

    train, test = _images(), _images(per_class=4)
    files = {**_files({f"train/{k}": v for k, v in train.items()}, None, "pets/"),
             **_files({f"test/{k}": v for k, v in test.items()}, _owners_lines(train), "pets/")}
    upload = _tgz(tmp_path / "pets.tgz", files)
    engine = Engine(tmp_path / "data", device="cpu")
    info = engine.import_dataset("pets", "image-folder", path=upload, options={"image_size": 8})
    assert info.n_samples == 60 and info.num_classes == 3 and info.input_shape == [3, 8, 8]
    assert info.source["classes"] == CLASSES and info.n_test == 12
    engine.train("pets-cnn", dataset="pets", architecture="cnn", strategy=Strategy("monolithic"), config=FAST)
    owner = _owner("cat/0.png")
    gone = engine.dataset("pets").owner_sample_ids(owner)
    v2 = engine.unlearn("pets-cnn", [owner])
    manifest = np.concatenate([np.concatenate(s) for s in engine.slice_ids(v2)])
    assert len(gone) and not np.isin(gone, manifest).any()
    assert engine.dataset("pets").owner_sample_ids(owner).size == 0


def test_a_refused_import_leaves_nothing_behind(tmp_path):
    pixels = _images(per_class=2)
    files = _files(pixels, _owners_lines(pixels)) | {"dog/1.png": b"broken"}
    store = DatasetStore(tmp_path / "ds")
    with pytest.raises(DatasetError, match="dog/1.png: not a decodable image"):
        engine_datasets.import_dataset(store, "bad", "image-folder", cache_dir=tmp_path,
                                       path=_zip(tmp_path / "bad.zip", files))
    assert store.names() == [] and not list((tmp_path / "ds").iterdir())
