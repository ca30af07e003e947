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


# -- issue 13: non-finite weights and scores are never served ---------------------

def poisoned(artifact: bytes, *, nan_from: int | None = None, overflow_row: int | None = None) -> bytes:
    """The cold-start model with embedding rows ``nan_from:`` set to NaN, or with a finite
    ``overflow_row`` (3e38) that makes hidden unit 5 infinite and ``prob`` NaN for ids in that row."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(artifact)
    inits = {t.name: t for t in m.graph.initializer}
    p_emb, p_w1, _, p_w2, _ = contract.COLDSTART_PARAMS
    emb, w1, w2 = (numpy_helper.to_array(inits[n]).copy() for n in (p_emb, p_w1, p_w2))
    if nan_from is not None:
        emb[nan_from:] = np.nan
    if overflow_row is not None:
        emb[overflow_row, 0] = 3e38
        w1[0, 5], w2[5, 0] = 10.0, 0.0
    for name, value in ((p_emb, emb), (p_w1, w1), (p_w2, w2)):
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return m.SerializeToString()


def unsampled_row() -> int:
    """A bucket the sampled warm-up ids never hit."""
    sampled = set(contract.warmup_inputs(SPEC)[0].ravel().tolist())
    return next(row for row in range(12_345, SPEC.buckets) if row not in sampled)


def test_nan_weights_beyond_the_warmup_ids_are_refused(tmp_path, coldstart_onnx):
    """Issue 13 item 4: embedding rows beyond the warm-up ids NaN passed the 4-id warm-up."""
    artifact = poisoned(coldstart_onnx, nan_from=100)
    with pytest.raises(contract.ContractError, match="non-finite") as info:
        contract.check_finite_weights(artifact)
    assert info.value.reason == "non_finite_weights"
    assert contract.check_finite_weights(coldstart_onnx) > SPEC.buckets
    store = ModelStore(str(tmp_path))
    store.publish("t", "m", artifact, feature_spec=SPEC, hidden_dim=64)
    with pytest.raises(ModelError) as err:
        models.load(store, "t", "m", "v1")
    assert err.value.reason == "non_finite_weights"


def test_the_warmup_replays_recent_real_inputs(tmp_path, coldstart_onnx):
    """Issue 13 item 11: a model failing on real inputs passed a warm-up on 4 fixed ids."""
    row = unsampled_row()
    store = ModelStore(str(tmp_path))
    store.publish("t", "m", poisoned(coldstart_onnx, overflow_row=row), feature_spec=SPEC, hidden_dim=64)
    registry = models.ModelRegistry()
    guard = registry.guard("t", "m")
    assert models.load(store, "t", "m", "v1", guard=guard).version == "v1"  # finite weights, sampled ids pass
    sparse = np.ones((200, len(SPEC.sparse)), dtype=np.int64)
    sparse[150, 1] = row
    guard.remember(sparse, np.zeros((200, len(SPEC.dense)), dtype=np.float32))
    guard.remember(sparse[140:160], np.zeros((20, len(SPEC.dense)), dtype=np.float32))
    with pytest.raises(ModelError, match="warm-up") as err:
        models.load(store, "t", "m", "v1", guard=guard)
    assert err.value.reason == "warmup_nonfinite"


def test_nonfinite_scores_are_answered_by_the_previous_good_version(tmp_path, coldstart_onnx):
    row = unsampled_row()
    store = ModelStore(str(tmp_path))
    store.publish("t", "m", coldstart_onnx, feature_spec=SPEC, hidden_dim=64)
    store.publish("t", "m", poisoned(coldstart_onnx, overflow_row=row), feature_spec=SPEC, hidden_dim=64)
    counted: list[tuple[str, str, str, str]] = []
    registry = models.ModelRegistry(lambda *labels: counted.append(labels))
    good = models.load(store, "t", "m", "v1", guard=registry.guard("t", "m"))
    registry.put(good)
    bad = models.load(store, "t", "m", "v2", guard=registry.guard("t", "m"))
    assert registry.put(bad) is good and registry.guard("t", "m").fallback is good
    sparse = np.ones((5, len(SPEC.sparse)), dtype=np.int64)
    dense = np.zeros((5, len(SPEC.dense)), dtype=np.float32)
    assert np.isfinite(bad.score(sparse, dense)[0]).all() and counted == []
    sparse[2, 1] = row
    assert np.isnan(bad.run(sparse, dense)[0][2])
    prob, hidden = bad.score(sparse, dense)
    assert np.isfinite(prob).all() and np.isfinite(hidden).all()
    np.testing.assert_array_equal(prob, good.run(sparse, dense)[0])
    assert counted == [("t", "m", "v2", "fallback")]
    # Without a good version the call fails rather than answering NaN.
    alone = models.ModelRegistry(lambda *labels: counted.append(labels))
    only = models.load(store, "t", "m", "v2", guard=alone.guard("t", "m"))
    alone.put(only)
    with pytest.raises(ModelError) as err:
        only.score(sparse, dense)
    assert err.value.reason == "nonfinite_scores" and counted[-1] == ("t", "m", "v2", "failed")
    # A version seen answering non-finite scores never becomes the fallback.
    registry.put(good)
    assert registry.guard("t", "m").fallback is good


def test_the_pointer_is_persisted_in_the_store(tmp_path):
    store = ModelStore(str(tmp_path))
    assert store.read_pointer("t", "m") == (None, [])
    store.write_pointer("t", "m", "v3", [{"from": "v2", "to": "v3"}])
    assert store.read_pointer("t", "m") == ("v3", [{"from": "v2", "to": "v3"}])
    assert store.versions("t", "m") == [] and store.models() == []
    (tmp_path / "t" / "m" / "pointer.json").write_text("{not json")
    assert store.read_pointer("t", "m") == (None, [])
    with pytest.raises(StoreError):
        store.write_pointer("t", "m", "latest", [])
