"""The embedding guard (oodguard.fit(model=, layer=)): one ONNX graph from the classifier's own
input through its feature layer and the autoencoder's trajectory, plus the classifier's msp and
energy; the graph's embeddings and classifier features equal torch's within the parity
tolerance; guard.wrap guards the classifier; refusals."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

import oodguard  # noqa: E402
from oodguard.bundle.reference import compare_values  # noqa: E402
from oodguard.errors import InvalidParameterError  # noqa: E402
from oodguard.export.parity import DEFAULT_ATOL, DEFAULT_RTOL  # noqa: E402
from oodguard.training import Recipe  # noqa: E402
from oodguard.training.embedding import CLASSIFIER_FEATURES, LayerTap, embed  # noqa: E402


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(8 * 4 * 4, 24), nn.ReLU())
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):  # type: ignore[no-untyped-def]
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
    out = tmp_path_factory.mktemp("emb") / "bundle"
    guard = oodguard.fit(xi[:500], xi[500:800], out=out, model=clf, layer="body",
                         recipe=Recipe(max_epochs=40, batch_size=32), registry=None)
    return guard, clf, xi, x[y >= 5]


def test_the_bundle_takes_the_classifiers_input_and_adds_msp_and_energy(guarded) -> None:  # type: ignore[no-untyped-def]
    guard, clf, xi, _ = guarded
    m = guard.bundle.manifest
    assert m.input.shape == (1, 8, 8)
    assert m.feature_names[-2:] == CLASSIFIER_FEATURES
    rec = m.dynamics["training"]["embedding"]
    assert rec == {"model": "SmallCNN", "layer": "body", "dim": 24,
                   "extra_features": ["msp", "energy"]}
    assert m.dynamics["stability"]["msp"]["stable"] and m.dynamics["stability"]["energy"]["stable"]


def test_the_graphs_embeddings_and_logit_features_equal_torchs(guarded) -> None:  # type: ignore[no-untyped-def]
    guard, clf, xi, x_ood = guarded
    model = onnx.load_from_string(guard.bundle.files["model.onnx"])
    # the preprocessing's output (the standardised embedding) as an extra graph output
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        "x_model", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([xi[800:], x_ood[:200]])
    features, x_model = sess.run(None, {"x": x})
    # torch: the body's output, standardised with the training embeddings' mean and s.d.
    emb_train = embed(LayerTap(_copy(clf), "body"), xi[:500]).astype(np.float64)
    mean, std = emb_train.mean(axis=0), emb_train.std(axis=0)
    std = np.where(std > 1e-8 * max(float(np.abs(mean).max()), 1.0), std, 1.0)
    with torch.inference_mode():
        emb = clf.body(torch.from_numpy(x)).double().numpy()
        logits = clf(torch.from_numpy(x)).double()
    expected = (emb - mean) / std
    _, bad = compare_values(expected.ravel(), x_model.ravel(), DEFAULT_RTOL, DEFAULT_ATOL)
    assert not bad.any()
    msp = torch.softmax(logits, 1).max(1).values.numpy()
    energy = (-torch.logsumexp(logits, 1)).numpy()
    for j, ref in enumerate((msp, energy)):
        _, bad = compare_values(ref, features[:, -2 + j], DEFAULT_RTOL, DEFAULT_ATOL)
        assert not bad.any()
    # and the guard runs this graph (its engine's session options differ in the last bits)
    got = guard.check(x).features
    for j in range(features.shape[1]):
        _, bad = compare_values(features[:, j].astype(np.float64), got[:, j], DEFAULT_RTOL,
                                DEFAULT_ATOL)
        assert not bad.any(), guard.feature_names[j]


def _copy(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m).eval()


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
