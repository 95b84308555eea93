"""The embedding guard (oodguard.fit(model=, layer=)): one ONNX graph from the classifier's own
input through its feature layer and the autoencoder's trajectory, plus the classifier's msp,
energy and class-conditional Mahalanobis distance; the graph's embeddings and classifier
features equal torch's / numpy's within the parity tolerance; guard.wrap guards the classifier;
refusals."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

import oodguard  # noqa: E402
from oodguard.bundle.reference import compare_values  # noqa: E402
from oodguard.calibration.selection import (  # noqa: E402
    BASELINE_FEATURES,
    CLASSIFIER_BASELINES,
    required_baselines,
)
from oodguard.errors import ExportError, InvalidParameterError  # noqa: E402
from oodguard.export.parity import DEFAULT_ATOL, DEFAULT_RTOL  # noqa: E402
from oodguard.training import Recipe  # noqa: E402
from oodguard.training.embedding import (  # noqa: E402
    CLASSIFIER_FEATURES,
    PRECISION_RCOND,
    LayerTap,
    class_gaussian,
    embed,
    graft_classifier_scores,
    head_columns,
)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(8 * 4 * 4, 24), nn.ReLU())
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def trained():  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = d.target
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(y <= 4))
    xi, yi = x[idx], y[idx]
    torch.manual_seed(0)
    clf = SmallCNN()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(xi[:500]), torch.from_numpy(yi[:500])
    for _ in range(60):
        loss = nn.functional.cross_entropy(clf(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    return clf, xi, x[y >= 5]


def _guard(trained, tmp_path_factory, autoencoder_on):  # type: ignore[no-untyped-def]
    clf, xi, x_out = trained
    out = tmp_path_factory.mktemp("emb") / "bundle"
    guard = oodguard.fit(xi[:500], xi[500:800], out=out, model=clf, layer="body",
                         autoencoder_on=autoencoder_on,
                         recipe=Recipe(max_epochs=40, batch_size=32), registry=None)
    return guard, clf, xi, x_out


@pytest.fixture(scope="module")
def guarded(trained, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The default: the autoencoder learns the classifier's inputs."""
    return _guard(trained, tmp_path_factory, "input")


@pytest.fixture(scope="module")
def guarded_layer(trained, tmp_path_factory):  # type: ignore[no-untyped-def]
    """``autoencoder_on="layer"``: the autoencoder learns the body's embeddings."""
    return _guard(trained, tmp_path_factory, "layer")


BOTH = pytest.mark.parametrize("which", ["guarded", "guarded_layer"])


@BOTH
def test_the_bundle_takes_the_classifiers_input_and_adds_the_classifier_features(  # type: ignore[no-untyped-def]
        which, request) -> None:
    guard, clf, xi, _ = request.getfixturevalue(which)
    on = "input" if which == "guarded" else "layer"
    m = guard.bundle.manifest
    assert m.input.shape == (1, 8, 8)
    assert CLASSIFIER_FEATURES == ("msp", "energy", "embedding_mahalanobis")
    assert m.feature_names[-3:] == CLASSIFIER_FEATURES
    assert guard.feature_names[-3:] == CLASSIFIER_FEATURES
    rec = m.dynamics["training"]["embedding"]
    labels = clf(torch.from_numpy(xi[:500])).argmax(1).numpy()
    rank = np.linalg.matrix_rank(_tied_cov(_body(clf, xi[:500]), labels), hermitian=True,
                                 rtol=PRECISION_RCOND)
    # the autoencoder learns the 1×8×8 images (a conv net) or the 24-d embeddings (an MLP)
    assert m.dynamics["training"]["arch"] == {"input": "conv2d", "layer": "mlp"}[on]
    assert rec == {"model": "SmallCNN", "layer": "body", "dim": 24, "autoencoder_on": on,
                   "extra_features": ["msp", "energy", "embedding_mahalanobis"],
                   "mahalanobis": {"labels": "predicted", "classes": len(np.unique(labels)),
                                   "rank": int(rank), "rcond": PRECISION_RCOND}}
    for name in CLASSIFIER_FEATURES:
        assert m.dynamics["stability"][name]["stable"], name


@BOTH
def test_a_rows_features_do_not_depend_on_its_batch(which, request) -> None:  # type: ignore[no-untyped-def]
    """Every column of the embedding graph, the classifier's three included, gives a row the
    same bits alone and in batches of 7 and 67 (ONNX Runtime's reductions and Log would round a
    row by its place in the batch: 14 of 67 rows changed before the aligned forms)."""
    guard, _, xi, x_out = request.getfixturevalue(which)
    assert guard.engine.batch_invariant
    x = np.concatenate([xi[800:850], x_out[:17]])
    whole = guard.engine.run(x)
    for size in (1, 7):
        parts = np.concatenate([guard.engine.run(x[i : i + size])
                                for i in range(0, len(x), size)])
        np.testing.assert_array_equal(parts.view(np.uint32), whole.view(np.uint32))


def test_the_classifier_body_runs_once_per_batch(guarded_layer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The grafted head shares the preprocessing's copy of the body's weights, so ONNX
    Runtime's common-subexpression elimination leaves one convolution where the graph had two
    (the body feeds both the autoencoder and the classifier's features)."""
    import onnx
    import onnxruntime as ort

    from oodguard.bundle import MODEL_FILE

    data = guarded_layer[0].bundle.files[MODEL_FILE]
    graph = onnx.load_from_string(data).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and convs[0].input[1:] == convs[1].input[1:]  # one set of weights
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    assert sum(n.op_type == "Conv" for n in optimized.node) == 1


@BOTH
def test_the_calibration_keeps_the_embedding_distance_and_the_reconstruction_error(  # type: ignore[no-untyped-def]
        which, request) -> None:
    """A guarded classifier's required baselines are the reconstruction error and the
    embedding distance, never reversed (one- or two-sided with the upper tail the major one);
    the latent distances are candidates like any feature."""
    guard, _, _, _ = request.getfixturevalue(which)
    assert "embedding_mahalanobis" in BASELINE_FEATURES
    assert required_baselines(guard.feature_names) == ("recon_error", "embedding_mahalanobis")
    used = [guard.feature_names[i] for i in guard.scorer.used]
    for name in ("recon_error", "embedding_mahalanobis"):
        assert name in used
        assert guard.scorer.direction[used.index(name)] in (0.0, 1.0)


def test_required_baselines() -> None:
    names = ("recon_error", "first_step", "latent_knn", "latent_mahalanobis")
    assert required_baselines(names) == ("recon_error", "latent_knn", "latent_mahalanobis")
    assert required_baselines((*names, *CLASSIFIER_FEATURES)) == CLASSIFIER_BASELINES
    assert CLASSIFIER_BASELINES == ("recon_error", "embedding_mahalanobis")
    assert required_baselines(("first_step", "msp")) == ()


@BOTH
def test_the_graphs_embeddings_and_logit_features_equal_torchs(which, request) -> None:  # type: ignore[no-untyped-def]
    guard, clf, xi, x_ood = request.getfixturevalue(which)
    model = onnx.load_from_string(guard.bundle.files["model.onnx"])
    layer = which == "guarded_layer"
    if layer:  # the preprocessing's output (the standardised embedding) as an extra output
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            "x_model", onnx.TensorProto.FLOAT, None))
    else:  # the images are in [0, 1]: the autoencoder takes them as they are
        assert "x_model" not in {o for n in model.graph.node for o in n.output}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([xi[800:], x_ood[:200]])
    features, *x_model = sess.run(None, {"x": x})
    # torch: the body's output, standardised with the training embeddings' mean and s.d.
    emb_train = embed(LayerTap(_copy(clf), "body"), xi[:500]).astype(np.float64)
    mean, std = emb_train.mean(axis=0), emb_train.std(axis=0)
    std = np.where(std > 1e-8 * max(float(np.abs(mean).max()), 1.0), std, 1.0)
    with torch.inference_mode():
        emb = clf.body(torch.from_numpy(x)).double().numpy()
        logits = clf(torch.from_numpy(x)).double()
    if layer:
        expected = (emb - mean) / std
        _, bad = compare_values(expected.ravel(), x_model[0].ravel(), DEFAULT_RTOL,
                                DEFAULT_ATOL)
        assert not bad.any()
    msp = torch.softmax(logits, 1).max(1).values.numpy()
    energy = (-torch.logsumexp(logits, 1)).numpy()
    maha = _mahalanobis(emb_train, clf(torch.from_numpy(xi[:500])).argmax(1).numpy(), emb)
    assert maha[len(xi) - 800:].mean() > 2 * maha[: len(xi) - 800].mean()  # digits 5-9 further
    for j, ref in enumerate((msp, energy, maha)):
        _, bad = compare_values(ref, features[:, -3 + j], DEFAULT_RTOL, DEFAULT_ATOL)
        assert not bad.any(), CLASSIFIER_FEATURES[j]
    # and the guard runs this graph (its engine's session options differ in the last bits)
    got = guard.check(x).features
    for j in range(features.shape[1]):
        _, bad = compare_values(features[:, j].astype(np.float64), got[:, j], DEFAULT_RTOL,
                                DEFAULT_ATOL)
        assert not bad.any(), guard.feature_names[j]


def _copy(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m).eval()


def _body(clf: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return clf.body(torch.from_numpy(x)).double().numpy()


def _tied_cov(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Lee et al.'s shared covariance: within-class scatter over N (float64)."""
    centred = emb.copy()
    for c in np.unique(labels):
        centred[labels == c] -= emb[labels == c].mean(axis=0)
    return centred.T @ centred / len(emb)


def _mahalanobis(emb_train: np.ndarray, labels: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """The reference: ``min_c (e − μ_c)ᵀ pinv(Σ) (e − μ_c)`` in float64, numpy's pinv."""
    prec = np.linalg.pinv(_tied_cov(emb_train, labels), rtol=PRECISION_RCOND, hermitian=True)
    d = np.stack([emb - emb_train[labels == c].mean(axis=0) for c in np.unique(labels)], axis=1)
    return np.einsum("ncd,de,nce->nc", d, prec, d).min(axis=1)


def test_class_gaussian_whitens_to_numpys_pinv_and_drops_dead_units() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    emb[:, 2] = 0.0  # a dead ReLU unit: no training variance
    labels = rng.integers(0, 3, 400)
    emb += 3.0 * labels[:, None]
    means, w = class_gaussian(emb, labels)
    assert means.shape == (3, 6) and w.shape == (5, 6)
    np.testing.assert_allclose(means, [emb[labels == c].mean(0) for c in range(3)], rtol=1e-12)
    x = rng.normal(size=(50, 6)) * 4.0
    x[:10, 2] = 5.0  # the dead direction is ignored, as pinv ignores it
    got = (((x[:, None, :] - means[None]) @ w.T) ** 2).sum(axis=2).min(axis=1)
    np.testing.assert_allclose(got, _mahalanobis(emb, labels, x), rtol=1e-9)
    # classes absent from the labels are skipped (argmax labels need not cover every class)
    assert class_gaussian(emb, np.where(labels == 1, 2, labels))[0].shape == (2, 6)


class _Identity(nn.Module):
    """The embedding is the input itself (``body``), with a linear head."""

    def __init__(self, d: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_the_mahalanobis_column_in_float32_equals_the_float64_reference(offset: float) -> None:
    from oodguard.training.embedding import ClassifierScores

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 600)
    # a large common offset (all-positive features far from 0) must not swamp the distances
    emb = offset + rng.normal(size=(600, 8)) * np.linspace(0.5, 2.0, 8) + 2.0 * labels[:, None]
    model = _Identity(8, 4).eval()
    scores = ClassifierScores(LayerTap(model, "body"), *class_gaussian(emb, labels))
    x = np.concatenate([emb[:100], offset + rng.normal(size=(100, 8)) * 6.0]).astype(np.float32)
    got = embed(scores, x)
    ref = _mahalanobis(emb, labels, x.astype(np.float64))
    assert np.median(ref[100:]) > 3 * np.median(ref[:100])
    _, bad = compare_values(ref, got[:, 2], DEFAULT_RTOL, DEFAULT_ATOL)
    assert not bad.any()


def test_class_gaussian_refuses_embeddings_that_do_not_vary() -> None:
    emb = np.repeat(np.arange(3.0)[:, None], 4, axis=1).repeat(10, axis=0)
    with pytest.raises(ExportError, match="do not vary within their predicted classes"):
        class_gaussian(emb, np.repeat(np.arange(3), 10))


def test_the_graft_appends_every_column_of_the_head() -> None:
    from oodguard.export.graphs import INPUT_NAME, OUTPUT_NAME

    def graph(k: int, out: str) -> onnx.ModelProto:
        node = onnx.helper.make_node("Slice", [INPUT_NAME, "s", "e", "a"], [out])
        inits = [onnx.numpy_helper.from_array(np.array([v], np.int64), n)
                 for n, v in (("s", 0), ("e", k), ("a", 1))]
        g = onnx.helper.make_graph(
            [node], "g", [onnx.helper.make_tensor_value_info(INPUT_NAME, 1, ["N", 8])],
            [onnx.helper.make_tensor_value_info(out, 1, ["N", k])], inits)
        return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])

    for k in (1, 2, 3, 5):
        head = graph(k, "scores")
        assert head_columns(head) == k
        merged = graft_classifier_scores(graph(4, OUTPUT_NAME), head)
        assert merged.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4 + k
        x = np.arange(16, dtype=np.float32).reshape(2, 8)
        got = ort.InferenceSession(merged.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})
        np.testing.assert_array_equal(got[0], np.concatenate([x[:, :4], x[:, :k]], axis=1))
    free = graph(2, "scores")
    free.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "k"
    with pytest.raises(ExportError, match="one output shaped"):
        head_columns(free)
    with pytest.raises(ExportError, match="one output shaped"):
        graft_classifier_scores(graph(4, OUTPUT_NAME), free)


def test_wrap_guards_the_classifier(guarded) -> None:  # type: ignore[no-untyped-def]
    guard, clf, xi, x_ood = guarded

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return clf(torch.from_numpy(x)).argmax(1).numpy()

    guarded_predict = guard.wrap(predict)
    noise = np.random.default_rng(3).uniform(0, 1, (50, 1, 8, 8)).astype(np.float32)
    out = guarded_predict(np.concatenate([xi[800:850], noise]))
    assert out.prediction.shape == (100,)
    # the policy runs the model on every row and flags by the guard's verdict (82% of this
    # noise measured at 40 epochs; the point here is the wrapping, not the detection rate)
    np.testing.assert_array_equal(out.result.is_ood, guard.check(
        np.concatenate([xi[800:850], noise])).is_ood)
    assert out.result.is_ood[50:].mean() > 0.5 > 0.2 > out.result.is_ood[:50].mean()
    with pytest.raises(oodguard.OODInputError):
        guard.wrap(predict, on_ood="raise")(noise)


def test_an_unknown_layer_is_refused_with_the_models_layer_names(tmp_path) -> None:
    x = np.random.default_rng(0).uniform(size=(300, 1, 8, 8)).astype(np.float32)
    with pytest.raises(InvalidParameterError, match=r"'layer' parameter.*'body', 'body\.0'"):
        oodguard.fit(x, x, out=tmp_path / "b", model=SmallCNN(), layer="backbone")
    with pytest.raises(InvalidParameterError, match="'layer' parameter"):
        oodguard.fit(x, x, out=tmp_path / "b", model=SmallCNN())


class _NoLogits(SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, 0]


def test_a_model_without_logits_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).uniform(size=(300, 1, 8, 8)).astype(np.float32)
    with pytest.raises(ExportError, match=r"logits shaped \(N, classes\)"):
        oodguard.fit(x, x, out=tmp_path / "b", model=_NoLogits(), layer="body")
    assert not (tmp_path / "b").exists()


def test_an_unknown_autoencoder_on_is_refused_before_training(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).uniform(size=(300, 1, 8, 8)).astype(np.float32)
    with pytest.raises(InvalidParameterError, match=r"'autoencoder_on'.*'input' or 'layer'"):
        oodguard.fit(x, x, out=tmp_path / "b", model=SmallCNN(), layer="body",
                     autoencoder_on="embedding")
    assert not (tmp_path / "b").exists()
