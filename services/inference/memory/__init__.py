"""The error memory (ReLoop2, docs/methods.md §1): a fast learner beside the served model.

- `sketch.Sketch`: the locality-sensitive sketch (default; constant memory).
- `knn.ExactKnn`: exact kNN over recent errors (the reference in tests and benchmarks).
- `compensate`: the compensation formula both share.
- `config.MemoryConfig`: mode (off | shadow | on), K, L, lambda, tau, gamma, prior, decay, the pair table.
- `pairs.PairTable`: the exact (user, item) table beside the sketch.
- `bank.MemoryBank`: the memories per (tenant, model, version) of one replica.
- `consumer.ErrorConsumer`: the memory's side of ``loopwise.errors.v1`` (warm-up offsets,
  decoded errors into the bank; the replica's `errors_reader.ErrorsReader` reads the topic).
"""

from .bank import MemoryBank, ModelMemory
from .compensate import Neighbours, Params, compensate
from .config import MODES, MemoryConfig, per_model
from .consumer import ErrorConsumer
from .knn import ExactKnn
from .sketch import Sketch, canonical

__all__ = ["MODES", "ErrorConsumer", "ExactKnn", "MemoryBank", "MemoryConfig", "ModelMemory", "Neighbours",
           "Params", "Sketch", "canonical", "compensate", "per_model"]
