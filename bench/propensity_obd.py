"""Position propensities on the Open Bandit Dataset sample: EM on biased logs vs randomised truth.

Data: the OBD sample in the ``obp`` 0.4.1 wheel (`loopwise.tools.datasets.open_bandit`,
fetched once with ``pip download``), campaign ``--campaign`` (default all):
10,000 logged slots per policy, positions 1..3 (left, centre, right of
ZOZOTOWN's recommendation widget), ~0.4 % clicks.

Curves (examination propensity relative to position 1):

- ``random_implied``: `RandomizedEstimator` on the ``random`` policy's log,
  where items were placed uniformly at random: CTR_k / CTR_1, the reference;
- ``em_bts``: `PositionBiasEM` (position-based click model) on the Bernoulli
  Thompson sampling log, fitted to convergence;
- ``naive_bts``: CTR_k / CTR_1 on the ``bts`` log (ignores that the policy's
  choices correlate with relevance);
- ``em_random``: EM on the ``random`` log (a sanity check: it should agree
  with ``random_implied``).

Errors: max over positions of |curve - random_implied|. With ~13 clicks per
position per file every curve is noisy, so the benchmark bootstraps rounds
(``--bootstrap`` resamples of each file, independently) and reports 95 %
percentile intervals of every curve and of both errors, and how often EM's
error is below the naive one's (``p_em_closer``).

Usage: python bench/propensity_obd.py [--campaign all|men|women] [--bootstrap B] [--seed S]
The last line printed is one JSON object: em_bts, naive_bts, random_implied,
em_error, naive_error, and extras.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common as c
import numpy as np

from loopwise.miner.propensity import PositionBiasEM, RandomizedEstimator
from loopwise.tools import datasets

POSITIONS = datasets.OBD_POSITIONS
EM_MAX_STEPS = 20_000


@dataclass(frozen=True)
class Log:
    """The logged slots of one sample file, flat, with the round each belongs to."""

    rounds: int
    round_of: np.ndarray
    position: np.ndarray
    item: np.ndarray
    click: np.ndarray

    @classmethod
    def of(cls, data: datasets.OpenBandit) -> Log:
        round_of, position, item, click, _ = data.flat()
        return cls(len(data), round_of, position, item, click.astype(np.float64))

    def weighted(self, round_weights: np.ndarray) -> Log:
        """The log with round r repeated ``round_weights[r]`` times (a bootstrap resample)."""
        repeat = round_weights[self.round_of]
        return Log(int(round_weights.sum()), np.repeat(self.round_of, repeat), np.repeat(self.position, repeat),
                   np.repeat(self.item, repeat), np.repeat(self.click, repeat))


def ctr_ratio(log: Log) -> np.ndarray:
    est = RandomizedEstimator(POSITIONS, prior_views=0.0)
    est.update(log.position, log.click)
    return est.propensities()


def em_curve(log: Log, tol: float) -> np.ndarray:
    em = PositionBiasEM(POSITIONS, max_items=1_000, iterations=0)
    em.update(log.position, log.item, log.click)
    em.fit(EM_MAX_STEPS, tol=tol)
    return em.propensities()


def bootstrap(log: Log, curve: Callable[[Log], np.ndarray], draws: int, rng: np.random.Generator
              ) -> np.ndarray:
    """(draws, positions) curves on resampled rounds."""
    uniform = np.full(log.rounds, 1.0 / log.rounds)
    return np.stack([curve(log.weighted(rng.multinomial(log.rounds, uniform))) for _ in range(draws)])


def interval(samples: np.ndarray) -> list[Any]:
    """95 % percentile interval per column (or of a vector): [[lo, hi], ...]."""
    lo, hi = np.nanpercentile(samples, [2.5, 97.5], axis=0)
    return np.round(np.stack([lo, hi], axis=-1), 4).tolist()


def max_error(curves: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.max(np.abs(curves - reference), axis=-1)


def counts(log: Log) -> dict[str, list[int]]:
    slots = log.position - 1
    return {"views": np.bincount(slots, minlength=POSITIONS).tolist(),
            "clicks": np.bincount(slots, weights=log.click, minlength=POSITIONS).astype(int).tolist()}


def rounded(values: np.ndarray) -> list[float]:
    return np.round(values, 4).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaign", choices=datasets.OBD_CAMPAIGNS, default="all")
    parser.add_argument("--bootstrap", type=int, default=500, help="resamples per file (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-8, help="EM stops when no propensity moves more")
    args = parser.parse_args()
    started = time.monotonic()
    bts = Log.of(datasets.open_bandit("bts", args.campaign))
    rnd = Log.of(datasets.open_bandit("random", args.campaign))
    c.say(f"OBD sample, campaign {args.campaign}: bts {counts(bts)}, random {counts(rnd)}")

    def em(log: Log) -> np.ndarray:
        return em_curve(log, args.tol)

    reference, em_bts, naive_bts, em_random = ctr_ratio(rnd), em(bts), ctr_ratio(bts), em(rnd)
    rng = np.random.default_rng(args.seed)
    boot = {"random_implied": bootstrap(rnd, ctr_ratio, args.bootstrap, rng),
            "em_bts": bootstrap(bts, em, args.bootstrap, rng),
            "naive_bts": bootstrap(bts, ctr_ratio, args.bootstrap, rng)}
    em_errors = max_error(boot["em_bts"], boot["random_implied"])
    naive_errors = max_error(boot["naive_bts"], boot["random_implied"])
    result = {
        "em_bts": rounded(em_bts), "naive_bts": rounded(naive_bts), "random_implied": rounded(reference),
        "em_error": round(float(max_error(em_bts, reference)), 4),
        "naive_error": round(float(max_error(naive_bts, reference)), 4),
        "random_implied_ci95": interval(boot["random_implied"]), "em_bts_ci95": interval(boot["em_bts"]),
        "naive_bts_ci95": interval(boot["naive_bts"]),
        "em_error_ci95": interval(em_errors), "naive_error_ci95": interval(naive_errors),
        "p_em_closer": round(float(np.mean(em_errors < naive_errors)), 3),
        "em_random": rounded(em_random),
        "counts": {"bts": counts(bts), "random": counts(rnd)},
        "campaign": args.campaign, "bootstrap": args.bootstrap, "seed": args.seed,
        "seconds": round(time.monotonic() - started, 1),
    }
    for key in ("random_implied", "em_bts", "naive_bts"):
        c.say(f"  {key:15} {result[key]}  95% CI {result[key + '_ci95']}")
    c.say(f"  error vs random_implied: EM {result['em_error']} (CI {result['em_error_ci95']}), naive "
          f"{result['naive_error']} (CI {result['naive_error_ci95']}); EM closer in "
          f"{result['p_em_closer']:.0%} of resamples")
    c.emit_result(result)


if __name__ == "__main__":
    main()
