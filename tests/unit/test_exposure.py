"""Item exposure propensities per tenant, kept in the miner's table (issue 16)."""

from __future__ import annotations

from loopwise.miner.attribution import Attribution, AttributionConfig
from loopwise.miner.debias import ExposureCounter, FixedPositions, ImpressionExposure
from loopwise.v1 import events_pb2


def impression(tenant: str, request: str, ids: list[str]) -> events_pb2.Event:
    return events_pb2.Event(event_id=f"{tenant}-{request}", tenant=tenant, request_id=request, user_id="u",
                            client_time_ms=1_000, impression=events_pb2.Impression(candidate_ids=ids))


def test_tenants_do_not_share_exposure():
    seen = ImpressionExposure({})
    for r in range(4):
        seen.shown("a", ["x", "y"] if r % 2 else ["x"])
    seen.shown("b", ["y"])
    assert seen.propensity("a", "x") == 1.0
    assert seen.propensity("a", "y") == (2 + 0.5) / (4 + 0.5)
    assert seen.propensity("b", "x") == 0.5 / 1.5  # "x" of tenant b was never shown
    assert seen.propensity("c", "x") == 1.0  # a tenant without impressions yet
    counter = ExposureCounter()
    for _ in range(4):
        counter.clicked("a", "x")
    counter.clicked("b", "x")
    counter.clicked("b", "y")
    assert counter.propensity("b", "x") == 1.0  # the maximum is per tenant


def test_counts_survive_a_rebuild_from_the_table_mapping():
    table: dict[bytes, bytes] = {}
    seen = ImpressionExposure(table)
    for r in range(10):
        seen.shown("a", ["x"] if r < 7 else ["y"])
    seen.shown("b", ["x"])
    assert seen.flush() > 0 and table[b"a|n"] == b"10" and table[b"a|x|x"] == b"7"
    restarted = ImpressionExposure(table)
    assert restarted.propensity("a", "x") == 1.0  # nothing before the rebuild
    restarted.rebuild()
    for tenant, item in (("a", "x"), ("a", "y"), ("b", "x"), ("b", "z")):
        assert restarted.propensity(tenant, item) == seen.propensity(tenant, item)
    restarted.shown("a", ["y"])  # and it goes on counting from there
    assert restarted.propensity("a", "y") == (4 + 0.5) / (11 + 0.5)


def test_click_counts_survive_a_rebuild_and_share_the_table_without_mixing():
    """The popularity proxy (the default) keeps its click counts in the same table under its
    own tag: a restarted counter has the maxima back, and an impressions estimator reading
    the same table sees none of them."""
    table: dict[bytes, bytes] = {}
    counter = ExposureCounter(eta=0.5, store=table)
    for item in ["p"] * 16 + ["q"] * 4:
        counter.clicked("a", item)
    counter.clicked("b", "q")
    assert counter.flush() == 3 and table[b"a|c|p"] == b"16" and table[b"b|c|q"] == b"1"
    restarted = ExposureCounter(eta=0.5, store=table)
    assert restarted.propensity("a", "q") == 1.0  # nothing before the rebuild
    restarted.rebuild()
    for tenant, item in (("a", "p"), ("a", "q"), ("a", "new"), ("b", "q"), ("c", "p")):
        assert restarted.propensity(tenant, item) == counter.propensity(tenant, item)
    assert restarted.propensity("a", "q") == 0.5
    restarted.clicked("a", "q")  # and it goes on counting from there
    assert restarted.propensity("a", "q") == (5 / 16) ** 0.5
    other = ImpressionExposure(table)
    other.rebuild()
    assert other.counts == {} and other.propensity("a", "p") == 1.0


def test_forgetting_clicks_deletes_from_the_table_and_keeps_the_maximum():
    table: dict[bytes, bytes] = {}
    counter = ExposureCounter(store=table, max_items=4)
    for item in ["p", "p", "p", "q", "q"]:
        counter.clicked("a", item)
    counter.flush()
    for item in ["r", "s", "t"]:
        counter.clicked("a", item)
    counter.flush()
    assert len(counter.counts["a"]) <= 4 and table[b"a|c|p"] == b"3"
    assert all(k.decode().split("|")[2] in counter.counts["a"] for k in table)
    assert counter.propensity("a", "p") == 1.0 and counter.max_count["a"] == 3


def test_forgetting_deletes_from_the_table():
    table: dict[bytes, bytes] = {}
    seen = ImpressionExposure(table, max_items=4)
    seen.shown("a", ["p", "q"])
    seen.shown("a", ["p"])
    seen.flush()
    seen.shown("a", ["r", "s", "t"])
    seen.flush()
    assert len(seen.counts["a"]) <= 4 and b"a|x|p" in table
    assert all(k.decode().split("|")[2] in seen.counts["a"] for k in table if k.startswith(b"a|x|"))


def test_attribution_weighs_a_click_by_its_tenants_exposure():
    seen = ImpressionExposure({})
    attribution = Attribution(AttributionConfig(window_ms=10_000, clip=0.05), FixedPositions(power=0.0), seen)
    for r in range(9):
        attribution.on_event(None, impression("a", f"r{r}", ["common"]))
    state, _ = attribution.on_event(None, impression("a", "r9", ["common", "rare"]))
    click = events_pb2.Event(event_id="c", tenant="a", request_id="r9", user_id="u", client_time_ms=2_000,
                             click=events_pb2.Click(candidate_id="rare"))
    _, out = attribution.on_event(state, click)
    (example,) = out.examples
    theta = seen.propensity("a", "rare")
    assert theta < 0.2 and abs(example.exposure_propensity - theta) < 1e-6
    assert abs(example.weight - 1 / theta) < 1e-4


def test_impression_weights_rank_items_by_click_rate_where_popularity_keeps_the_click_count_order():
    """Item "a" is shown 100 times and clicked 10, "b" shown 10 times and clicked 3. Weighted
    clicks (sum of 1 / propensity, unclipped) rank "b" first with impressions (clicks per
    showing); the popularity proxy weighs by click counts alone and keeps "a" first, as
    naive counting does: ``n / (n / max) ** eta`` grows with ``n``."""
    seen, counter = ImpressionExposure({}), ExposureCounter(eta=0.5)
    for r in range(100):
        seen.shown("t", ["a", "b"] if r < 10 else ["a"])
    for item, clicks in (("a", 10), ("b", 3)):
        for _ in range(clicks):
            counter.clicked("t", item)

    def weighted(model: ExposureCounter | ImpressionExposure, item: str, clicks: int) -> float:
        return clicks / model.propensity("t", item)

    assert weighted(seen, "b", 3) > weighted(seen, "a", 10)
    assert weighted(counter, "a", 10) > weighted(counter, "b", 3)
