"""The serving contract of a ranking model, defined once.

Every producer of a model (the cold-start builder, the trainer's export) and
every consumer (inference, the trainer's contract check, the benchmarks)
takes these names from here:

- inputs ``sparse_ids`` int64 ``[batch, fields]`` (hashed ids, one column per
  sparse field of the feature spec) and ``dense`` float32 ``[batch, dense]``;
- outputs ``prob`` float32 ``[batch]`` in [0, 1] and ``hidden`` float32
  ``[batch, hidden_dim]`` (the last ReLU layer, the error memory's key);
- a dynamic first axis named ``batch``, ONNX opset `OPSET`.

`DEFAULT_MODEL` is the model a request, a record or a command that names
none refers to. `COLDSTART_PARAMS` are the initializer names of the
cold-start graph (`loopwise.modelstore.coldstart`) that the trainer copies
into a torch model of the same shape.

`check_artifact` is what a version must pass before it serves (inference's
load, ``loopwise model promote``, rollback, the listing): finite weights
(`check_finite_weights`, read from the protobuf without the ``onnx``
package), an onnxruntime session, the contract's inputs and outputs and a
warm-up on real recent inputs plus ids sampled across the hash space, every
output finite (`check_outputs`, also what `Rank` checks per request).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from loopwise.features import FeatureSpec

SPARSE_INPUT = "sparse_ids"
DENSE_INPUT = "dense"
PROB_OUTPUT = "prob"
HIDDEN_OUTPUT = "hidden"
INPUTS = (SPARSE_INPUT, DENSE_INPUT)
OUTPUTS = (PROB_OUTPUT, HIDDEN_OUTPUT)
BATCH_AXIS = "batch"
OPSET = 17

DEFAULT_MODEL = "ranker"

# embedding [buckets, embedding_dim], w1 [embedding_dim + dense, hidden_dim], b1 [hidden_dim],
# w2 [hidden_dim, 1], b2 [1].
COLDSTART_PARAMS = ("embedding", "w1", "b1", "w2", "b2")


def feeds(sparse: Any, dense: Any) -> dict[str, Any]:
    """The input feed of one run: ``{"sparse_ids": sparse, "dense": dense}``."""
    return {SPARSE_INPUT: sparse, DENSE_INPUT: dense}


class ContractError(Exception):
    """An artifact that breaks the serving contract; ``reason`` is a short label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- weights: every floating initializer finite ----------------------------------
#
# Read from the ONNX protobuf wire format directly (ModelProto.graph = 7,
# GraphProto.initializer = 5, TensorProto fields below), so that a service
# without the ``onnx`` package (inference) checks the weights it loads.

_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 16: "bfloat16"}
_T_DATA_TYPE, _T_FLOAT_DATA, _T_INT32_DATA, _T_NAME, _T_RAW, _T_DOUBLE_DATA, _T_LOCATION = 2, 4, 5, 8, 9, 10, 14


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ContractError("truncated protobuf", "not_onnx")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one protobuf message: ints for varints, views for the rest."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ContractError(f"unsupported protobuf wire type {wire}", "not_onnx")
        if pos > len(buf):
            raise ContractError("truncated protobuf", "not_onnx")
        yield number, wire, value


def _tensor_values(tensor: memoryview) -> tuple[str, np.ndarray | None]:
    """(name, values) of a TensorProto; values None for a non-floating tensor."""
    name, dtype, raw, packed, external = "", 0, None, [], False
    for number, wire, value in _fields(tensor):
        if number == _T_NAME and wire == 2:
            name = bytes(value).decode(errors="replace")
        elif number == _T_DATA_TYPE and wire == 0:
            dtype = value
        elif number == _T_RAW and wire == 2:
            raw = value
        elif number in (_T_FLOAT_DATA, _T_INT32_DATA, _T_DOUBLE_DATA):
            packed.append((number, wire, value))
        elif number == _T_LOCATION and wire == 0 and value == 1:
            external = True
    kind = _FLOAT_TYPES.get(dtype)
    if kind is None:
        return name, None
    if external:
        raise ContractError(f"initializer {name!r} is stored outside the artifact", "bad_weights")
    if raw is not None:
        if kind == "bfloat16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            return name, bits.view(np.float32)
        return name, np.frombuffer(raw, dtype=kind)
    parts = []
    for number, wire, value in packed:
        if number == _T_FLOAT_DATA:
            parts.append(np.frombuffer(value, dtype=np.float32))
        elif number == _T_DOUBLE_DATA:
            parts.append(np.frombuffer(value, dtype=np.float64))
        elif wire == 2:  # float16 / bfloat16 bits in int32_data (packed varints)
            bits, pos, view = [], 0, value
            while pos < len(view):
                v, pos = _varint(view, pos)
                bits.append(v)
            u16 = np.asarray(bits, dtype=np.uint16)
            parts.append(u16.view(np.float16).astype(np.float32) if kind == np.float16
                         else (u16.astype(np.uint32) << 16).view(np.float32))
    return name, np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def check_finite_weights(artifact: bytes) -> int:
    """Every floating initializer of the graph is finite (else `ContractError`
    with reason ``non_finite_weights``); returns the number of values checked."""
    checked = 0
    graph = None
    for number, wire, value in _fields(memoryview(artifact)):
        if number == 7 and wire == 2:
            graph = value
    if graph is None:
        raise ContractError("no graph in the artifact", "not_onnx")
    for number, wire, value in _fields(graph):
        if number != 5 or wire != 2:
            continue
        name, values = _tensor_values(value)
        if values is None:
            continue
        bad = int(values.size - np.isfinite(values).sum())
        if bad:
            raise ContractError(f"initializer {name!r} has {bad} non-finite value(s) of {values.size}",
                                "non_finite_weights")
        checked += values.size
    return checked


# -- a whole artifact: weights, loadable, contract I/O, warm-up ------------------

WARMUP_SAMPLED = 256


def warmup_inputs(spec: FeatureSpec, recent: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                  sampled: int = WARMUP_SAMPLED, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Warm-up rows: ``recent`` real inputs ((sparse, dense) pairs of the right
    widths), then ``sampled`` rows of ids drawn across the whole hash space
    (the first and last bucket included) with zero dense features."""
    fields, n_dense = len(spec.sparse), len(spec.dense)
    rng = np.random.default_rng(seed)
    top = max(spec.buckets, 2)
    ids = rng.integers(1, top, size=(sampled, fields), dtype=np.int64)
    ids[0, :], ids[-1, :] = 1, top - 1
    sparse = [ids]
    dense = [np.zeros((sampled, n_dense), dtype=np.float32)]
    for s, d in recent:
        if s.ndim == 2 and d.ndim == 2 and s.shape[1] == fields and d.shape[1] == n_dense and len(s) == len(d):
            sparse.append(s.astype(np.int64, copy=False))
            dense.append(d.astype(np.float32, copy=False))
    return np.concatenate(sparse), np.concatenate(dense)


def check_outputs(prob: Any, hidden: Any, n: int, hidden_dim: int) -> None:
    """``prob`` [n] finite in [0, 1], ``hidden`` [n, hidden_dim] finite (else `ContractError`)."""
    if prob.shape != (n,) or hidden.shape != (n, hidden_dim):
        raise ContractError(f"output shapes prob {prob.shape} hidden {hidden.shape}, "
                            f"expected ({n},) and ({n}, {hidden_dim})", "warmup_shapes")
    if not (np.isfinite(prob).all() and np.isfinite(hidden).all()):
        raise ContractError(f"{int(n - np.isfinite(prob).sum())} of {n} scores are not finite",
                            "warmup_nonfinite")
    if not np.all((prob >= 0) & (prob <= 1)):
        raise ContractError("probabilities outside [0, 1]", "warmup_range")


def session(artifact: bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session (`ContractError` ``not_onnx`` when it cannot be built)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad artifact
        raise ContractError(f"not a loadable ONNX model: {exc}", "not_onnx") from None


def check_artifact(artifact: bytes, spec: FeatureSpec, hidden_dim: int, *, threads: int = 1,
                   recent: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Any:
    """What a version must pass before it serves, in one place: finite weights,
    an onnxruntime session, the contract's inputs and outputs, and a warm-up on
    `warmup_inputs` (``recent`` real inputs plus ids across the hash space)
    whose outputs pass `check_outputs`. Returns the session; `ContractError` says why not."""
    if artifact[:1] != b"\x08":  # ModelProto starts with ir_version (field 1, varint)
        raise ContractError("not an ONNX model (no ir_version first)", "not_onnx")
    check_finite_weights(artifact)
    sess = session(artifact, threads)
    inputs = {i.name for i in sess.get_inputs()}
    outputs = {o.name for o in sess.get_outputs()}
    if not set(INPUTS) <= inputs or not set(OUTPUTS) <= outputs:
        raise ContractError(f"inputs {sorted(inputs)} / outputs {sorted(outputs)}, "
                            f"expected {list(INPUTS)} / {list(OUTPUTS)}", "wrong_io")
    sparse, dense = warmup_inputs(spec, recent)
    try:
        prob, hidden = sess.run(list(OUTPUTS), feeds(sparse, dense))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise ContractError(f"warm-up run failed: {exc}", "warmup_failed") from None
    check_outputs(np.asarray(prob), np.asarray(hidden), len(sparse), hidden_dim)
    return sess
