"""ONNX export, parity with torch, and the serving contract, checked before publishing.

The names, the batch axis and the opset are `loopwise.modelstore.contract`'s;
`check_contract` runs the checks inference makes before a version serves
(services never import each other): the contract's inputs and outputs,
``prob`` [batch] in [0, 1] and ``hidden`` [batch, hidden_dim], a dynamic batch
axis, loadable by onnxruntime's CPU provider with a 4-row warm-up.
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import torch

from loopwise.features import FeatureSpec
from loopwise.modelstore.contract import BATCH_AXIS, INPUTS, OPSET, OUTPUTS, feeds

from .model import Ranker


class ExportError(Exception):
    pass


def export_onnx(model: Ranker, spec: FeatureSpec) -> bytes:
    model = model.eval().cpu()
    sparse = torch.ones((2, len(spec.sparse)), dtype=torch.int64)
    dense = torch.zeros((2, len(spec.dense)), dtype=torch.float32)
    buf = io.BytesIO()
    axes = {name: {0: BATCH_AXIS} for name in (*INPUTS, *OUTPUTS)}
    with torch.no_grad():
        torch.onnx.export(model, (sparse, dense), buf, input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return buf.getvalue()


def session(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def predict_onnx(sess: ort.InferenceSession, sparse: np.ndarray, dense: np.ndarray,
                 batch: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    probs, hiddens = [], []
    for start in range(0, len(sparse), batch):
        p, h = sess.run(list(OUTPUTS), feeds(sparse[start:start + batch].astype(np.int64),
                                             dense[start:start + batch].astype(np.float32)))
        probs.append(p)
        hiddens.append(h)
    if not probs:
        return np.zeros(0, dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(probs), np.concatenate(hiddens)


def parity(model: Ranker, onnx_bytes: bytes, sparse: np.ndarray, dense: np.ndarray) -> float:
    """Max absolute difference of ``prob`` and ``hidden`` between torch and onnxruntime."""
    model = model.eval().cpu()
    with torch.no_grad():
        tp, th = model(torch.from_numpy(sparse.astype(np.int64)), torch.from_numpy(dense.astype(np.float32)))
    op, oh = predict_onnx(session(onnx_bytes), sparse, dense)
    return float(max(np.abs(tp.numpy() - op).max(initial=0.0), np.abs(th.numpy() - oh).max(initial=0.0)))


def check_contract(onnx_bytes: bytes, spec: FeatureSpec, hidden_dim: int) -> None:
    """What ``loopwise.inference.models.load`` checks, without importing it."""
    try:
        sess = session(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise ExportError(f"not a loadable ONNX model: {exc}") from None
    inputs = {i.name for i in sess.get_inputs()}
    outputs = {o.name for o in sess.get_outputs()}
    if not set(INPUTS) <= inputs or not set(OUTPUTS) <= outputs:
        raise ExportError(f"inputs {sorted(inputs)} / outputs {sorted(outputs)}, "
                          f"expected {list(INPUTS)} / {list(OUTPUTS)}")
    for n in (4, 1, 37):  # the serving warm-up, and the batch axis is dynamic
        sparse = np.zeros((n, len(spec.sparse)), dtype=np.int64)
        sparse[:, :] = np.arange(1, n + 1)[:, None] % max(spec.buckets - 1, 1)
        dense = np.zeros((n, len(spec.dense)), dtype=np.float32)
        try:
            prob, hidden = sess.run(list(OUTPUTS), feeds(sparse, dense))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"warm-up run failed: {exc}") from None
        if prob.shape != (n,) or hidden.shape != (n, hidden_dim):
            raise ExportError(f"warm-up shapes prob {prob.shape} hidden {hidden.shape}, "
                              f"expected ({n},) and ({n}, {hidden_dim})")
        if not np.all((prob >= 0) & (prob <= 1)):
            raise ExportError("warm-up probabilities outside [0, 1]")
