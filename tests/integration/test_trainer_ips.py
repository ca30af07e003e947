"""The trainer on the real broker and Redis with the miner's IPS weights on: fake-negative
examples whose clicks weigh 20 (``LOOPWISE_IPS_WEIGHTS=true``, a clip of 0.05) train a
candidate whose logits spread wide. The gate's Platt fit once diverged on such a candidate
(its shift ran to about -1,350 here, -7,000 on bench/learning.py), every holdout row then
scored alike (AUC 0.5) and the weighted candidate was refused: through the stack, 12 of 20
were (bench/learning.py --requests 15000 with the weights on)."""

from __future__ import annotations

import math
import uuid

import pytest

pytest.importorskip("torch")

from loopwise.modelstore import coldstart  # noqa: E402
from loopwise.topics import ensure_topics  # noqa: E402
from loopwise.trainer.app import Trainer  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.v1 import learning_pb2  # noqa: E402
from tests.unit.test_trainer import make_examples  # noqa: E402

from .test_trainer import produce, wait_for  # noqa: E402

pytestmark = pytest.mark.slow
FAKE = learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE
CLICK_WEIGHT = 20.0


def fake_negative_mode(examples: list[learning_pb2.Example]) -> list[learning_pb2.Example]:
    """What the miner emits in ``fnw`` mode with the weights on: every shown candidate at once
    as a negative, and each click as a positive duplicate weighing its click weight."""
    out = []
    for e in examples:
        neg = learning_pb2.Example()
        neg.CopyFrom(e)
        neg.example_id, neg.label, neg.weight = f"{e.example_id}-shown", 0.0, 1.0
        neg.feedback_mode, neg.click_weight = FAKE, CLICK_WEIGHT
        out.append(neg)
        if e.label > 0:
            pos = learning_pb2.Example()
            pos.CopyFrom(e)
            pos.weight, pos.feedback_mode, pos.click_weight = CLICK_WEIGHT, FAKE, CLICK_WEIGHT
            out.append(pos)
    return out


def test_weighted_candidate_is_recalibrated_and_published(broker, redis_url, topics, model_store, loop_thread,
                                                           coldstart_onnx, tmp_path):
    ensure_topics(broker, topics.all(), 2)
    # A tenant of its own: Redis is shared by the run, and other tests move default/ranker's pointer.
    tenant = f"ips-{uuid.uuid4().hex[:8]}"
    model_store.publish(tenant, "ranker", coldstart_onnx, feature_spec=coldstart.DEFAULT_SPEC,
                        hidden_dim=coldstart.HIDDEN_DIM, source="coldstart")
    examples = fake_negative_mode(make_examples(3000, seed=5, prefix="ips", tenant=tenant))
    produce(broker, topics.examples, examples)
    settings = TrainerSettings(
        kafka_bootstrap=broker, redis_url=redis_url, model_store=model_store.url, topics=topics,
        metrics_host="127.0.0.1", metrics_port=0, topic_partitions=2, group_id=f"trainer-{uuid.uuid4().hex[:8]}",
        data_dir=str(tmp_path / "trainer"), commit_interval_s=0.3, trainer_check_s=0.2,
        trainer_every_n=len(examples) - 100, trainer_min_examples=1000, trainer_min_holdout=100,
        trainer_interval_s=3600, attribution_window_ms=0, tenants=(tenant,))
    trainer = loop_thread.start(lambda: Trainer(settings))
    try:
        wait_for(lambda: trainer.results, 90, "a training run")
        result = trainer.results[0]
        figures = result.figures
        assert result.action == "published", result.reason
        assert figures["candidate_auc"] > 0.6 and figures["candidate_auc"] > figures["production_auc"]
        assert math.isfinite(figures["candidate_logloss"]) and figures["candidate_logloss"] < 1.0
    finally:
        loop_thread.run(trainer.stop())
    manifest = model_store.manifest(tenant, "ranker", "v2")
    assert manifest.metrics["decision"] == "published"
