"""The ranker in torch, its losses, and warm starts.

Architecture (the cold-start model's, `loopwise.coldstart`, plus optional
extra layers): hashed sparse ids -> one shared ``nn.Embedding`` of
``spec.buckets`` rows (row 0 = padding, zero) summed over the fields ->
concatenated with the dense features -> ``layers`` ReLU layers -> a ReLU layer
of ``hidden_dim`` units (the second output ``hidden``, the error memory's
key) -> a linear logit, plus (``fm_dim`` > 0) a factorisation-machine
second-order term over the fields' own embeddings (Rendle 2010:
``0.5 * sum_k((sum_f v_fk)^2 - sum_f v_fk^2)``, every pair of fields, e.g.
user x item, in O(fields x k)) -> ``prob``. Summing the fields' embeddings
into one vector loses which user met which item; the FM term keeps those
interactions (on MovieLens it is what separates a personalised ranker from
a popularity prior). A fixed ``[batch, fields]`` id matrix and
a plain ``Embedding`` export to a cheap ONNX Gather (an ``EmbeddingBag`` with
offsets exports to a slow loop, see TOOLBOX.md).

Losses:

- examples: the unbiased (Rel-MF, Saito et al. 2020) clipped-IPS loss
  ``y*w*l_pos + (1 - y*w)*l_neg`` with ``l_pos = -log p`` and
  ``l_neg = -log(1 - p)``; ``w`` is the example's clipped inverse-propensity
  weight (1 for negatives), so with all weights 1 this is plain BCE. Its
  gradient in the logit is ``p - y*w``, bounded by the weight clip.
- preference pairs: Bradley-Terry ``-strength * log sigmoid(z_pref - z_other)``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class Ranker(nn.Module):
    def __init__(self, buckets: int, n_fields: int, n_dense: int, embedding_dim: int = 16,
                 hidden_dim: int = 64, layers: Sequence[int] = (), fm_dim: int = 0) -> None:
        super().__init__()
        self.config = {"buckets": buckets, "n_fields": n_fields, "n_dense": n_dense,
                       "embedding_dim": embedding_dim, "hidden_dim": hidden_dim, "layers": list(layers),
                       "fm_dim": fm_dim}
        self.embedding = nn.Embedding(buckets, embedding_dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, 0.0, 0.01)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        widths = [embedding_dim + n_dense, *layers]
        self.mlp = nn.Sequential(*[m for a, b in zip(widths[:-1], widths[1:], strict=True)
                                   for m in (nn.Linear(a, b), nn.ReLU())])
        self.to_hidden = nn.Linear(widths[-1], hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)
        self.fm: nn.Embedding | None = None
        if fm_dim > 0:
            self.fm = nn.Embedding(buckets, fm_dim, padding_idx=0)
            nn.init.normal_(self.fm.weight, 0.0, 0.01)
            with torch.no_grad():
                self.fm.weight[0].zero_()

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (trained with sparse gradients)."""
        return [self.embedding.weight] + ([self.fm.weight] if self.fm is not None else [])

    def set_sparse(self, sparse: bool) -> None:
        self.embedding.sparse = sparse
        if self.fm is not None:
            self.fm.sparse = sparse

    def logits(self, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.embedding(sparse).sum(dim=1), dense], dim=1)
        hidden = torch.relu(self.to_hidden(self.mlp(x)))
        logit = self.out(hidden).reshape(-1)
        if self.fm is not None:
            v = self.fm(sparse)  # [batch, fields, k]
            total = v.sum(dim=1)
            logit = logit + 0.5 * (total * total - (v * v).sum(dim=1)).sum(dim=1)
        return logit, hidden

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The serving contract: ``prob`` [n] and ``hidden`` [n, hidden_dim]."""
        logit, hidden = self.logits(sparse, dense)
        return torch.sigmoid(logit), hidden


def ips_loss(logit: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``y*w*(-log p) + (1 - y*w)*(-log(1 - p))`` (numerically stable in the logit)."""
    yw = label * weight
    return (yw * F.softplus(-logit) + (1.0 - yw) * F.softplus(logit)).mean()


def bradley_terry_loss(logit_pref: torch.Tensor, logit_other: torch.Tensor, strength: torch.Tensor
                       ) -> torch.Tensor:
    """Mean of ``-strength * log sigmoid(z_pref - z_other)``."""
    return (strength * F.softplus(logit_other - logit_pref)).mean()


# -- warm starts ----------------------------------------------------------------------------
def state_bytes(model: Ranker) -> bytes:
    buf = io.BytesIO()
    torch.save({"config": model.config, "state_dict": {k: v.detach().cpu() for k, v in
                                                       model.state_dict().items()}}, buf)
    return buf.getvalue()


def from_state_bytes(data: bytes) -> Ranker:
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = Ranker(**saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model


def init_from_coldstart(model: Ranker, onnx_bytes: bytes) -> bool:
    """Copy the cold-start graph's weights (its popularity prior) into a model of the
    same shape (no extra layers); False when the shapes differ."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load_from_string(onnx_bytes).graph
    except Exception:  # noqa: BLE001 - not an ONNX model we can read: start fresh
        return False
    inits: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    if model.config["layers"] or not {"embedding", "w1", "b1", "w2", "b2"} <= set(inits):
        return False
    want = {"embedding": tuple(model.embedding.weight.shape), "w1": tuple(model.to_hidden.weight.T.shape),
            "b1": tuple(model.to_hidden.bias.shape), "w2": tuple(model.out.weight.T.shape),
            "b2": tuple(model.out.bias.shape)}
    if any(tuple(np.shape(inits[k])) != shape for k, shape in want.items()):
        return False
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(np.array(inits["embedding"], dtype=np.float32)))
        model.to_hidden.weight.copy_(torch.from_numpy(np.array(inits["w1"], dtype=np.float32).T))
        model.to_hidden.bias.copy_(torch.from_numpy(np.array(inits["b1"], dtype=np.float32)))
        model.out.weight.copy_(torch.from_numpy(np.array(inits["w2"], dtype=np.float32).T))
        model.out.bias.copy_(torch.from_numpy(np.array(inits["b2"], dtype=np.float32)))
    return True
