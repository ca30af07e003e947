"""The off-policy check on the Open Bandit sample (docs/methods.md §3).

Train on the Bernoulli Thompson sampling log (every logged slot an example,
label = click) through the trainer's pure API, naive (weight 1) or with the
logged propensities (the miner's `clipped_weight` at its clip), then judge each
model on the uniform-random log, where every item had the same chance
(``1 / n_items``) at every slot:

- ``ctr_top1``: IPS estimate of the click rate of the policy that shows each
  round's top-scored item, ``mean(click * [item == top] / p_random)`` over the
  logged slots (unbiased, but it sees ~1/80 of the slots: noisy);
- ``ctr_top10``: the same for a uniform pick among the top 10 (``[item in top10] * 10``);
- ``clicked_rank``: the clicked items' mean rank percentile among the round's
  items (0 = top; click-weighted, the least noisy).

Inputs: the user (its four features joined), each feature, the item id and the item's three categorical
features (sparse), the round's user-item affinity (dense), hashed by
`InputBuilder` as `Rank` would.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from loopwise.features import FeatureSpec, InputBuilder
from loopwise.miner.debias import clipped_weight
from loopwise.tools import datasets
from loopwise.trainer import train
from loopwise.trainer.data import WindowData
from loopwise.trainer.settings import TrainerSettings
from loopwise.v1 import features_pb2

USER = ("user.f0", "user.f1", "user.f2", "user.f3")
ITEM = ("candidate.item_feature_1", "candidate.item_feature_2", "candidate.item_feature_3")
SPEC = FeatureSpec(sparse=("request.user_id", *USER, "candidate.id", *ITEM), dense=("candidate.affinity",), buckets=1 << 18)


def round_inputs(data: datasets.OpenBandit) -> tuple[np.ndarray, np.ndarray]:
    """[rounds, items, fields] ids and [rounds, items, 1] affinities of every item in every round."""
    builder = InputBuilder(SPEC)
    ids = [str(x) for x in data.item_ids.tolist()]
    n_r, n_i = len(data), len(ids)
    sparse = np.zeros((n_r, n_i, len(SPEC.sparse)), dtype=np.int64)
    dense = np.zeros((n_r, n_i, 1), dtype=np.float32)
    for r in range(n_r):
        user = features_pb2.Features(categorical={f"f{j}": str(v) for j, v in enumerate(data.user[r])})
        msg = features_pb2.Candidates(ids=ids)
        for name in ITEM:
            col = name.split(".")[1]
            msg.categorical.add(name=col, values=data.item_context[col].tolist())
        msg.numeric.add(name="affinity", values=data.affinity[r].tolist())
        sparse[r], dense[r] = builder.build("|".join(data.user[r].tolist()), user, features_pb2.Features(), msg)
    return sparse, dense


@dataclasses.dataclass
class Logs:
    bts: datasets.OpenBandit
    random: datasets.OpenBandit
    bts_inputs: tuple[np.ndarray, np.ndarray]
    random_inputs: tuple[np.ndarray, np.ndarray]

    @classmethod
    def load(cls) -> Logs:
        bts, rnd = datasets.open_bandit("bts"), datasets.open_bandit("random")
        return cls(bts, rnd, round_inputs(bts), round_inputs(rnd))


def column(data: datasets.OpenBandit, items: np.ndarray) -> np.ndarray:
    lookup = {int(x): k for k, x in enumerate(data.item_ids.tolist())}
    return np.asarray([lookup[int(x)] for x in items.tolist()], dtype=np.int64)


def fit(logs: Logs, ips: bool, clip: float, config: TrainerSettings) -> train.Candidate:
    rounds, _, items, click, prop = logs.bts.flat()
    cols = column(logs.bts, items)
    sparse, dense = logs.bts_inputs
    w = np.ones(len(rounds), dtype=np.float32)
    if ips:
        w = np.asarray([clipped_weight(float(p), clip) if c else 1.0 for p, c in zip(prop, click, strict=True)],
                       dtype=np.float32)
    data = WindowData(sparse[rounds, cols], dense[rounds, cols], click.astype(np.float32), w,
                      np.arange(len(rounds), dtype=np.int64), rounds.astype(np.int64))
    return train.train_once(data, None, SPEC, config)


def judge(logs: Logs, model: train.Candidate) -> dict[str, float]:
    rounds, _, items, click, prop = logs.random.flat()
    sparse, dense = logs.random_inputs
    n_r, n_i, f = sparse.shape
    scores = model.predict(sparse.reshape(-1, f), dense.reshape(-1, 1)).reshape(n_r, n_i)
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_i)[None, :].repeat(n_r, 0), axis=1)
    r_of = rank[rounds, column(logs.random, items)]
    c = click.astype(np.float64)
    return {"ctr_top1": float(np.mean(c * (r_of == 0) / prop)),
            "ctr_top10": float(np.mean(c * (r_of < 10) / (10 * prop))),
            "clicked_rank": float(np.mean(r_of[c > 0]) / (n_i - 1)),
            "logged_ctr": float(c.mean())}
