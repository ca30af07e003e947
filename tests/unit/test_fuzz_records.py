"""Every Kafka record decoder fuzzed: the miner's attribution intake, the trainer's
example and pair intake and the inference error memory's intake, with structured
messages built from the descriptors (`loopwise.tools.fuzz`), messages of the wrong
schema, random and damaged bytes, and oversized records.

The invariant: a record is used, or refused with a reason (dead-lettered or
counted), and nothing raises. The attribution agent's ``processing_error`` is its
last line of defence, so fuzz input that reaches it counts as a failure here.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopwise.features import InputBuilder
from loopwise.miner.agents.attribution import AttributionAgents
from loopwise.miner.attribution import Attribution, AttributionConfig
from loopwise.miner.attribution_windows import Windows
from loopwise.miner.debias import ExposureCounter, FixedPositions
from loopwise.miner.metrics import MinerMetrics
from loopwise.miner.recovery import ReadPositions
from loopwise.modelstore import coldstart
from loopwise.tools import fuzz
from loopwise.trainer.app import Trainer
from loopwise.trainer.data import build_example_part, build_pair_part
from loopwise.trainer.metrics import TrainerMetrics
from loopwise.trainer.replay_buffer import ReplayBuffer
from loopwise.v1 import events_pb2, learning_pb2
from loopwise.validation import Limits

BUDGET = settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OTHER_SCHEMAS = [learning_pb2.Example, learning_pb2.PreferencePair, learning_pb2.PredictionError,
                 learning_pb2.DeadLetter, events_pb2.Event]


def records(kind: type) -> st.SearchStrategy[bytes]:
    """Bytes a topic of ``kind`` may carry: valid-looking, other schemas, damaged, random, huge."""
    own = fuzz.strategy(kind.DESCRIPTOR).map(lambda m: m.SerializeToString())
    other = st.sampled_from(OTHER_SCHEMAS).flatmap(
        lambda k: fuzz.strategy(k.DESCRIPTOR, fuzz.Limits(max_depth=2))).map(lambda m: m.SerializeToString())
    damaged = st.tuples(own, st.integers(0, 4), st.integers(0, 4096)).map(lambda t: fuzz.mangle(*t))
    huge = st.integers(1, 3).map(lambda n: events_pb2.Event(tenant="default", event_id="x" * (n << 20))
                                 .SerializeToString())
    return st.one_of(own, other, damaged, st.binary(max_size=256), huge)


class Recorder:
    """Stands in for the dead-letter topic and the outbox: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, key, payload, topic, partition, offset, reason, detail) -> None:
        self.sent.append((reason, detail))

    def add(self, topic, key, value) -> None:
        self.sent.append(("forwarded", topic))


def attribution_agent() -> AttributionAgents:
    """The real agent's record handling (`_handle`) over in-memory state, without a Faust app."""
    agent = object.__new__(AttributionAgents)
    agent.metrics = MinerMetrics()
    agent.positions = ReadPositions(lambda topic, partition: 0)
    agent.dead, agent.outbox = Recorder(), Recorder()
    agent.attribution = Attribution(AttributionConfig(window_ms=60_000), FixedPositions(), ExposureCounter())
    agent.windows = Windows(agent.attribution, {})
    agent.limits = Limits(max_future_ms=3_600_000, max_age_ms=7 * 86_400_000)
    agent.tenants = frozenset({"default"})
    agent.turns = "turns"
    return agent


@BUDGET
@given(st.lists(records(events_pb2.Event), min_size=1, max_size=6))
def test_the_attribution_intake_uses_or_dead_letters_every_record(values):
    agent = attribution_agent()
    for offset, value in enumerate(values):
        before = len(agent.dead.sent)
        agent._handle(b"k", value, "events", 0, offset)  # raising here would be a processing_error
        for reason, detail in agent.dead.sent[before:]:
            assert reason and detail, "a dead letter without its reason"
    agent.windows.advance(1 << 62)  # closing every window is as safe as opening it


def trainer_intake(tmp: str) -> Trainer:
    """The real trainer's record intake (`Trainer._ingest`) into a real replay buffer, without Kafka."""
    trainer = object.__new__(Trainer)
    trainer.settings = SimpleNamespace(default_model="ranker", deltas=False, trainer_watchdog=False)
    trainer.kinds = {"examples": "examples", "preferences": "preferences"}
    trainer.tenants = frozenset({"default"})
    trainer.window = ReplayBuffer(tmp).open()
    trainer.metrics = TrainerMetrics()
    trainer.producer = None  # dead letters are logged and counted (`_dead`)
    trainer._new = {}
    return trainer


def addressed(kind: type) -> st.SearchStrategy[bytes]:
    """Fuzzed records of the trainer's own tenant, so that their values reach the buffer."""
    def aim(msg):
        msg.tenant, msg.model = "default", "ranker"
        return msg.SerializeToString()
    return fuzz.strategy(kind.DESCRIPTOR).map(aim)


@BUDGET
@given(st.lists(st.one_of(records(learning_pb2.Example), addressed(learning_pb2.Example)), max_size=6),
       st.lists(st.one_of(records(learning_pb2.PreferencePair), addressed(learning_pb2.PreferencePair)),
                max_size=6))
def test_the_trainer_intake_keeps_only_rows_it_can_train_on(tmp_path_factory, examples, pairs):
    trainer = trainer_intake(str(tmp_path_factory.mktemp("window")))
    for offset, (topic, value) in enumerate([("examples", v) for v in examples] + [("preferences", v) for v in pairs]):
        trainer._ingest(SimpleNamespace(topic=topic, partition=0, offset=offset, key=b"k", value=value,
                                        timestamp=0))
    trainer.window.flush()
    builder = InputBuilder(coldstart.DEFAULT_SPEC)
    part = build_example_part(builder, list(trainer.window.read("default", "ranker", "examples").payloads))
    assert np.isfinite(part.dense).all() and np.isfinite(part.weight).all(), "non-finite rows reach training"
    assert np.isfinite(part.label).all() and ((part.label >= 0) & (part.label <= 1)).all()
    pair_part = build_pair_part(builder, list(trainer.window.read("default", "ranker", "preferences").payloads))
    assert np.isfinite(pair_part.strength).all(), "non-finite pair strengths reach training"


def aimed_errors() -> st.SearchStrategy[bytes]:
    """Fuzzed errors addressed to the served memory, so that their keys, labels and scores reach it."""
    def aim(error: learning_pb2.PredictionError) -> bytes:
        error.tenant, error.model, error.version = "default", "ranker", "v1"
        return error.SerializeToString()
    return fuzz.strategy(learning_pb2.PredictionError.DESCRIPTOR).map(aim)


@BUDGET
@given(st.lists(st.one_of(records(learning_pb2.PredictionError), aimed_errors()), min_size=1, max_size=6))
def test_the_error_memory_intake_writes_or_counts_every_record(values):
    from loopwise.inference.errors_reader import decode
    from loopwise.inference.memory.bank import MemoryBank
    from loopwise.inference.memory.config import MemoryConfig
    from loopwise.inference.memory.consumer import ErrorConsumer
    from loopwise.inference.metrics import InferenceMetrics

    metrics = InferenceMetrics()
    bank = MemoryBank(MemoryConfig(mode="on"), metrics=metrics, tenants=["default"])
    memory = bank.serve("default", "ranker", "v1", 64)
    ErrorConsumer(bank, metrics).write(*decode([SimpleNamespace(value=v, timestamp=0) for v in values], metrics))
    counted = sum(s.value for m in metrics.registry.collect() if m.name == "loopwise_inference_memory_writes"
                  for s in m.samples if s.name.endswith("_total"))
    counted += metrics.registry.get_sample_value("loopwise_inference_errors_read_total", {"result": "malformed"}) or 0
    assert counted >= len(values), "a record neither written nor counted"
    keys = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    served = memory.compensate(np.full(8, 0.3, dtype=np.float32), keys)
    assert np.isfinite(served).all() and ((served >= 0) & (served <= 1)).all(), "fuzzed errors broke the memory"
