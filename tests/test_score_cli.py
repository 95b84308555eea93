"""``oodguard score`` without Ray: chunked reading of .npy/.npz/parquet/image folders, JSONL and
parquet output with the source rows, the same scores as ``guard.check`` whatever the chunk
size, and every refusal (existing output, unknown formats, bad columns) before any work.
The ``--ray`` path is tested in tests/test_ray.py, on that module's cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oodguard import Guard
from oodguard.cli import main


@pytest.fixture(scope="module")
def reference(bundle) -> Guard:  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None)


@pytest.fixture(scope="module")
def x(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = np.concatenate([data["test"][:250], data["noise"][:50]])
    x[7, 1] = np.inf
    return x


def read_jsonl(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("batch", [1, 64, 4096])
def test_npy_to_jsonl_equals_check_whatever_the_chunking(bundle, reference, x, tmp_path,
                                                         batch) -> None:
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.jsonl"
    assert main(["score", str(bundle), str(tmp_path / "x.npy"), "-o", str(out),
                 "--batch-size", str(batch)]) == 0
    rows = read_jsonl(out)
    want = reference.check(x)
    assert [r["index"] for r in rows] == [r["row"] for r in rows] == list(range(len(x)))
    assert {r["source"] for r in rows} == {str(tmp_path / "x.npy")}
    finite = np.isfinite(want.score)
    np.testing.assert_array_equal(np.array([r["score"] for r in rows], float)[finite],
                                  want.score[finite])  # bitwise through JSON's repr
    assert rows[7]["score"] is None and rows[7]["is_ood"] is True  # +inf: null, flagged
    assert [r["p_value"] for r in rows] == want.p_value.tolist()
    assert [r["is_ood"] for r in rows] == want.is_ood.tolist()


def test_parquet_in_and_out_and_npz(bundle, reference, x, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": np.arange(len(x)), "x": x.tolist()}), tmp_path / "in.parquet",
                   row_group_size=70)
    out = tmp_path / "out.parquet"
    assert main(["score", str(bundle), str(tmp_path / "in.parquet"), "--column", "x",
                 "-o", str(out), "--batch-size", "32"]) == 0
    t = pq.read_table(out)
    assert t.column_names == ["index", "source", "row", "score", "p_value", "is_ood"]
    want = reference.check(x)
    np.testing.assert_array_equal(t.column("score").to_numpy(), want.score)  # inf kept
    np.testing.assert_array_equal(t.column("row").to_numpy(), np.arange(len(x)))
    np.savez(tmp_path / "a.npz", x=x[:40], y=x[40:50])
    assert main(["score", str(bundle), str(tmp_path / "a.npz"), "--key", "y",
                 "-o", str(tmp_path / "npz.jsonl")]) == 0
    got = [r["score"] for r in read_jsonl(tmp_path / "npz.jsonl")]
    np.testing.assert_array_equal(got, reference.check(x[40:50]).score)


def test_image_folder_rows_name_their_files(bundle, reference, x, tmp_path) -> None:
    from PIL import Image

    pixels = np.round(np.clip(x[10:22], 0, 1) * 255).astype(np.uint8).reshape(-1, 4, 4)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(pixels):
        Image.fromarray(im, mode="L").save(folder / f"{i:02d}.png")
    out = tmp_path / "img.jsonl"
    assert main(["score", str(bundle), str(folder), "--reshape", "-o", str(out),
                 "--batch-size", "5"]) == 0
    rows = read_jsonl(out)
    assert [r["source"] for r in rows] == [str(folder / f"{i:02d}.png") for i in range(12)]
    assert {r["row"] for r in rows} == {None}
    want = reference.check(pixels.reshape(-1, 16).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal([r["score"] for r in rows], want.score)


def test_refusals(bundle, raw_bundle, x, tmp_path, capsys) -> None:
    np.save(tmp_path / "x.npy", x[:20])
    src = str(tmp_path / "x.npy")
    out = tmp_path / "out.jsonl"
    out.write_text("the user's\n")
    assert main(["score", str(bundle), src, "-o", str(out)]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "the user's\n"  # untouched
    assert main(["score", str(bundle), src, "-o", str(out), "--overwrite"]) == 0
    assert len(read_jsonl(out)) == 20
    assert main(["score", str(bundle), src, "-o", str(tmp_path / "o.csv")]) == 1
    assert "name the file .jsonl" in capsys.readouterr().err
    assert main(["score", str(raw_bundle), src, "-o", str(tmp_path / "o.jsonl")]) == 1
    assert "not calibrated" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("1,2\n")
    assert main(["score", str(bundle), str(tmp_path / "t.txt"), "-o",
                 str(tmp_path / "o.jsonl")]) == 1
    assert "reads .npy, .npz, .parquet" in capsys.readouterr().err
    np.save(tmp_path / "i.npy", (x[:5] * 255).astype(np.uint8))
    assert main(["score", str(bundle), str(tmp_path / "i.npy"), "-o",
                 str(tmp_path / "o.jsonl")]) == 1
    assert "dtype" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
