"""The recommender's traffic: MovieLens ratings replayed as Rank calls and feedback, and the
online AUC of the scores served (each scored before its feedback was known).

For each rating in timestamp order the rated movie is ranked among movies the
user never rated (drawn by popularity); a Click on it at its served position
follows when the rating is 4 or 5, else a Reject of it. From ``shift_at`` on,
one segment of users prefers other movies (`shift`): the error memory's
compensated scores (in Rank's answer whenever the memory is not off) are
scored beside the model's own, slice by slice.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loopwise.client import Client, ReportError
from loopwise.ranking_metrics import auc
from loopwise.tools import datasets
from loopwise.tools.demo.common import SEED, DemoError
from loopwise.tools.demo.plot import plot_learning
from loopwise.tools.demo.shift import in_segment, shifted_choice
from loopwise.v1 import feedback_pb2

if TYPE_CHECKING:
    from loopwise.tools.demo.assistant import AssistantRound

CANDIDATES = 20
LIKED = 4.0
FLUSH_EVERY = 100  # Rank calls between two flushes of buffered feedback
PROGRESS_LINES = 5


class NegativeSampler:
    """Items a user never rated, drawn without replacement in proportion to their rating counts."""

    def __init__(self, data: datasets.MovieLens, seed: int = SEED) -> None:
        self.item_ids = data.item_ids
        self.weights = data.item_counts.astype(np.float64) + 1e-9  # unrated items stay possible
        index = {item: i for i, item in enumerate(self.item_ids)}
        self.rated = {user: np.fromiter((index[i] for i in items), dtype=np.int64)
                      for user, items in data.rated_by().items()}
        self.rng = np.random.default_rng(seed)

    def draw(self, user: str, k: int) -> list[str]:
        weights = self.weights.copy()
        weights[self.rated.get(user, np.zeros(0, dtype=np.int64))] = 0.0
        k = min(k, int(np.count_nonzero(weights)))
        picked = self.rng.choice(len(weights), size=k, replace=False, p=weights / weights.sum())
        return [self.item_ids[i] for i in picked]


@dataclass
class ReplayStats:
    requests: int = 0
    clicks: int = 0
    rejects: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    liked_positions: list[int] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)
    seconds: float = 0.0
    # Progressive (score-then-learn) evaluation: per Rank call, the version that
    # scored it, its served scores, the model's own and the error memory's
    # (empty when the memory is off) and the labels the feedback then gave.
    versions: list[str] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    base: list[np.ndarray] = field(default_factory=list)
    compensated: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    # The preference shift: the first Rank call after it, segment calls after it.
    shift_at: int | None = None
    shifted: int = 0

    def add(self, response: feedback_pb2.ReportResponse) -> None:
        self.accepted += response.accepted
        self.rejected += response.rejected
        self.reasons.update(r.reason for r in response.results if not r.accepted)


def feedback(data: datasets.MovieLens, row: int, ids: list[str], shifted: bool) -> tuple[int, bool]:
    """(index of the candidate the feedback is on, whether it is a click rather than a reject):
    the rated movie, clicked if liked; a shifted user clicks `shifted_choice` instead, and
    rejects the rated movie when there is none."""
    rated = ids.index(str(data.item[row]))
    if shifted:
        choice = shifted_choice([data.items[i].genre for i in ids])
        return (rated, False) if choice is None else (choice, True)
    return rated, bool(data.rating[row] >= LIKED)


def replay_one(client: Client, data: datasets.MovieLens, sampler: NegativeSampler, row: int,
               stats: ReplayStats, shift: bool = False) -> None:
    """Rank the rated item among never-rated ones and buffer the feedback on it (after the
    shift, a segment user's feedback is on the movie they now prefer)."""
    user = str(data.user[row])
    ids = [str(data.item[row]), *sampler.draw(user, CANDIDATES - 1)]
    ids = [ids[i] for i in sampler.rng.permutation(len(ids))]
    inputs = datasets.rank_inputs(data.users[user], [data.items[i] for i in ids],
                                  timestamp=float(data.timestamp[row]))
    ranked = client.rank(ids, **inputs)
    shifted = shift and in_segment(data.users[user].occupation)
    stats.shifted += shifted
    target, click = feedback(data, row, ids, shifted)
    position = ranked.ranking.index(target) + 1
    event = client.events.click(ranked.request_id, ids[target], user_id=user, position=position) if click else \
        client.events.reject(ranked.request_id, ids[target], user_id=user, position=position, reason="rated_low")
    client.send(event)
    label = np.zeros(len(ids), dtype=np.int8)
    label[target] = 1 if click else 0
    stats.versions.append(ranked.version)
    stats.scores.append(np.asarray(ranked.scores, dtype=np.float32))
    stats.base.append(np.asarray(ranked.base_scores or ranked.scores, dtype=np.float32))
    stats.compensated.append(np.asarray(ranked.compensated_scores, dtype=np.float32))
    stats.labels.append(label)
    stats.requests += 1
    stats.sent += 1
    stats.request_ids.add(ranked.request_id)
    if event.HasField("click"):
        stats.clicks += 1
        stats.liked_positions.append(position)
    else:
        stats.rejects += 1


def flush(client: Client, stats: ReplayStats) -> None:
    try:
        stats.add(client.flush())
    except ReportError as exc:
        raise DemoError(f"the collector did not acknowledge {len(exc.events)} events: {exc}") from exc


def replay(client: Client, data: datasets.MovieLens, requests: int, rate: float = 0.0,
           shift_at: int | None = None) -> ReplayStats:
    """``rate`` > 0: at most that many Rank calls per second (live-looking traffic, so
    attribution windows close and the trainer publishes versions while the replay runs);
    ``shift_at``: the preference shift starts at this Rank call (0-based; None: never)."""
    sampler = NegativeSampler(data)
    stats = ReplayStats(shift_at=shift_at)
    total = min(requests, len(data))
    every = max(1, total // PROGRESS_LINES)
    start = time.monotonic()
    for row in range(total):
        if rate > 0:
            ahead = row / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        replay_one(client, data, sampler, row, stats, shift=shift_at is not None and row >= shift_at)
        progress = stats.requests % every == 0 or stats.requests == total
        if progress or stats.requests % FLUSH_EVERY == 0:
            flush(client, stats)
        if progress:
            elapsed = time.monotonic() - start
            print(f"  {stats.requests:>6}/{total} Rank calls  {stats.requests / elapsed:7.0f} req/s  "
                  f"events accepted {stats.accepted} (rejected {stats.rejected})")
    stats.seconds = time.monotonic() - start
    return stats


def show_replay(stats: ReplayStats) -> None:
    mean = float(np.mean(stats.liked_positions)) if stats.liked_positions else 0.0
    print(f"replayed {stats.requests} ratings in {stats.seconds:.1f}s "
          f"({stats.requests / max(stats.seconds, 1e-9):.0f} Rank/s)")
    print(f"feedback: {stats.clicks} clicks, {stats.rejects} rejects; collector accepted "
          f"{stats.accepted}/{stats.sent}" + (f", rejected {dict(stats.reasons)}" if stats.rejected else ""))
    print(f"liked movies were served at mean position {mean:.1f} of {CANDIDATES}")
    if stats.shift_at is not None:
        print(f"preference shift from Rank call {stats.shift_at + 1}: {stats.shifted} calls of the segment "
              "(students) clicked horror, thriller, sci-fi or crime instead")


# -- learning while serving ---------------------------------------------------------------


@dataclass
class Bucket:
    first: int
    last: int
    auc: float  # the served scores
    versions: Counter[str]
    auc_base: float = float("nan")  # the model's own scores (the memory off)
    auc_memory: float | None = None  # the memory's compensated scores; None where it was off


def online_auc(stats: ReplayStats, buckets: int = 10) -> list[Bucket]:
    """AUC of the served, the model's own and the compensated scores over consecutive slices of
    the Rank calls, with the versions that served."""
    n = len(stats.scores)
    if n == 0:
        return []
    edges = np.linspace(0, n, min(buckets, n) + 1).astype(int)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        labels = np.concatenate(stats.labels[a:b])
        memory = stats.compensated[a:b]
        out.append(Bucket(int(a) + 1, int(b), auc(labels, np.concatenate(stats.scores[a:b])),
                          Counter(stats.versions[a:b]), auc(labels, np.concatenate(stats.base[a:b])),
                          auc(labels, np.concatenate(memory)) if all(len(m) for m in memory) else None))
    return out


def show_learning(stats: ReplayStats, png: Path | None, rounds: list[AssistantRound] | None = None) -> None:
    table = online_auc(stats)
    if not table:
        return
    print("online AUC (scored before the feedback was known), by slice of Rank calls: served, the model "
          "alone, the model + error memory")
    for bucket in table:
        versions = ", ".join(f"{v} x{n}" for v, n in bucket.versions.most_common())
        memory = f"{bucket.auc_memory:6.3f}" if bucket.auc_memory is not None else "     -"
        shift = stats.shift_at is not None and bucket.first <= stats.shift_at + 1 <= bucket.last
        print(f"  calls {bucket.first:>6}-{bucket.last:<6} AUC {bucket.auc:6.3f}  model {bucket.auc_base:6.3f}  "
              f"memory {memory}   served by {versions}" + ("   <- preference shift" if shift else ""))
    served = list(dict.fromkeys(stats.versions))
    print(f"model versions that served: {', '.join(served)}")
    if png is not None:
        plot_learning(stats, table, png, rounds or [])
