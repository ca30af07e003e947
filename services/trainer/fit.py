"""The epoch loop of a training run: optimisers, batches of examples and pairs, the loss.

`fit` trains a `model.Ranker` in place on a `data.WindowData` (already
settled and split by `train.train_once`):

- Optimisers (`optimisers`): the tables (embedding, FM, first-order, cross)
  take row-wise Adagrad steps (`model.adagrad_step`) with accumulators kept in
  the model; the dense layers use Adam (SparseAdam for the embedding/FM tables
  with ``trainer_embedding_optimizer=adam``).
- Loss per step: clipped-IPS on a batch of examples (`model.ips_loss`, or
  `model.sampled_ips_loss` with ``trainer_weighting=sample``), FNW click scales
  on fake-negative-mode rows, plus ``trainer_bt_weight`` × the Bradley-Terry
  term on the pairs spread over the same steps.
- CUDA with bf16 autocast when the device is a GPU; ``should_stop`` is asked
  before every step (a stopped fit reports the epochs it finished).

`learn_sparse`: one pass over rows in their order on the sparse tables alone (FM,
first-order, cross; the dense network frozen), as a delta step learns
(`deltas.DeltaTrainer.learn`) and as a published candidate learns its holdout
(`train.fold_recent`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .data import WindowData
from .model import Ranker, adagrad_step, bradley_terry_loss, ips_loss, sampled_ips_loss
from .settings import TrainerSettings


@dataclass
class Fitted:
    """What a fit did: epochs finished, the last one's mean loss, whether it was stopped, how long
    the epochs took and on which device."""

    epochs: int
    final_loss: float
    stopped: bool
    seconds: float
    device: str


@dataclass
class Optimisers:
    """The optimisers of a run: torch ones for the dense layers (and SparseAdam tables), and the
    tables stepped by row-wise Adagrad with their rates and accumulator starting values."""

    optimizers: list[torch.optim.Optimizer]
    adagrad: list[tuple[torch.Tensor, torch.Tensor]]  # (table, accumulator)
    rates: dict[int, float]  # by id(table)
    initial: dict[int, float]  # by id(table)

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        for table, _ in self.adagrad:
            table.grad = None

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()
        for table, acc in self.adagrad:
            adagrad_step(table, acc, self.rates[id(table)], initial=self.initial[id(table)])


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def n_weighted(weight: np.ndarray) -> int:
    """How many examples carry a weight other than 1."""
    return int(np.count_nonzero(weight != 1.0))


def optimisers(model: Ranker, settings: TrainerSettings, lr: float) -> Optimisers:
    """The optimisers for ``model`` (sets its sparse-gradient mode; ``lr``: the dense layers' rate)."""
    # The tables (embedding, FM, first-order, cross) take row-wise Adagrad steps
    # (`adagrad_step`, VW's adaptive per-feature rate) with accumulators kept in
    # the model, so a warm start continues each row's rate. Adam restarted at
    # every run would move every row it touches by ~lr in its first steps, and a
    # weight that only ever sees negatives by lr every batch, however small its
    # gradient already is. The dense layers use Adam (``lr``: small on an
    # incremental warm start, since its moments restart). With
    # trainer_embedding_optimizer=adam the embedding/FM tables use SparseAdam.
    model.set_sparse(settings.trainer_sparse_embedding)
    adagrad = model.linear_tables()
    if settings.trainer_embedding_optimizer == "adagrad":
        adagrad += [(w, acc) for w, acc in model.factor_tables()]
    elif settings.trainer_embedding_optimizer != "adam":
        raise ValueError(f"trainer_embedding_optimizer {settings.trainer_embedding_optimizer!r}: adagrad or adam")
    own = {id(w) for w, _ in adagrad}
    tables = [p for p in model.sparse_parameters() if id(p) not in own]
    rest = [p for p in model.parameters() if id(p) not in own and id(p) not in {id(q) for q in tables}]
    rates = {id(w): settings.trainer_linear_lr or settings.trainer_lr for w, _ in model.linear_tables()}
    if model.cross is not None and settings.trainer_cross_lr > 0:
        rates[id(model.cross.weight)] = settings.trainer_cross_lr
    rates.update({id(w): settings.trainer_embedding_lr or settings.trainer_lr for w, _ in model.factor_tables()})
    initial = {id(w): settings.trainer_adagrad_initial for w, _ in adagrad}
    if model.cross is not None:
        initial[id(model.cross.weight)] = settings.trainer_cross_adagrad_initial
    out: list[torch.optim.Optimizer] = []
    if tables and settings.trainer_sparse_embedding:
        out.append(torch.optim.SparseAdam(tables, lr=lr))
    elif tables:
        rest = tables + rest
    if rest:
        out.append(torch.optim.Adam(rest, lr=lr, weight_decay=settings.trainer_weight_decay))
    return Optimisers(out, adagrad, rates, initial)


def fit(model: Ranker, train: WindowData, settings: TrainerSettings, lr: float,
        should_stop: Callable[[], bool] | None = None) -> Fitted:
    """``trainer_epochs`` epochs over ``train`` on ``trainer_device``; the model ends on the CPU in eval mode."""
    device = pick_device(settings.trainer_device)
    model.to(device).train()
    batch = max(1, settings.trainer_batch_size)
    opt = optimisers(model, settings, lr)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    sparse, dense, label = t(train.sparse), t(train.dense), t(train.label)
    weight = t(np.minimum(train.weight, settings.trainer_max_weight).astype(np.float32))
    # FNW click scales, no smaller than the trainer's own weight clip allows (1 / max_weight)
    fnw = t(np.where(train.fnw_rows(), np.maximum(train.fnw, 1.0 / settings.trainer_max_weight), 0.0)
            .astype(np.float32)) if train.fnw_rows().any() else None
    if settings.trainer_weighting not in ("loss", "sample"):
        raise ValueError(f"trainer_weighting {settings.trainer_weighting!r}: loss or sample")
    # "loss": the Rel-MF loss, every row once, scaled by its weight; "sample": rows drawn in
    # proportion to their weights with `sampled_ips_loss` (gradients bounded, so row-wise
    # Adagrad cannot normalise a weight away).
    sample = settings.trainer_weighting == "sample" and n_weighted(train.weight) > 0
    loss_fn = sampled_ips_loss if sample else ips_loss
    ps, pd, os_, od, strength = (t(train.pref_sparse), t(train.pref_dense), t(train.other_sparse),
                                 t(train.other_dense), t(train.strength))
    n, n_pairs = len(train), train.n_pairs
    steps = max(1, math.ceil(n / batch)) if n else (1 if n_pairs else 0)
    pair_batch = math.ceil(n_pairs / steps) if n_pairs and steps else 0
    autocast = device.type == "cuda"
    gen = torch.Generator(device="cpu").manual_seed(settings.trainer_seed)
    started = time.perf_counter()
    final_loss, epochs_done, stopped = float("nan"), 0, False
    for _ in range(settings.trainer_epochs):
        if sample:
            perm = torch.multinomial(weight.cpu(), n, replacement=True, generator=gen).to(device)
        else:
            perm = torch.randperm(n, generator=gen).to(device) if n else None
        pperm = torch.randperm(n_pairs, generator=gen).to(device) if n_pairs else None
        total = 0.0
        for step in range(steps):
            if should_stop is not None and should_stop():
                stopped = True
                break
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = torch.zeros((), device=device)
                if perm is not None:
                    rows = perm[step * batch:(step + 1) * batch]
                    logit, _ = model.logits(sparse[rows], dense[rows])
                    loss = loss + loss_fn(logit.float(), label[rows], weight[rows],
                                          None if fnw is None else fnw[rows])
                if pperm is not None and settings.trainer_bt_weight > 0:
                    prow = pperm[step * pair_batch:(step + 1) * pair_batch]
                    if len(prow):
                        zp, _ = model.logits(ps[prow], pd[prow])
                        zo, _ = model.logits(os_[prow], od[prow])
                        loss = loss + settings.trainer_bt_weight * bradley_terry_loss(
                            zp.float(), zo.float(), strength[prow])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if stopped:
            break
        epochs_done += 1
        final_loss = total / max(steps, 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    model.set_sparse(False)
    model.cpu().eval()
    return Fitted(epochs=epochs_done, final_loss=final_loss, stopped=stopped, seconds=seconds, device=str(device))


def learn_sparse(model: Ranker, settings: TrainerSettings, sparse_ids: np.ndarray, dense: np.ndarray,
                 label: np.ndarray, weight: np.ndarray, fnw: np.ndarray | None = None) -> float:
    """One pass of row-wise Adagrad on the model's sparse tables (``fm``, ``bias``, ``cross``)
    over these rows, in order, in batches of ``trainer_batch_size`` (hashed inputs, labels, IPS
    weights, FNW click scales or None); the mean loss. The tables must take gradients and the
    dense layers not (`frozen_dense`)."""
    s, m = settings, model
    n = len(label)
    rates = {"fm": s.trainer_embedding_lr or s.trainer_lr, "bias": s.trainer_linear_lr or s.trainer_lr,
             "cross": s.trainer_cross_lr or s.trainer_linear_lr or s.trainer_lr}
    initial = {"fm": s.trainer_adagrad_initial, "bias": s.trainer_adagrad_initial,
               "cross": s.trainer_cross_adagrad_initial}
    tables = {"fm": (m.fm, getattr(m, "fm_acc", None)), "bias": (m.bias, getattr(m, "bias_acc", None)),
              "cross": (m.cross, getattr(m, "cross_acc", None))}
    ids = torch.from_numpy(np.ascontiguousarray(sparse_ids, dtype=np.int64))
    x = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))
    w = torch.from_numpy(np.minimum(weight, s.trainer_max_weight).astype(np.float32))
    batch, total = max(1, s.trainer_batch_size), 0.0
    for start in range(0, n, batch):
        rows = slice(start, start + batch)
        logit, _ = m.logits(ids[rows], x[rows])
        # fake-negative-mode rows: FNW-weighted
        extra = {"fnw": torch.from_numpy(fnw[rows])} if fnw is not None and fnw[rows].any() else {}
        loss = ips_loss(logit, y[rows], w[rows], **extra)
        loss.backward()
        for name, (t, acc) in tables.items():
            if t is not None and acc is not None:
                adagrad_step(t.weight, acc, rates[name], initial=initial[name])
        total += float(loss.detach()) * len(y[rows])
    return total / max(n, 1)


def frozen_dense(model: Ranker) -> None:
    """Only the sparse tables (``fm``, ``bias``, ``cross``) take gradients, sparse ones."""
    for p in model.parameters():
        p.requires_grad_(False)
    for t in (model.fm, model.bias, model.cross):
        if t is not None:
            t.weight.requires_grad_(True)
    model.set_sparse(True)
