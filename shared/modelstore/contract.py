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
"""

from __future__ import annotations

from typing import Any

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
