import numpy as np
import onnxruntime as ort
import pytest

from loopwise.errors import ModelError
from loopwise.features import FeatureSpec
from loopwise.inference import models
from loopwise.modelstore import Manifest, ModelStore, StoreError, coldstart, contract

SPEC = coldstart.DEFAULT_SPEC


def test_publish_versions_and_load(tmp_path, coldstart_onnx):
    store = ModelStore(str(tmp_path))
    m1 = store.publish("t", "ranker", coldstart_onnx, feature_spec=SPEC, hidden_dim=64)
    m2 = store.publish("t", "ranker", coldstart_onnx, feature_spec=SPEC, hidden_dim=64, parent_version="v1",
                       metrics={"auc": 0.7})
    assert (m1.version, m2.version) == ("v1", "v2")
    assert store.versions("t", "ranker") == ["v1", "v2"]
    assert store.latest("t", "ranker") == "v2"
    assert store.models() == [("t", "ranker")]
    data, manifest = store.load("t", "ranker", "v2")
    assert data == coldstart_onnx
    assert manifest.parent_version == "v1" and manifest.metrics == {"auc": 0.7}
    assert manifest.spec() == SPEC


def test_version_numbers_sort_numerically(tmp_path):
    store = ModelStore(str(tmp_path))
    for _ in range(11):
        store.publish("t", "m", b"x", feature_spec=SPEC, hidden_dim=1)
    assert store.latest("t", "m") == "v11"


def test_incomplete_version_is_invisible(tmp_path):
    store = ModelStore(str(tmp_path))
    (tmp_path / "t" / "m" / "v1").mkdir(parents=True)
    (tmp_path / "t" / "m" / "v1" / "model.onnx").write_bytes(b"half written")
    assert store.versions("t", "m") == []
    assert store.publish("t", "m", b"x", feature_spec=SPEC, hidden_dim=1).version == "v2"


def test_corrupt_artifact_is_refused(tmp_path, coldstart_onnx):
    store = ModelStore(str(tmp_path))
    store.publish("t", "m", coldstart_onnx, feature_spec=SPEC, hidden_dim=64)
    (tmp_path / "t" / "m" / "v1" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupt"):
        store.load("t", "m", "v1")
    with pytest.raises(ModelError, match="corrupt"):
        models.load(store, "t", "m", "v1")


class RecordingFs:
    """The store's filesystem, recording every file opened for writing (and failing one)."""

    def __init__(self, fs, fail_on: str = "") -> None:
        self.fs, self.fail_on = fs, fail_on
        self.written: list[str] = []

    def open(self, path: str, mode: str = "rb", **kwargs):
        name = path.rsplit("/", 1)[-1]
        if "w" in mode:
            if name == self.fail_on:
                raise OSError(f"crash before writing {name}")
            self.written.append(name)
        return self.fs.open(path, mode, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.fs, name)


def recording(url: str, fail_on: str = "") -> tuple[ModelStore, RecordingFs]:
    store = ModelStore(url)
    store.fs = RecordingFs(store.fs, fail_on)
    return store, store.fs


def test_extra_files_are_written_before_the_manifest(tmp_path):
    store, fs = recording(str(tmp_path))
    m = store.publish("t", "m", b"onnx", feature_spec=SPEC, hidden_dim=1, extras={"weights.pt": b"w"})
    assert fs.written == ["model.onnx", "weights.pt", "manifest.json"]
    assert store.extra("t", "m", m.version, "weights.pt") == b"w"


def test_a_crash_before_the_manifest_leaves_no_version(tmp_path):
    crashing, _ = recording(str(tmp_path), fail_on="manifest.json")
    with pytest.raises(OSError, match="crash"):
        crashing.publish("t", "m", b"onnx", feature_spec=SPEC, hidden_dim=1, extras={"weights.pt": b"w"})
    assert (tmp_path / "t" / "m" / "v1" / "weights.pt").read_bytes() == b"w"
    store = ModelStore(str(tmp_path))
    assert store.versions("t", "m") == [] and store.latest("t", "m") is None
    assert store.publish("t", "m", b"onnx", feature_spec=SPEC, hidden_dim=1).version == "v2"


def test_extra_files_are_checked(tmp_path):
    import hashlib

    store = ModelStore(str(tmp_path))
    store.publish("t", "m", b"onnx", feature_spec=SPEC, hidden_dim=1, extras={"weights.pt": b"w"})
    assert store.extra("t", "m", "v1", "weights.pt", sha256=hashlib.sha256(b"w").hexdigest()) == b"w"
    with pytest.raises(StoreError, match="corrupt"):
        store.extra("t", "m", "v1", "weights.pt", sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(StoreError, match="no file"):
        store.extra("t", "m", "v1", "missing.pt")
    for name in ("manifest.json", "model.onnx", "../escape"):
        with pytest.raises(StoreError):
            store.publish("t", "m", b"onnx", feature_spec=SPEC, hidden_dim=1, extras={name: b"x"})
    assert store.versions("t", "m") == ["v1"]


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(StoreError):
        ModelStore(str(tmp_path)).publish("../etc", "m", b"x", feature_spec=SPEC, hidden_dim=1)


def test_manifest_round_trip():
    m = Manifest(tenant="t", model="m", version="v1", sha256="ab", feature_spec=SPEC.to_dict(), hidden_dim=8)
    assert Manifest.from_json(m.to_json()) == m


def test_coldstart_model_serves_and_prefers_popular(coldstart_onnx):
    session = ort.InferenceSession(coldstart_onnx, providers=["CPUExecutionProvider"])
    n = 5
    sparse = np.zeros((n, len(SPEC.sparse)), dtype=np.int64)
    dense = np.zeros((n, len(SPEC.dense)), dtype=np.float32)
    dense[:, SPEC.dense.index("candidate.popularity")] = np.linspace(0, 1, n)
    prob, hidden = session.run(list(contract.OUTPUTS), contract.feeds(sparse, dense))
    assert prob.shape == (n,) and hidden.shape == (n, coldstart.HIDDEN_DIM)
    assert (np.diff(prob) > 0).all()  # more popular -> higher score
    assert prob[0] == pytest.approx(coldstart.BASE_RATE, abs=0.05)


def test_coldstart_ensure_is_idempotent(tmp_path):
    store = ModelStore(str(tmp_path))
    assert coldstart.ensure(store, "t", "ranker") is not None
    assert coldstart.ensure(store, "t", "ranker") is None
    assert store.versions("t", "ranker") == ["v1"]


def test_wrong_input_names_are_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["prob"]), helper.make_node("Identity", ["x"], ["hidden"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    store = ModelStore(str(tmp_path))
    store.publish("t", "m", model.SerializeToString(), feature_spec=SPEC, hidden_dim=1)
    with pytest.raises(ModelError, match="inputs"):
        models.load(store, "t", "m", "v1")


def test_wrong_hidden_width_fails_warmup(tmp_path, coldstart_onnx):
    store = ModelStore(str(tmp_path))
    store.publish("t", "m", coldstart_onnx, feature_spec=SPEC, hidden_dim=32)
    with pytest.raises(ModelError, match="warm-up"):
        models.load(store, "t", "m", "v1")


def test_spec_mismatch_fails_warmup(tmp_path, coldstart_onnx):
    store = ModelStore(str(tmp_path))
    other = FeatureSpec(sparse=("candidate.id",), dense=("candidate.popularity",), buckets=SPEC.buckets)
    store.publish("t", "m", coldstart_onnx, feature_spec=other, hidden_dim=64)
    with pytest.raises(ModelError):
        models.load(store, "t", "m", "v1")
