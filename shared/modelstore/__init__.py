"""The model lifecycle in one place.

- `contract`: the ONNX input/output names, the opset, the default model name
  and the cold-start parameter names;
- `store`: versions on disk or any fsspec URL (`ModelStore`, `Manifest`),
  extra files written before the manifest;
- `pointers`: which version serves (the Redis pointer, else the newest),
  pointer moves with their history, rollback;
- `coldstart`: the model a fresh stack serves (needs ``onnx`` to build).
- `sparse`: the ranker's additive sparse tables outside the graph, their layout,
  and the deltas that update them between full versions.

The store's names are re-exported here: ``from loopwise.modelstore import ModelStore``.
"""

from .store import Manifest, ModelStore, StoreError, version_number

__all__ = ["Manifest", "ModelStore", "StoreError", "version_number"]
