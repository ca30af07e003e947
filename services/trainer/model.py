"""The ranker in torch, its losses, and warm starts.

Architecture (the cold-start model's, `loopwise.modelstore.coldstart`, plus optional
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
a popularity prior), plus (``linear``) first-order per-id weights (an
``Embedding(buckets, 1)`` summed over the fields, VW's per-feature weights)
and (``crosses``) hashed pair weights of two fields (VW's ``-q``: the pair id
is hashed in the graph from the two ids, so the ONNX inputs are unchanged).
The tables train with row-wise Adagrad (`adagrad_step`) whose accumulators
are buffers saved with the weights. A fixed ``[batch, fields]`` id matrix and
a plain ``Embedding`` export to a cheap ONNX Gather (an ``EmbeddingBag`` with
offsets exports to a loop, measured about 7x slower per request in onnxruntime).

Losses:

- examples: the unbiased (Rel-MF, Saito et al. 2020) clipped-IPS loss
  ``y*w*l_pos + (1 - y*w)*l_neg`` with ``l_pos = -log p`` and
  ``l_neg = -log(1 - p)``; ``w`` is the example's clipped inverse-propensity
  weight (1 for negatives), so with all weights 1 this is plain BCE. Its
  gradient in the logit is ``p - y*w``, bounded by the weight clip.
  With ``trainer_weighting=sample`` rows are drawn in
  proportion to their weights and `sampled_ips_loss` (the same objective in
  expectation, gradients bounded by 1) is applied instead.
- fake-negative examples (the miner's ``fnw`` mode: every impression at once as a
  negative, a click later as a positive duplicate): each row's loss above times its
  FNW importance weight (`fnw_weights`, Ktena et al., RecSys 2019) from the model's
  own current estimate ``f`` (no gradient through it): ``1 + f`` on a positive,
  ``(1 - f)(1 + f)`` on a negative. The observed labels follow
  ``b(y=1|x) = p/(1+p)`` (one negative per impression plus a positive per click), and
  ``p(y|x)/b(y|x)`` is exactly these weights, so the expected weighted loss is that of
  the true labels. With IPS weights the positive duplicate's Rel-MF loss
  ``w*l_pos + (1 - w)*l_neg`` is weighed by ``1 + f``: in expectation
  ``(1-p)*l_neg + p*(w*l_pos + (1-w)*l_neg)``, the window mode's IPS loss of the
  same candidate. ``p`` there is the *click* probability, while a model trained with
  IPS weights estimates clicks times ``w``: ``f`` is its probability divided by the
  candidate's click weight (``Example.click_weight``). Its own probability instead
  under-weighs the negatives of high-scored items ((1 - f) -> 0), which pulls their
  scores up further: measured on bench/learning.py, the gate refused candidates with
  log loss 2-7. (As in the paper, the feature distribution of the biased stream is
  taken as the true one; it weighs an x by ``1 + p(x)``, small at click rates << 1.)
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

from loopwise.modelstore.contract import COLDSTART_PARAMS

log = logging.getLogger(__name__)


CROSS_PRIME = 1_000_003  # the cross hash: (a * CROSS_PRIME + b) mod (cross_buckets - 1) + 1


class Ranker(nn.Module):
    def __init__(self, buckets: int, n_fields: int, n_dense: int, embedding_dim: int = 16,
                 hidden_dim: int = 64, layers: Sequence[int] = (), fm_dim: int = 0, linear: bool = False,
                 crosses: Sequence[Sequence[int]] = (), cross_buckets: int = 0) -> None:
        super().__init__()
        crosses = [[int(a), int(b)] for a, b in crosses]
        if crosses and cross_buckets < 2:
            raise ValueError("crosses need cross_buckets >= 2")
        if any(not (0 <= a < n_fields and 0 <= b < n_fields) for a, b in crosses):
            raise ValueError(f"cross field positions {crosses} outside 0..{n_fields - 1}")
        self.config = {"buckets": buckets, "n_fields": n_fields, "n_dense": n_dense,
                       "embedding_dim": embedding_dim, "hidden_dim": hidden_dim, "layers": list(layers),
                       "fm_dim": fm_dim, "linear": bool(linear), "crosses": crosses,
                       "cross_buckets": int(cross_buckets) if crosses else 0}
        # Time (ms) of the newest example this model was trained on (saved with the weights;
        # the next incremental warm start trains on what came after it).
        self.train_until_ms: int | None = None
        self.embedding = nn.Embedding(buckets, embedding_dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, 0.0, 0.01)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        widths = [embedding_dim + n_dense, *layers]
        self.mlp = nn.Sequential(*[m for a, b in zip(widths[:-1], widths[1:], strict=True)
                                   for m in (nn.Linear(a, b), nn.ReLU())])
        self.to_hidden = nn.Linear(widths[-1], hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)
        # Row-wise Adagrad accumulators of the tables (`adagrad_step`), saved with the
        # weights so that a warm start continues each row's rate; not part of the ONNX graph.
        self.register_buffer("embedding_acc", torch.zeros(buckets))
        self.fm: nn.Embedding | None = None
        if fm_dim > 0:
            self.register_buffer("fm_acc", torch.zeros(buckets))
            self.fm = nn.Embedding(buckets, fm_dim, padding_idx=0)
            nn.init.normal_(self.fm.weight, 0.0, 0.01)
            with torch.no_grad():
                self.fm.weight[0].zero_()
        # First-order per-id weights (VW's per-feature weights), zero at start.
        self.bias: nn.Embedding | None = None
        if linear:
            self.bias = nn.Embedding(buckets, 1, padding_idx=0)
            nn.init.zeros_(self.bias.weight)
            # Adagrad's sum of squared gradients per weight, kept with the weights so
            # that a warm start continues the per-feature rates (`adagrad_step`).
            self.register_buffer("bias_acc", torch.zeros(buckets))
        # Hashed crosses of two fields' ids (VW's -q), one weight per hashed pair, zero at start.
        self.cross: nn.Embedding | None = None
        if crosses:
            self.register_buffer("cross_a", torch.tensor([a for a, _ in crosses], dtype=torch.int64),
                                 persistent=False)
            self.register_buffer("cross_b", torch.tensor([b for _, b in crosses], dtype=torch.int64),
                                 persistent=False)
            self.cross = nn.Embedding(cross_buckets, 1, padding_idx=0)
            nn.init.zeros_(self.cross.weight)
            self.register_buffer("cross_acc", torch.zeros(cross_buckets))

    def _tables(self) -> list[nn.Embedding]:
        return [t for t in (self.embedding, self.fm, self.bias, self.cross) if t is not None]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (trained with sparse gradients)."""
        return [t.weight for t in self._tables()]

    def linear_parameters(self) -> list[nn.Parameter]:
        """The first-order and cross weight tables (their own learning rate)."""
        return [t.weight for t in (self.bias, self.cross) if t is not None]

    def linear_tables(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(weight, Adagrad accumulator) of the first-order and cross tables."""
        out = []
        if self.bias is not None:
            out.append((self.bias.weight, self.bias_acc))
        if self.cross is not None:
            out.append((self.cross.weight, self.cross_acc))
        return out

    def factor_tables(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(weight, row-wise Adagrad accumulator) of the embedding and FM tables."""
        out = [(self.embedding.weight, self.embedding_acc)]
        if self.fm is not None:
            out.append((self.fm.weight, self.fm_acc))
        return out

    def sparse_tables(self) -> dict[str, np.ndarray]:
        """The additive sparse tables ({"fm", "bias", "cross"}: [rows, dim] float32 copies),
        the ones serving keeps outside the graph and deltas update (`loopwise.modelstore.sparse`)."""
        tables = {"fm": self.fm, "bias": self.bias, "cross": self.cross}
        return {k: t.weight.detach().cpu().numpy().astype(np.float32, copy=True)
                for k, t in tables.items() if t is not None}

    @torch.no_grad()
    def fold_calibration(self, scale: float, shift: float) -> None:
        """Make the logit ``scale * logit + shift`` exactly, in the parameters (the graph, the
        sparse tables serving keeps and the deltas' starting point stay as they are): the
        output layer and the first-order and cross tables scale by ``scale`` (the output
        bias also takes ``shift``), the FM table by ``sqrt(scale)`` (its term is quadratic
        in it). ``scale`` > 0, so the ranking is unchanged."""
        if not scale > 0:
            raise ValueError(f"calibration scale must be > 0, got {scale}")
        self.out.weight.mul_(scale)
        self.out.bias.mul_(scale).add_(shift)
        for table in (self.bias, self.cross):
            if table is not None:
                table.weight.mul_(scale)
        if self.fm is not None:
            self.fm.weight.mul_(scale ** 0.5)

    def set_sparse(self, sparse: bool) -> None:
        for t in self._tables():
            t.sparse = sparse

    def cross_ids(self, sparse: torch.Tensor) -> torch.Tensor:
        """[batch, crosses] hashed pair ids (0 where either id is the padding 0)."""
        a, b = sparse[:, self.cross_a], sparse[:, self.cross_b]
        h = torch.remainder(a * CROSS_PRIME + b, self.config["cross_buckets"] - 1) + 1
        return h * ((a > 0) & (b > 0)).to(h.dtype)

    def logits(self, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.embedding(sparse).sum(dim=1), dense], dim=1)
        hidden = torch.relu(self.to_hidden(self.mlp(x)))
        logit = self.out(hidden).reshape(-1)
        if self.fm is not None:
            v = self.fm(sparse)  # [batch, fields, k]
            total = v.sum(dim=1)
            logit = logit + 0.5 * (total * total - (v * v).sum(dim=1)).sum(dim=1)
        if self.bias is not None:
            logit = logit + self.bias(sparse).sum(dim=(1, 2))
        if self.cross is not None:
            logit = logit + self.cross(self.cross_ids(sparse)).sum(dim=(1, 2))
        return logit, hidden

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The serving contract: ``prob`` [n] and ``hidden`` [n, hidden_dim]."""
        logit, hidden = self.logits(sparse, dense)
        return torch.sigmoid(logit), hidden


@torch.no_grad()
def adagrad_step(weight: nn.Parameter, acc: torch.Tensor, lr: float, eps: float = 1e-10,
                 initial: float = 0.0) -> None:
    """One row-wise Adagrad step on a [rows, dim] table (sparse or dense gradient) with a
    persistent accumulator ``acc`` [rows]: ``acc += mean_dim(g^2); w -= lr * g / sqrt(initial + acc)``
    (VW's adaptive per-feature rate; for dim 1 plain Adagrad; rows without a gradient do
    not move). ``initial`` is the accumulator's starting value: with 0 a row's first step
    is ``lr * g / |g|``, the same whatever the gradient's size (an importance weight on
    that row's only example would be ignored); with ``initial`` well above a gradient's
    square the first steps scale with the gradient, hence with the example's weight."""
    g = weight.grad
    if g is None:
        return
    if g.is_sparse:
        g = g.coalesce()
        idx, val = g.indices()[0], g.values().reshape(len(g.indices()[0]), -1)
        acc.index_add_(0, idx, (val * val).mean(dim=1))
        weight.index_add_(0, idx, -lr * val / ((acc[idx] + initial).sqrt().unsqueeze(1) + eps))
    else:
        acc.add_((g * g).mean(dim=1))
        weight.sub_(lr * g / ((acc + initial).sqrt().unsqueeze(1) + eps))
    weight.grad = None


def fnw_weights(logit: torch.Tensor, label: torch.Tensor, fnw: torch.Tensor | None) -> torch.Tensor | None:
    """FNW importance weights of the fake-negative rows (``fnw`` > 0; 1 elsewhere): ``1 + f``
    for a positive, ``(1 - f)(1 + f)`` for a negative, ``f`` the click probability: the
    model's own probability (no gradient through it) times the row's ``fnw`` (a float click
    scale, `data.click_scale`; a bool True: 1). None when no row is one."""
    if fnw is None or not bool(fnw.any()):
        return None
    scale = fnw.to(logit.dtype)
    f = (torch.sigmoid(logit.detach()) * scale).clamp(max=1.0)
    w = torch.where(label > 0, 1.0 + f, (1.0 - f) * (1.0 + f))
    return torch.where(scale > 0, w, torch.ones_like(w))


def ips_loss(logit: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
             fnw: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``y*w*(-log p) + (1 - y*w)*(-log(1 - p))`` (numerically stable in the logit),
    each fake-negative row (``fnw``) times its `fnw_weights`."""
    yw = label * weight
    rows = yw * F.softplus(-logit) + (1.0 - yw) * F.softplus(logit)
    factor = fnw_weights(logit, label, fnw)
    return (rows if factor is None else rows * factor).mean()


def sampled_ips_loss(logit: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                     fnw: torch.Tensor | None = None) -> torch.Tensor:
    """`ips_loss` for rows drawn in proportion to their weight: mean of
    ``y*(l_pos - (1 - 1/w)*l_neg) + (1 - y)*l_neg``. Drawing row i ``w_i`` times as often
    makes its expectation `ips_loss`'s (up to a constant factor), while every row's
    gradient in the logit stays in [-1, 1] (``p/w - 1`` for a positive), so an adaptive
    optimiser sees the weight as how often a row comes, not as a gradient size it
    normalises away."""
    keep = label * (1.0 - 1.0 / weight.clamp(min=1.0))
    rows = label * F.softplus(-logit) + (1.0 - label - keep) * F.softplus(logit)
    factor = fnw_weights(logit, label, fnw)
    return (rows if factor is None else rows * factor).mean()


def bradley_terry_loss(logit_pref: torch.Tensor, logit_other: torch.Tensor, strength: torch.Tensor
                       ) -> torch.Tensor:
    """Mean of ``-strength * log sigmoid(z_pref - z_other)``."""
    return (strength * F.softplus(logit_other - logit_pref)).mean()


# -- warm starts ----------------------------------------------------------------------------
def state_bytes(model: Ranker) -> bytes:
    buf = io.BytesIO()
    torch.save({"config": model.config, "state_dict": {k: v.detach().cpu() for k, v in
                                                       model.state_dict().items()},
                "train_until_ms": model.train_until_ms}, buf)
    return buf.getvalue()


def from_state_bytes(data: bytes) -> Ranker:
    """The model saved by `state_bytes` (configs saved before an option existed get it off)."""
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = Ranker(**saved["config"])
    missing, unexpected = model.load_state_dict(saved["state_dict"], strict=False)
    if unexpected or any(not k.endswith("_acc") for k in missing):  # weights saved before the accumulators: zero
        raise RuntimeError(f"weights do not fit the config: missing {missing}, unexpected {unexpected}")
    until = saved.get("train_until_ms")
    model.train_until_ms = int(until) if until is not None else None
    return model


def copy_matching(dst: Ranker, src: Ranker) -> list[str]:
    """Copy every parameter of ``src`` whose name and shape ``dst`` shares (a warm start
    across an architecture change, e.g. a new FM or cross term); the names copied."""
    theirs = src.state_dict()
    copied = []
    with torch.no_grad():
        for name, value in dst.state_dict().items():
            if name in theirs and tuple(theirs[name].shape) == tuple(value.shape):
                value.copy_(theirs[name])
                copied.append(name)
    return copied


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
    emb, w1, b1, w2, b2 = COLDSTART_PARAMS
    if model.config["layers"] or not set(COLDSTART_PARAMS) <= set(inits):
        return False
    want = {emb: tuple(model.embedding.weight.shape), w1: tuple(model.to_hidden.weight.T.shape),
            b1: tuple(model.to_hidden.bias.shape), w2: tuple(model.out.weight.T.shape),
            b2: tuple(model.out.bias.shape)}
    if any(tuple(np.shape(inits[k])) != shape for k, shape in want.items()):
        return False
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(np.array(inits[emb], dtype=np.float32)))
        model.to_hidden.weight.copy_(torch.from_numpy(np.array(inits[w1], dtype=np.float32).T))
        model.to_hidden.bias.copy_(torch.from_numpy(np.array(inits[b1], dtype=np.float32)))
        model.out.weight.copy_(torch.from_numpy(np.array(inits[w2], dtype=np.float32).T))
        model.out.bias.copy_(torch.from_numpy(np.array(inits[b2], dtype=np.float32)))
    return True
