"""One limit, one place: what Rank accepts, its impression can carry, and the
miner's check accepts every impression inference can emit."""

from __future__ import annotations

import numpy as np
import pytest

from loopwise import limits, stamps
from loopwise.features import InputBuilder
from loopwise.inference.impressions import build_impression, skeleton
from loopwise.inference.servicer import impression_bound
from loopwise.modelstore import coldstart
from loopwise.v1 import inference_pb2
from loopwise.validation import Limits, check_event


def rank_request(n: int, *, id_len: int = 8, context_bytes: int = 0) -> inference_pb2.RankRequest:
    ids = [f"m{i:0{id_len - 1}d}" for i in range(n)]
    return inference_pb2.RankRequest(
        tenant="default", request_id="r1", user_id="u1", session_id="s1",
        user={"categorical": {"gender": "F"}, "numeric": {"activity": 0.4}},
        context={"categorical": {"hour": "20", "blob": "x" * context_bytes}},
        candidates={"ids": ids,
                    "categorical": [{"name": "genre", "values": ["Drama", "Comedy"] * (n // 2) + ["Drama"] * (n % 2)},
                                    {"name": "decade", "values": ["1990s"] * n}],
                    "numeric": [{"name": "popularity", "values": [i / n for i in range(n)]}]})


def impression_of(request: inference_pb2.RankRequest, hidden_dim: int = coldstart.HIDDEN_DIM):
    n = len(request.candidates.ids)
    rng = np.random.default_rng(0)
    scores = rng.random(n, dtype=np.float32)
    ranking = np.argsort(-scores, kind="stable")
    hidden = rng.standard_normal((n, hidden_dim), dtype=np.float32) if hidden_dim else None
    return build_impression("default", request, request.request_id, "ranker", "v12", scores, ranking, hidden,
                            stamps.now_ms(), scores, scores)  # served, base and compensated scores


@pytest.mark.parametrize("n,id_len", [(1, 8), (100, 8), (2_900, 8), (10_000, 8), (10_000, 24)])
def test_the_bound_holds_and_stays_close(n, id_len):
    request = rank_request(n, id_len=id_len)
    event = impression_of(request, hidden_dim=0)
    bound = impression_bound(request)
    assert event.ByteSize() <= bound
    if bound > limits.MAX_EVENT_BYTES:  # the tight bound, where it decides
        assert bound <= event.ByteSize() + 2 * limits.IMPRESSION_OVERHEAD_BYTES


def test_max_candidates_with_three_columns_fit_the_event_limit_without_representation():
    request = rank_request(limits.MAX_CANDIDATES)
    assert impression_bound(request) <= limits.MAX_EVENT_BYTES  # Rank accepts it
    full = impression_of(request)
    assert full.ByteSize() > limits.MAX_EVENT_BYTES  # the representation is what the trim rule drops
    trimmed = impression_of(request, hidden_dim=0)
    assert trimmed.ByteSize() <= limits.MAX_EVENT_BYTES


def test_the_miner_accepts_what_inference_can_emit():
    """The miner checks with its own settings' Limits: the largest impression Rank lets through passes."""
    from loopwise.miner.settings import MinerSettings

    settings = MinerSettings()
    miner_limits = Limits(max_future_ms=settings.max_future_s * 1000, max_age_ms=settings.max_age_s * 1000)
    for n in (2_900, 5_000, limits.MAX_CANDIDATES):
        event = impression_of(rank_request(n), hidden_dim=0)
        assert check_event(event, tenants={"default"}, now_ms=stamps.now_ms(), limits=miner_limits) is None, n
    small = impression_of(rank_request(100))  # with its representation
    assert check_event(small, tenants={"default"}, now_ms=stamps.now_ms(), limits=miner_limits) is None


def test_a_large_context_feature_is_over_the_bound():
    request = rank_request(10, context_bytes=1_200_000)
    assert impression_bound(request) > limits.MAX_EVENT_BYTES


def test_every_limit_is_the_shared_one():
    from loopwise import features, grpcserver

    assert Limits().max_event_bytes == limits.MAX_EVENT_BYTES
    assert Limits().max_candidates == features.MAX_CANDIDATES == limits.MAX_CANDIDATES
    assert grpcserver.MAX_MESSAGE_BYTES == limits.MAX_MESSAGE_BYTES
    assert limits.MAX_EVENT_BYTES < limits.MAX_RECORD_BYTES <= 1_000_000
    with pytest.raises(Exception, match="candidates"):
        InputBuilder(coldstart.DEFAULT_SPEC).build("u", rank_request(1).user, rank_request(1).context,
                                                    inference_pb2.RankRequest(candidates={"ids": ["a"] * (
                                                        limits.MAX_CANDIDATES + 1)}).candidates)


def test_a_dead_letter_skeleton_keeps_who_and_drops_the_bulk():
    event = impression_of(rank_request(1_000))
    bones = skeleton(event)
    assert bones.event_id == event.event_id and bones.request_id == "r1" and bones.impression.version == "v12"
    assert not bones.impression.candidate_ids and not bones.impression.representation
    assert bones.ByteSize() < 1_000
