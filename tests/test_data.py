"""Loaders for users' data (made here as small files) and the embedded digits default."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from oodguard.calibration.data import (
    load_array,
    load_digits_data,
    load_idx,
    load_image_folder,
    sample_image_patches,
)


def _write_idx(path: Path, a: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
    payload = header + a.astype(a.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, name: str) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / name, a)
    np.testing.assert_array_equal(load_idx(tmp_path / name), a)
    np.testing.assert_array_equal(load_array(tmp_path / name), a)


def test_idx_float_big_endian(tmp_path: Path) -> None:
    a = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    _write_idx(tmp_path / "f.idx", a, code=0x0D)
    out = load_idx(tmp_path / "f.idx")
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_idx_malformed(tmp_path: Path) -> None:
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(tmp_path / "bad.idx")
    _write_idx(tmp_path / "short.idx", np.zeros((4, 4), np.uint8))
    data = (tmp_path / "short.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="promises shape"):
        load_idx(tmp_path / "short.idx")
    (tmp_path / "code.idx").write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="unknown IDX type code 0x42"):
        load_idx(tmp_path / "code.idx")


def test_npy_npz(tmp_path: Path) -> None:
    a = np.ones((3, 2), np.float32)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy"), a)
    np.savez(tmp_path / "one.npz", x=a)
    np.testing.assert_array_equal(load_array(tmp_path / "one.npz"), a)
    np.savez(tmp_path / "two.npz", x=a, y=a)
    with pytest.raises(ValueError, match="pass key="):
        load_array(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="no array 'z'"):
        load_array(tmp_path / "two.npz", key="z")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_array(tmp_path / "obj.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_array(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_array(tmp_path / "missing.npy")


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    x = load_array(tmp_path)
    assert x.shape == (3, 6, 5) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "9.png")
    with pytest.raises(ValueError, match="several sizes"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=(8, 8)).shape == (4, 8, 8)
    rgb = load_image_folder(tmp_path, size=(8, 8), grayscale=False)
    assert rgb.shape == (4, 8, 8, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(empty)


def test_digits_data_is_seeded_and_disjoint() -> None:
    a, b = load_digits_data(seed=0), load_digits_data(seed=0)
    np.testing.assert_array_equal(a.test, b.test)
    assert len(a.train) + len(a.val) + len(a.test) == 901  # digits 0-4
    rows = {r.tobytes() for r in a.train}
    assert not any(r.tobytes() in rows for r in a.test)
    assert {k: v[0] for k, v in a.ood.items()} == {
        "digits_5_9": "near", "uniform_noise": "far", "inverted_digits": "far",
        "image_patches": "far"}
    for _, x in a.ood.values():
        assert x.shape[1] == 64 and x.dtype == np.float32


def test_sample_image_patches() -> None:
    p = sample_image_patches(10, seed=1)
    assert p.shape == (10, 8, 8) and 0 <= p.min() and p.max() <= 1
    np.testing.assert_array_equal(p, sample_image_patches(10, seed=1))


def test_parquet_column_is_named_or_the_only_one(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oodguard.io import parquet_column, read_row_group

    pq.write_table(pa.table({"a": [[1.0, 2.0]] * 3, "b": [1, 2, 3]}), tmp_path / "t.parquet",
                   row_group_size=2)
    with pytest.raises(ValueError, match=r"holds columns \['a', 'b'\]; pass --column to pick"):
        parquet_column(tmp_path / "t.parquet", None, how="--column")
    with pytest.raises(ValueError, match=r"has no column 'x'; it holds \['a', 'b'\]"):
        parquet_column(tmp_path / "t.parquet", "x")
    assert parquet_column(tmp_path / "t.parquet", "a") == ("a", [2, 1])
    assert len(read_row_group(tmp_path / "t.parquet", 1, "a")) == 1
