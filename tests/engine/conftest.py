"""Fixtures for the engine-library tests: an engine on a temporary directory, digits
imported, a trained SISA model, and an IDX file writer."""
import gzip
import struct

import numpy as np
import pytest

from tests.conftest import FAST
from workers.engine.engine import Engine
from workers.engine.sisa import Strategy


@pytest.fixture
def engine(tmp_path):
    return Engine(tmp_path / "data", device="cpu")


@pytest.fixture
def digits_engine(engine):
    engine.import_dataset("digits", "digits", seed=0)
    return engine


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits SISA model (4 shards x 2 slices), shared by the read-only tests of a module."""
    eng = Engine(tmp_path_factory.mktemp("trained") / "data", device="cpu")
    eng.import_dataset("digits", "digits", seed=0)
    eng.train("m", dataset="digits", architecture="cnn", strategy=Strategy("sisa", 4, 2), config=FAST)
    return eng


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, the format of (Fashion-)MNIST."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())
