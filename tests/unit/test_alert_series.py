"""The series the loop's alert rules watch (observability/alerts.py) exist at 0 before
anything happens: the trainer's production rollbacks and delta steps from its start (its
tenants' default model) and for a model it meets later, inference's applied deltas and
delta rollbacks from a version's start. An alert on a counter never incremented would
otherwise watch nothing, and increase() would miss its first increment."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")  # the trainer's extra

from loopwise.inference.app import Inference  # noqa: E402
from loopwise.inference.metrics import InferenceMetrics  # noqa: E402
from loopwise.trainer.deltas_loop import OUTCOMES, DeltaLoop  # noqa: E402
from loopwise.trainer.metrics import TrainerMetrics  # noqa: E402
from loopwise.trainer.settings import TrainerSettings  # noqa: E402
from loopwise.trainer.watchdog import REASON, Watchdog  # noqa: E402


def trainer(**settings) -> SimpleNamespace:
    return SimpleNamespace(settings=TrainerSettings(tenants=("a", "b"), **settings), store=None, redis=None,
                           producer=None, metrics=TrainerMetrics())


def value(metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_the_trainer_counts_rollbacks_and_delta_steps_from_zero_at_start() -> None:
    t = trainer()
    dog, loop = Watchdog(t), DeltaLoop(t)
    for tenant in ("a", "b"):
        assert value(t.metrics, "loopwise_trainer_production_rollbacks_total",
                     tenant=tenant, model="ranker", reason=REASON) == 0
        for outcome in OUTCOMES:
            assert value(t.metrics, "loopwise_trainer_deltas_total", tenant=tenant, model="ranker",
                         outcome=outcome) == 0
    # A model met later has its series from its first example on.
    loop.add("a", "other", b"", 1, 1)
    dog.add("a", "other", SimpleNamespace(version="v2", impression_time_ms=1, label_time_ms=1,
                                          request_id="r", candidate_id="c", correction=False, feedback_mode=0,
                                          label=0, served_score=0.5), b"")
    assert value(t.metrics, "loopwise_trainer_deltas_total", tenant="a", model="other", outcome="published") == 0
    assert value(t.metrics, "loopwise_trainer_production_rollbacks_total",
                 tenant="a", model="other", reason=REASON) == 0


def test_what_is_off_has_no_series() -> None:
    t = trainer(deltas=False, trainer_watchdog=False)
    Watchdog(t), DeltaLoop(t)
    assert value(t.metrics, "loopwise_trainer_production_rollbacks_total",
                 tenant="a", model="ranker", reason=REASON) is None
    assert value(t.metrics, "loopwise_trainer_deltas_total", tenant="a", model="ranker", outcome="published") is None


@pytest.mark.parametrize("deltas", [True, False], ids=["deltas", "no-deltas"])
def test_inference_counts_deltas_from_zero_when_a_version_serves(deltas: bool) -> None:
    served = []
    replica = SimpleNamespace(metrics=InferenceMetrics(), deltas=object() if deltas else None,
                              memory=SimpleNamespace(serve=lambda *args: served.append(args)))
    loaded = SimpleNamespace(tenant="a", model="ranker", version="v3", manifest=SimpleNamespace(hidden_dim=8))
    Inference._serving_version(replica, loaded)
    assert served == [("a", "ranker", "v3", 8)]
    applied = value(replica.metrics, "loopwise_inference_deltas_total", tenant="a", model="ranker", result="applied")
    rollbacks = value(replica.metrics, "loopwise_inference_delta_rollbacks_total", tenant="a", model="ranker")
    assert (applied, rollbacks) == ((0, 0) if deltas else (None, None))
