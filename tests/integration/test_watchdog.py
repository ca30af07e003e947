"""The production watchdog on the real broker and Redis: a version that ranks backwards
serves, the miner's fake-negative-mode examples of its traffic arrive, and the trainer
moves the pointer back to the cold-start (static) model within seconds, counted,
recorded in the pointer history and announced."""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("torch")

import redis  # noqa: E402

from loopwise import redis_keys  # noqa: E402
from loopwise.modelstore import coldstart, pointers  # noqa: E402
from loopwise.topics import ensure_topics  # noqa: E402
from loopwise.trainer.app import Trainer  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.v1 import learning_pb2  # noqa: E402
from tests.unit.test_watchdog import inverted, served_examples  # noqa: E402

from .kafka_read import read_records  # noqa: E402
from .test_trainer import produce, sample, wait_for  # noqa: E402


def test_a_production_below_the_static_model_is_rolled_back(broker, redis_url, topics, model_store, loop_thread,
                                                            tmp_path):
    ensure_topics(broker, topics.all(), 2)
    client = redis.Redis.from_url(redis_url)
    # v2 ranks backwards, and serves.
    model_store.publish("default", "ranker", inverted(coldstart.build_onnx()), feature_spec=coldstart.DEFAULT_SPEC,
                        hidden_dim=coldstart.HIDDEN_DIM, source="trainer")
    pointers.move(model_store, client, "default", "ranker", "v2", "promoted", serving="v1")
    settings = TrainerSettings(
        kafka_bootstrap=broker, redis_url=redis_url, model_store=model_store.url, topics=topics,
        metrics_host="127.0.0.1", metrics_port=0, topic_partitions=2, group_id=f"trainer-{uuid.uuid4().hex[:8]}",
        data_dir=str(tmp_path / "trainer"), commit_interval_s=0.3, deltas=False,
        trainer_min_examples=10**9, trainer_interval_s=3600,  # no training run: only the watchdog acts
        attribution_window_ms=2000, trainer_watchdog_check_s=0.2, trainer_watchdog_min_labels=1000)
    trainer = loop_thread.start(lambda: Trainer(settings))
    try:
        produce(broker, topics.examples, served_examples(3000, "v2"))
        wait_for(lambda: client.get(redis_keys.model_pointer("default", "ranker")) == b"v1", 30,
                 "the pointer back at the cold-start version")
        assert sample(trainer, "loopwise_trainer_production_rollbacks_total", tenant="default", model="ranker",
                      reason="below_static") == 1
        static = sample(trainer, "loopwise_trainer_production_online_auc", tenant="default", model="ranker",
                        scorer="static")
        production = sample(trainer, "loopwise_trainer_production_online_auc", tenant="default", model="ranker",
                            scorer="production")
        assert static > production + 0.05, (static, production)
    finally:
        loop_thread.run(trainer.stop())
    assert pointers.history(model_store, client, "default", "ranker")[0]["action"] == "watchdog_rollback"
    anns = [learning_pb2.ModelAnnouncement.FromString(r.value)
            for r in read_records(broker, topics.models, want=1, timeout=15)]
    assert [(a.action, a.version, a.previous_version) for a in anns] == [("rolled_back", "v1", "v2")]
    assert "below the static model" in anns[0].reason
