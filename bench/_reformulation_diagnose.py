"""Which defects the oracle fixes and the offline miner does not, by cause (movies population).

Mines the training seeds as `_reformulation_offline.evaluate` does, serves the rules on the
test seed, and for every failed turn of that run whose confusion the oracle would have
rewritten (a recurring confusion: the recogniser's, or the user's habit with a title)
reports its confusion kind and why no rule fixed it:

- ``fixed_wrong``: a rule rewrote it, to the wrong thing;
- ``rule_elsewhere``: no rule for these words, but one for the same confusion in another
  carrier phrase (a span rule could have served it);
- ``unseen``: the heard title never appeared in the training turns;
- ``thin``: heard in training, but fewer than ``min_support`` distinct users failed on
  it and then got the movie they wanted;
- ``ambiguous``: the heard title is another valid title (a collision with a neighbour, or a
  partial title that names another movie): the users saying it want different movies;
- ``supported``: enough users fixed it in training and still no rule (a miner threshold).

With ``--canaries SHARE``, instead: both populations mined with new rules as canaries on
SHARE of the users, two refreshes (the canaries' decisions on their evidence), then the
test seed served with the table as it stands (canaries to their share): rules, canaries
left, defect reduction and win/loss.

Usage: python bench/_reformulation_diagnose.py [--users N] [--minutes M] [--canaries SHARE]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import replace

from _reformulation_offline import OFFLINE, mine, record_of, reduction, rule_rewriter

from loopwise.miner.reformulation.pipeline import TenantMiner
from loopwise.miner.reformulation.rules import rewrite_table
from loopwise.miner.reformulation.sessions import sessionize
from loopwise.spans import RuleSet
from loopwise.text import normalize
from loopwise.tools.simulate.assistant import World, movielens_catalog, simulate, summarize
from loopwise.tools.simulate.catalog import NLU_CARRIERS


def split_carrier(text: str) -> tuple[str, str]:
    for carrier in sorted(NLU_CARRIERS, key=len, reverse=True):
        if text.startswith(carrier + " "):
            return carrier, text[len(carrier) + 1:]
    return "", text


def kind_of(world: World, said_title: str, spoken: str, heard_title: str) -> str:
    if said_title != spoken:
        words = spoken.split()
        return "no_article" if words[0] == "the" and said_title == " ".join(words[1:]) else "partial"
    if heard_title == world.catalog.neighbours.get(said_title):
        return "collision"
    return "asr_edit"


def canaries(share: float, users: int, minutes: float) -> None:
    from loopwise.tools.simulate.places import PlacesWorld

    for name, world in (("movies", World(movielens_catalog())), ("places", PlacesWorld())):
        train = []
        for i, s in enumerate((1, 2)):
            train += simulate(world, users=users, minutes=minutes, seed=s, start_ms=1_700_000_000_000 + i * 86_400_000)
        m = TenantMiner("default", replace(OFFLINE, canary_share=share))
        for session in sessionize([record_of(t) for t in train]):
            m.observe_session(session)
        end = max(t.time_ms for t in train)
        m.refresh(now_ms=end + 1)
        m.refresh(now_ms=end + 2)
        before = summarize(simulate(world, users=users, minutes=minutes, seed=101))
        served = RuleSet.from_table(m.table())
        after = summarize(simulate(world, users=users, minutes=minutes, seed=101, rewrite=rule_rewriter(served)))
        print(f"{name}: rules {len(m.rules)}, canaries left {len(m.canary.trials)}, defect reduction "
              f"{reduction(before, after):.3f}, win/loss {after.win_loss:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--minutes", type=float, default=240.0)
    p.add_argument("--min-support", type=float, default=3.0)
    p.add_argument("--canaries", type=float, default=None, metavar="SHARE")
    a = p.parse_args()
    if a.canaries is not None:
        canaries(a.canaries, a.users, a.minutes)
        return
    world = World(movielens_catalog())
    train = []
    for i, s in enumerate((1, 2)):
        train += simulate(world, users=a.users, minutes=a.minutes, seed=s, start_ms=1_700_000_000_000 + i * 86_400_000)
    _, rules, _ = mine(train, config=OFFLINE)
    served = RuleSet.from_table(rewrite_table(rules))
    after = simulate(world, users=a.users, minutes=a.minutes, seed=101, rewrite=rule_rewriter(served))

    # training evidence per heard title: users who failed on it and later got the movie
    fixers: dict[str, set[str]] = defaultdict(set)
    heard_titles: set[str] = set()
    by_request: dict[tuple[str, str], list] = defaultdict(list)
    for t in train:
        heard_titles.add(split_carrier(normalize(t.utterance))[1])
        by_request[(t.user_id, t.session_id, t.target)].append(t)
    for turns in by_request.values():
        if turns[-1].success:
            for t in turns[:-1]:
                fixers[split_carrier(normalize(t.utterance))[1]].add(t.user_id)
    rule_titles = {split_carrier(r.source)[1] for r in rules if r.kind != "span"}
    span_sources = {r.source for r in rules if r.kind == "span"}

    movies = {m.id: m for m in world.catalog.movies}
    causes: Counter[tuple[str, str]] = Counter()
    fixable = 0
    for t in after:
        if t.success:
            continue
        movie = movies[t.target]
        carrier, said_title = split_carrier(t.said)
        heard_carrier, heard_title = split_carrier(normalize(t.utterance))
        wrong = world.asr.confusion(said_title, world.catalog.neighbours.get(said_title))
        recurring = said_title != movie.spoken or (wrong is not None and heard_title == wrong)
        if not recurring or normalize(t.utterance) == f"{carrier} {movie.spoken}":
            continue
        fixable += 1
        kind = kind_of(world, said_title, movie.spoken, heard_title)
        if t.rule_id:
            cause = "fixed_wrong"
        elif heard_title in world.catalog.by_spoken:
            cause = "ambiguous"
        elif heard_title in rule_titles or any(f" {s} " in f" {heard_title} " for s in span_sources):
            cause = "rule_elsewhere"
        elif heard_title not in heard_titles:
            cause = "unseen"
        elif len(fixers.get(heard_title, ())) < a.min_support:
            cause = "thin"
        else:
            cause = "supported"
        causes[(kind, cause)] += 1
    print(f"rules {len(rules)}; failed turns of the test run the oracle would fix: {fixable}")
    kinds = sorted({k for k, _ in causes})
    cols = ("fixed_wrong", "rule_elsewhere", "unseen", "thin", "ambiguous", "supported")
    print(f"{'kind':<12}" + "".join(f"{c:>16}" for c in cols) + f"{'total':>8}")
    for k in kinds:
        print(f"{k:<12}" + "".join(f"{causes[(k, c)]:>16}" for c in cols)
              + f"{sum(causes[(k, c)] for c in cols):>8}")
    print(f"{'total':<12}" + "".join(f"{sum(causes[(k, c)] for k in kinds):>16}" for c in cols) + f"{fixable:>8}")


if __name__ == "__main__":
    main()
