"""The assistant simulator: catalog, NLU, recognition errors, users, determinism."""

from __future__ import annotations

import itertools
import random

import pytest

from loopwise.tools.simulate.assistant import (
    OK,
    UNHANDLED,
    Asr,
    Catalog,
    Nlu,
    World,
    simulate,
    spoken_title,
    summarize,
    table_rewriter,
)


def synthetic_catalog() -> Catalog:
    adj = ["dark", "last", "lost", "silent", "golden", "broken", "hidden", "wild", "red", "frozen", "little",
           "secret", "eternal", "bright", "lonely", "final"]
    noun = ["river", "night", "kingdom", "storm", "garden", "city", "heart", "journey", "shadow", "summer",
            "mountain", "promise", "island", "stranger", "train", "knight"]
    titles = [f"{a} {n}" if i % 7 else f"{n.title()}, The" for i, (a, n) in enumerate(itertools.product(adj, noun))]
    titles += [f"{a} {n} {k}" for a, n, k in itertools.product(adj[:3], noun[:4], ["2", "returns"])]
    return Catalog.from_titles([(str(i + 1), t, 1.0 / (i + 1) ** 0.8) for i, t in enumerate(titles)])


@pytest.fixture(scope="module")
def catalog(movielens_titles: Catalog) -> Catalog:
    """The MovieLens-100K titles (tests/unit/conftest.py fetches them once per machine)."""
    return movielens_titles


def test_movielens_titles_are_the_catalog(movielens_titles: Catalog) -> None:
    c = movielens_titles
    assert len(c.movies) > 1600
    assert c.by_spoken["toy story"].id == "1"
    assert "the wizard of oz" in c.by_spoken


def test_spoken_titles() -> None:
    assert spoken_title("Wizard of Oz, The (1939)") == "the wizard of oz"
    assert spoken_title("Shanghai Triad (Yao a yao yao dao waipo qiao)") == "shanghai triad"
    assert spoken_title("Die Hard 2") == "die hard 2"


def test_nlu_needs_a_carrier_and_the_exact_title(catalog: Catalog) -> None:
    nlu = Nlu(catalog)
    movie = catalog.movies[0]
    for carrier in ("play", "Put on", "watch", "play the movie", "I want to watch"):
        got = nlu.parse(f"{carrier} {movie.spoken.upper()}!")
        assert (got.status, got.item, got.interpretation) == (OK, movie.id, f"play_movie:{movie.id}")
    assert nlu.parse(movie.spoken).status == UNHANDLED
    assert nlu.parse(f"play {movie.spoken} please").status == UNHANDLED


def test_confusions_recur_and_depend_on_the_seed(catalog: Catalog) -> None:
    asr = Asr(seed=3)
    confused = [m.spoken for m in catalog.movies if asr.confusion(m.spoken)]
    share = len(confused) / len(catalog.movies)
    assert 0.15 < share < 0.45
    title = confused[0]
    rng = random.Random(0)
    heard = [asr.hear("play", title, rng) for _ in range(200)]
    wrong = {h for h in heard if h != f"play {title}"}
    assert f"play {asr.confusion(title)}" in wrong
    assert heard.count(f"play {asr.confusion(title)}") > 80  # the same error, again and again
    careful = [asr.hear("play", title, rng, careful=True) for _ in range(200)]
    assert careful.count(f"play {title}") > heard.count(f"play {title}")
    assert any(Asr(seed=4).confusion(t) != asr.confusion(t) for t in confused[:20])


def test_simulation_is_deterministic_by_seed(catalog: Catalog) -> None:
    world = World(catalog)
    a = simulate(world, users=40, minutes=30, seed=5)
    b = simulate(world, users=40, minutes=30, seed=5)
    c = simulate(world, users=40, minutes=30, seed=6)
    assert a == b and a != c
    assert [t.time_ms for t in a] == sorted(t.time_ms for t in a)


def test_turns_are_seconds_apart_and_time_can_be_compressed(catalog: Catalog) -> None:
    turns = simulate(World(catalog), users=60, minutes=60, seed=1)
    gaps = [b.time_ms - a.time_ms for a, b in zip(turns, turns[1:], strict=False)
            if a.session_id == b.session_id and b.attempt > 0]
    assert gaps and min(gaps) >= 2500 and max(gaps) <= 10_000
    dense = simulate(World(catalog, time_scale=0.1), users=60, minutes=60, seed=1)
    span = dense[-1].time_ms - dense[0].time_ms
    assert span <= 0.1 * 60 * 60_000 + 60_000


def test_defect_rate_without_rewrites_is_plausible(catalog: Catalog) -> None:
    s = summarize(simulate(World(catalog), users=300, minutes=120, seed=2))
    assert s.turns > 1000
    assert 0.15 <= s.defect_rate <= 0.35
    assert s.rewritten == 0 and s.wins == s.losses == 0


def test_an_oracle_rewrite_lowers_the_defect_rate(catalog: Catalog) -> None:
    world = World(catalog)
    table = {}
    for m in catalog.movies:
        wrong = world.asr.confusion(m.spoken, catalog.neighbours.get(m.spoken))
        if wrong and wrong not in catalog.by_spoken:  # a colliding title is right for other users
            for carrier in ("play", "put on", "watch", "i want to watch", "play the movie"):
                table[f"{carrier} {wrong}"] = (f"play {m.spoken}", f"oracle-{m.id}")
    seen = []
    turns = simulate(world, users=300, minutes=120, seed=2, rewrite=table_rewriter(table), sink=seen.append)
    base = summarize(simulate(world, users=300, minutes=120, seed=2))
    after = summarize(turns)
    assert seen == turns
    assert after.defect_rate < base.defect_rate - 0.05
    assert after.rewritten > 0 and after.wins > 0 and after.losses == 0
    assert all(t.rewritten == table[t.utterance][0] for t in turns if t.rule_id)


def test_turns_become_events(catalog: Catalog) -> None:
    from loopwise.client.build import EventFactory

    t = simulate(World(catalog), users=5, minutes=10, seed=1)[0]
    ev = t.to_event(EventFactory("acme"))
    assert (ev.tenant, ev.user_id, ev.session_id, ev.client_time_ms) == ("acme", t.user_id, t.session_id, t.time_ms)
    assert ev.turn.utterance == t.utterance and ev.turn.status == t.status
    assert ev.turn.interpretation.slots.get("item", "") == t.item


class FakeClient:
    """Stands in for loopwise.client.Client: serves one rewrite rule, keeps what is sent."""

    def __init__(self, table: dict[str, str]) -> None:
        from loopwise.client.build import EventFactory

        self.events = EventFactory("acme")
        self.table = table
        self.sent: list = []
        self.flushed = 0

    def rewrite(self, utterance: str, *, user_id: str = "", session_id: str = ""):
        from loopwise.v1 import inference_pb2

        hit = self.table.get(utterance)
        return inference_pb2.RewriteResponse(rewritten=hit is not None, utterance=hit or "", rule_id="r1" if hit else "")

    def send(self, *events) -> None:
        self.sent.extend(events)

    def flush(self) -> None:
        self.flushed += 1


def test_the_driver_calls_rewrite_and_reports_turns(catalog: Catalog) -> None:
    import time

    from loopwise.tools.simulate.assistant import run

    world = World(catalog)
    m = next(m for m in catalog.movies if world.asr.confusion(m.spoken) and
             world.asr.confusion(m.spoken) not in catalog.by_spoken)
    fake = FakeClient({f"play {world.asr.confusion(m.spoken)}": f"play {m.spoken}"})
    before = int(time.time() * 1000)
    s = run(fake, users=200, minutes=30, seed=3, pace=False, world=world)
    assert len(fake.sent) == s.turns > 0 and fake.flushed == 1
    assert all(before - 31 * 60_000 <= e.client_time_ms <= time.time() * 1000 for e in fake.sent)
    rewritten = [e for e in fake.sent if e.turn.rewrite_rule_id]
    assert s.rewritten == len(rewritten) and all(e.turn.rewritten_utterance == f"play {m.spoken}" for e in rewritten)
