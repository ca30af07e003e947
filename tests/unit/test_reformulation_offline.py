"""End to end without Kafka: simulated turns -> sessions -> defects -> chain -> rules -> held-out rerun."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _reformulation_offline import evaluate  # noqa: E402

from loopwise.miner.reformulation.rollback import RuleMonitor
from loopwise.tools.simulate.assistant import Catalog, World
from tests.unit.test_simulator import synthetic_catalog


def test_mined_rules_reduce_defects_on_held_out_seeds(movielens_titles: Catalog) -> None:
    world = World(movielens_titles)
    r = evaluate(world, users=400, minutes=240, train_seeds=(1, 2), test_seeds=(101,))
    assert r.rules and r.judged_rules
    assert r.after.defect_rate < r.before.defect_rate
    assert r.relative_reduction > 0
    assert r.after.wins > r.after.losses
    assert r.precision > 0.75
    assert len({x.rule_id for x in r.rules}) == len(r.rules)


def test_rollback_withdraws_rules_that_break_turns(movielens_titles: Catalog) -> None:
    """Needs the MovieLens titles: their sequels collide, so some mined rules break turns."""
    world = World(movielens_titles)
    kw = {"users": 600, "minutes": 240, "train_seeds": (1, 2), "test_seeds": (101,)}
    plain = evaluate(world, **kw)
    rolled = evaluate(world, rollback_seeds=(51, 52), monitor=RuleMonitor(min_turns=15), **kw)
    assert rolled.withdrawn and set(rolled.rules) | set(rolled.withdrawn) == set(plain.rules)
    assert rolled.after.losses < plain.after.losses
    assert rolled.after.defect_rate <= plain.after.defect_rate + 0.005


def test_a_simulated_turn_reads_as_its_event_does() -> None:
    from _reformulation_offline import record_of

    from loopwise.client.build import EventFactory
    from loopwise.miner.reformulation.sessions import TurnRecord
    from loopwise.tools.simulate.assistant import simulate

    turns = simulate(World(synthetic_catalog()), users=30, minutes=20, seed=4)
    factory = EventFactory("acme")
    for t in turns[:50]:
        ev = TurnRecord.from_event(t.to_event(factory))
        assert ev == record_of(t, "acme")
