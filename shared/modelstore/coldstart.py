"""The cold-start model: a small network a fresh stack serves at once.

Built directly as an ONNX graph (no torch needed to serve or to build it) with
the architecture the trainer uses: hashed sparse ids -> one embedding table
(row 0 = padding, zero) summed over fields, concatenated with the dense
features, an MLP layer whose ReLU output is the second output ``hidden``
(the error memory's key), and a sigmoid output ``prob`` (the names and the
opset of `loopwise.modelstore.contract`).

Its weights encode a prior, not noise: the output starts at a base rate, and
the dense feature ``candidate.popularity`` (if the spec has it) raises the
score, so a fresh stack ranks popular candidates first. Embeddings start small
and random so that training has something to move.
"""

from __future__ import annotations

import math

import numpy as np

from loopwise.features import FeatureSpec

from . import contract
from .store import Manifest, ModelStore

DEFAULT_SPEC = FeatureSpec(
    sparse=("request.user_id", "candidate.id", "user.gender", "user.age_group", "user.occupation",
            "candidate.genre", "candidate.decade", "context.hour"),
    dense=("candidate.popularity", "user.activity"),
    buckets=1 << 18,
)
EMBEDDING_DIM = 16
HIDDEN_DIM = 64
BASE_RATE = 0.1


def build_onnx(spec: FeatureSpec = DEFAULT_SPEC, *, embedding_dim: int = EMBEDDING_DIM,
               hidden_dim: int = HIDDEN_DIM, base_rate: float = BASE_RATE, seed: int = 0) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    fields, n_dense = len(spec.sparse), len(spec.dense)
    emb = rng.normal(0.0, 0.01, size=(spec.buckets, embedding_dim)).astype(np.float32)
    emb[0] = 0.0
    w1 = rng.normal(0.0, 0.05, size=(embedding_dim + n_dense, hidden_dim)).astype(np.float32)
    b1 = np.zeros(hidden_dim, dtype=np.float32)
    w2 = rng.normal(0.0, 0.05, size=(hidden_dim, 1)).astype(np.float32)
    b2 = np.array([math.log(base_rate / (1 - base_rate))], dtype=np.float32)
    if "candidate.popularity" in spec.dense:
        j = embedding_dim + spec.dense.index("candidate.popularity")
        w1[:, 0] = 0.0
        w1[j, 0] = 1.0  # hidden unit 0 carries popularity ...
        w2[0, 0] = 2.0  # ... and raises the score

    p_emb, p_w1, p_b1, p_w2, p_b2 = contract.COLDSTART_PARAMS
    sparse_in, dense_in = contract.INPUTS
    prob_out, hidden_out = contract.OUTPUTS
    batch = contract.BATCH_AXIS
    inits = [numpy_helper.from_array(a, name) for a, name in (
        (emb, p_emb), (w1, p_w1), (b1, p_b1), (w2, p_w2), (b2, p_b2),
        (np.array([1], dtype=np.int64), "axis1"), (np.array([-1], dtype=np.int64), "flat"))]
    nodes = [
        helper.make_node("Gather", [p_emb, sparse_in], ["emb_fields"], axis=0),
        helper.make_node("ReduceSum", ["emb_fields", "axis1"], ["emb_sum"], keepdims=0),
        helper.make_node("Concat", ["emb_sum", dense_in], ["x"], axis=1),
        helper.make_node("Gemm", ["x", p_w1, p_b1], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], [hidden_out]),
        helper.make_node("Gemm", [hidden_out, p_w2, p_b2], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob2d"]),
        helper.make_node("Reshape", ["prob2d", "flat"], [prob_out]),
    ]
    graph = helper.make_graph(
        nodes, "loopwise_ranker",
        inputs=[helper.make_tensor_value_info(sparse_in, TensorProto.INT64, [batch, fields]),
                helper.make_tensor_value_info(dense_in, TensorProto.FLOAT, [batch, n_dense])],
        outputs=[helper.make_tensor_value_info(prob_out, TensorProto.FLOAT, [batch]),
                 helper.make_tensor_value_info(hidden_out, TensorProto.FLOAT, [batch, hidden_dim])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", contract.OPSET)],
                              producer_name="loopwise.coldstart")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ensure(store: ModelStore, tenant: str, model: str, spec: FeatureSpec = DEFAULT_SPEC) -> Manifest | None:
    """Publish the cold-start model as v1 unless (tenant, model) has a version already."""
    if store.latest(tenant, model) is not None:
        return None
    return store.publish(tenant, model, build_onnx(spec), feature_spec=spec, hidden_dim=HIDDEN_DIM,
                         source="coldstart")
