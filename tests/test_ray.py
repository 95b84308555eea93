"""oodguard.integrations.ray on a local 2-CPU Ray cluster started inside the test process:
scoring equals ``guard.check`` row by row (bit for bit), features equal the engine's, and a
calibration from a dataset equals the in-memory one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray.data
from _ray_cluster import local_cluster
from conftest import make_data

from oodguard import Guard, InvalidInputError, read_bundle
from oodguard.bundle import CALIBRATION_FILE, MODEL_FILE
from oodguard.engine import Engine
from oodguard.integrations.ray import (
    calibrate_dataset,
    collect_features,
    score_dataset,
)

N = 3000


@pytest.fixture(scope="module", autouse=True)
def cluster():  # type: ignore[no-untyped-def]
    with local_cluster(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def rows(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A few thousand rows, in- and out-of-distribution, one of them non-finite."""
    x = np.concatenate([make_data(N - 300, seed=11), data["noise"]])
    x[17, 3] = np.nan
    return x


@pytest.fixture(scope="module")
def reference(bundle) -> Guard:  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None)


def _dataset(x: np.ndarray) -> ray.data.Dataset:
    ids = np.arange(len(x), dtype=np.int64) * 7 + 5  # ids that are not positions
    return ray.data.from_items([{"id": int(i), "data": r} for i, r in zip(ids, x, strict=True)],
                               override_num_blocks=6)


def test_scores_equal_guard_check_row_by_row(bundle, reference, rows) -> None:
    scored = score_dataset(_dataset(rows), bundle, batch_size=97, concurrency=2,
                           features=True)
    out = scored.to_pandas()
    assert sorted(out.columns) == ["features", "id", "is_ood", "p_value", "score"]
    assert len(out) == N
    pos = (out["id"].to_numpy() - 5) // 7  # every row finds its source row through its id
    assert sorted(pos.tolist()) == list(range(N))
    want = reference.check(rows[pos])
    np.testing.assert_array_equal(out["score"].to_numpy(), want.score)  # bitwise
    np.testing.assert_array_equal(out["p_value"].to_numpy(), want.p_value)
    np.testing.assert_array_equal(out["is_ood"].to_numpy(), want.is_ood)
    np.testing.assert_array_equal(np.stack(out["features"].to_numpy()), want.features)
    assert 0 < want.is_ood.sum() < N and np.isinf(want.score[pos == 17]).all()


def test_parquet_and_image_columns_as_ray_data_reads_them(bundle, reference, rows,
                                                          tmp_path) -> None:
    """The column forms Ray Data's readers give (a parquet list column: per-row object
    arrays; read_images: uint8 (N, H, W)) become the guard's input; taken with take_batch
    (read tasks only) and scored as an actor would."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from oodguard.integrations.ray import tensor_column

    x = rows[20:120]
    pq.write_table(pa.table({"row": np.arange(len(x)), "x": x.tolist()}), tmp_path / "x.parquet")
    batch = ray.data.read_parquet(tmp_path / "x.parquet").take_batch(200, batch_format="numpy")
    assert batch["x"].dtype == object  # one array per row
    got = tensor_column(batch["x"], reference.input_spec, column="x")
    np.testing.assert_array_equal(reference.check(got).score,
                                  reference.check(x[batch["row"]]).score)
    pixels = np.round(x[:12] * 255).astype(np.uint8).reshape(-1, 4, 4)  # 4x4 grayscale
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(pixels):
        Image.fromarray(im, mode="L").save(folder / f"{i:03d}.png")
    images = ray.data.read_images(str(folder), mode="L", include_paths=True)
    batch = images.take_batch(20, batch_format="numpy")
    order = np.argsort(batch["path"])
    got = tensor_column(batch["image"], reference.input_spec, column="image", scale=255,
                        reshape=True)[order]
    want = pixels.reshape(-1, 16).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(InvalidInputError, match=r"pass reshape=True"):
        tensor_column(batch["image"], reference.input_spec, column="image", scale=255)
    ragged = np.array([np.zeros(16), np.zeros(15)], dtype=object)
    with pytest.raises(InvalidInputError, match="rows of different shapes"):
        tensor_column(ragged, reference.input_spec, column="x")


def test_bad_columns_are_refused(bundle, rows) -> None:
    ds = _dataset(rows[:50])
    with pytest.raises(KeyError, match="no column 'x'.*'data'"):
        score_dataset(ds, bundle, column="x")
    with pytest.raises(ValueError, match="concurrency must be a positive int"):
        score_dataset(ds, bundle, concurrency=0)
    narrow = ray.data.from_items([{"data": r[:8]} for r in rows[:10]])
    # The actor's InvalidInputError reaches the driver inside Ray's RayTaskError, whose message
    # holds it (Ray Data does not keep the cause's type).
    with pytest.raises(ray.exceptions.RayTaskError,
                       match=r"InvalidInputError: column 'data' holds samples of shape \(8,\); "
                             r"the bundle takes \(16,\)"):
        score_dataset(narrow, bundle).take_all()


def test_collect_features_equals_the_engine(raw_bundle, rows) -> None:
    x = rows[100:1600]
    feats = collect_features(_dataset(x), raw_bundle, batch_size=113, concurrency=2)
    b = read_bundle(raw_bundle)
    want = Engine(b.files[MODEL_FILE], b.manifest, providers="cpu").run(x)
    np.testing.assert_array_equal(feats, want)


def _calibration(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((path / CALIBRATION_FILE).read_text())


def test_calibration_from_a_dataset_equals_in_memory(raw_bundle, tmp_path) -> None:
    from oodguard.calibration import calibrate

    x = make_data(1500, seed=21)
    mem = calibrate(raw_bundle, x, alpha=0.05, out=tmp_path / "mem")
    # one tensor column "data", in 7 blocks: 2 actors finish them out of order
    ds = ray.data.from_numpy(np.array_split(x, 7))
    got = calibrate_dataset(raw_bundle, ds, alpha=0.05, out=tmp_path / "ray", batch_size=211,
                            concurrency=2)
    assert (got.n_fit, got.n_cal) == (mem.n_fit, mem.n_cal)
    assert _calibration(tmp_path / "ray") == _calibration(tmp_path / "mem")
    # the model is the same file; the manifests differ only in their creation time
    assert (tmp_path / "ray" / MODEL_FILE).read_bytes() == (tmp_path / "mem" /
                                                            MODEL_FILE).read_bytes()
    # A sample of max_rows rows, drawn by position with the seed, calibrates exactly as those
    # rows would in memory.
    chosen = np.sort(np.random.default_rng(3).choice(len(x), size=500, replace=False))
    calibrate(raw_bundle, x[chosen], alpha=0.05, out=tmp_path / "mem_s", seed=3)
    calibrate_dataset(raw_bundle, ds, alpha=0.05, out=tmp_path / "ray_s", seed=3,
                      max_rows=500)
    assert _calibration(tmp_path / "ray_s") == _calibration(tmp_path / "mem_s")


def test_calibration_refusals_come_before_the_cluster_work(raw_bundle, bundle, tmp_path) -> None:
    from oodguard.errors import BundleExistsError, CalibrationError

    ds = ray.data.from_numpy(make_data(30, seed=4))
    with pytest.raises(CalibrationError, match="Pass at least 175 in-distribution samples"):
        calibrate_dataset(raw_bundle, ds, alpha=0.05, out=tmp_path / "small")
    with pytest.raises(BundleExistsError):
        calibrate_dataset(raw_bundle, ds, out=bundle)
    assert not (tmp_path / "small").exists()


def test_score_cli_through_ray_writes_the_local_file(bundle, rows, tmp_path) -> None:
    """``oodguard score --ray ADDRESS`` (a separate driver joining this module's cluster)
    writes byte for byte the file the local path writes; the image folder's rows too."""
    import subprocess
    import sys

    from PIL import Image

    np.save(tmp_path / "x.npy", rows[:1200])
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(np.round(rows[:9] * 255).astype(np.uint8).reshape(-1, 4, 4)):
        Image.fromarray(im, mode="L").save(folder / f"{i}.png")
    address = ray.get_runtime_context().gcs_address
    for src, extra in ((tmp_path / "x.npy", []), (folder, ["--reshape"])):
        outs = []
        for how in ([], ["--ray", address, "--concurrency", "2"]):
            out = tmp_path / f"{src.stem}{len(how)}.jsonl"
            p = subprocess.run([sys.executable, "-m", "oodguard.cli", "-q", "score", str(bundle),
                                str(src), "-o", str(out), "--batch-size", "250", *extra, *how],
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-3000:]
            outs.append(out.read_bytes())
        assert outs[0] == outs[1]
    assert len(outs[0].splitlines()) == 9


def test_ray_scoring_benchmark_tiny_mode(bundle, tmp_path) -> None:
    """The benchmark's smoke run, on this module's cluster: every path's scores equal the
    local ones (it checks), and the JSON has one row per path."""
    import importlib.util

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("ray_scoring", root / "ray_scoring.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ray.json"
    assert bench.main(["--tiny", "--bundle", str(bundle), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["path"] for r in doc["rows"]] == ["local", "ray-1", "ray-2"]
    assert all(r["rows_per_s"] > 0 for r in doc["rows"])
    assert ray.is_initialized()  # the test's cluster was used, not shut down
