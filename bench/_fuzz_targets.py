"""The child of bench/fuzz.py: one target under atheris, the project's code instrumented."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import atheris

with atheris.instrument_imports(include=["loopwise"]):
    import grpc
    import numpy as np

    from loopwise.features import InputBuilder
    from loopwise.inference.errors_reader import decode
    from loopwise.inference.memory.bank import MemoryBank
    from loopwise.inference.memory.config import MemoryConfig
    from loopwise.inference.memory.consumer import ErrorConsumer
    from loopwise.inference.metrics import InferenceMetrics
    from loopwise.miner.agents.attribution import AttributionAgents
    from loopwise.miner.attribution import Attribution, AttributionConfig
    from loopwise.miner.attribution_windows import Windows
    from loopwise.miner.debias import ExposureCounter, FixedPositions
    from loopwise.miner.metrics import MinerMetrics
    from loopwise.miner.recovery import ReadPositions
    from loopwise.modelstore import ModelStore, coldstart
    from loopwise.tools import fuzz
    from loopwise.trainer.app import Trainer
    from loopwise.trainer.data import build_example_part, build_pair_part
    from loopwise.trainer.metrics import TrainerMetrics
    from loopwise.trainer.replay_buffer import ReplayBuffer
    from loopwise.v1 import events_pb2, feedback_pb2, inference_pb2, learning_pb2
    from loopwise.validation import Limits

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE}


class Broken(AssertionError):
    """An invariant the fuzzer broke (reported as a crash)."""


def payload(data: bytes, kind: Any) -> bytes:
    """Half structured (``kind`` built from the input), half raw or damaged wire bytes."""
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        return fdp.ConsumeBytes(fdp.remaining_bytes())
    msg = fuzz.build(kind.DESCRIPTOR, fuzz.ProviderDraw(fdp), fuzz.Limits(huge_text=20_000))
    raw = msg.SerializeToString()
    return fuzz.mangle(raw, fdp.ConsumeIntInRange(0, 4), fdp.ConsumeIntInRange(0, 4096)) if mode == 1 else raw


# -- gRPC through real servers ---------------------------------------------------------------
class Servers:
    """A Tansu broker, Redis, and inference + collector in this process on a loop thread."""

    def __init__(self) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import Workspace

        from loopwise.collector.app import Collector
        from loopwise.collector.settings import CollectorSettings
        from loopwise.inference.app import Inference
        from loopwise.inference.settings import InferenceSettings

        self.ws = Workspace("loopwise-fuzz-")
        # libFuzzer ends the process without Python's exit handlers: the parent (bench/fuzz.py)
        # stops what is listed in LOOPWISE_FUZZ_PIDS once this process is gone.
        broker, bootstrap = self.ws.broker()
        redis_proc, redis_url = self.ws.redis()
        pids = os.environ.get("LOOPWISE_FUZZ_PIDS")
        if pids:
            Path(pids).write_text(f"{broker.pid}\n{redis_proc.pid}\n")
        store = ModelStore(str(self.ws.root / "models"))
        store.publish("default", "ranker", coldstart.build_onnx(), feature_spec=coldstart.DEFAULT_SPEC,
                      hidden_dim=coldstart.HIDDEN_DIM, source="coldstart")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        common = {"kafka_bootstrap": bootstrap, "grpc_host": "127.0.0.1", "grpc_port": 0,
                  "metrics_host": "127.0.0.1", "metrics_port": 0, "grace_s": 1.0, "drain_s": 0.0,
                  "topic_partitions": 1}
        inference = self._start(lambda: Inference(InferenceSettings(
            **common, redis_url=redis_url, model_store=store.url)))
        collector = self._start(lambda: Collector(CollectorSettings(**common)))
        self.inference = grpc.insecure_channel(f"127.0.0.1:{inference.port}")
        self.feedback = grpc.insecure_channel(f"127.0.0.1:{collector.port}")

    def _start(self, factory: Callable[[], Any]) -> Any:
        async def make() -> Any:
            service = factory()
            await service.start()
            return service
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(120)


def grpc_target(method: str) -> Callable[[bytes], None]:
    servers = Servers()
    kind, channel, streaming = {
        "rank": (inference_pb2.RankRequest, servers.inference, False),
        "rewrite": (inference_pb2.RewriteRequest, servers.inference, False),
        "report": (feedback_pb2.ReportRequest, servers.feedback, True),
    }[method]
    path = {"rank": "/loopwise.v1.InferenceService/Rank", "rewrite": "/loopwise.v1.InferenceService/Rewrite",
            "report": "/loopwise.v1.FeedbackService/StreamReport"}[method]
    call = channel.stream_unary(path) if streaming else channel.unary_unary(path)

    def one(data: bytes) -> None:
        body = payload(data, kind)
        try:
            call(iter([body]) if streaming else body, timeout=30)
        except grpc.RpcError as err:
            if err.code() not in REFUSALS or not err.details():
                raise Broken(f"{path}: {err.code().name} {err.details()!r}") from None
    return one


# -- record intakes --------------------------------------------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, key, value, topic, partition, offset, reason, detail) -> None:
        if not reason or not detail:
            raise Broken("a dead letter without its reason")

    def add(self, topic, key, value) -> None:
        pass


def attribution_target() -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        agent = object.__new__(AttributionAgents)
        agent.metrics, agent.positions = MinerMetrics(), ReadPositions(lambda t, p: 0)
        agent.dead, agent.outbox = _Recorder(), _Recorder()
        agent.attribution = Attribution(AttributionConfig(window_ms=60_000), FixedPositions(), ExposureCounter())
        agent.windows = Windows(agent.attribution, {})
        agent.limits = Limits(max_future_ms=3_600_000, max_age_ms=7 * 86_400_000)
        agent.tenants, agent.turns = frozenset({"default"}), "turns"
        fdp = atheris.FuzzedDataProvider(data)
        for offset in range(fdp.ConsumeIntInRange(1, 4)):
            agent._handle(b"k", payload(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096)), events_pb2.Event),
                          "events", 0, offset)
        agent.windows.advance(1 << 62)
    return one


def trainer_target() -> Callable[[bytes], None]:
    root = Path(tempfile.mkdtemp(prefix="loopwise-fuzz-window-"))
    builder = InputBuilder(coldstart.DEFAULT_SPEC)
    counter = iter(range(1 << 62))

    def one(data: bytes) -> None:
        trainer = object.__new__(Trainer)
        trainer.settings = SimpleNamespace(default_model="ranker", deltas=False)
        trainer.kinds = {"examples": "examples", "preferences": "preferences"}
        trainer.tenants, trainer.producer, trainer._new = frozenset({"default"}), None, {}
        trainer.window = ReplayBuffer(root / str(next(counter))).open()
        trainer.metrics = TrainerMetrics()
        fdp = atheris.FuzzedDataProvider(data)
        for offset in range(fdp.ConsumeIntInRange(1, 4)):
            topic, kind = [("examples", learning_pb2.Example), ("preferences", learning_pb2.PreferencePair)][
                fdp.ConsumeIntInRange(0, 1)]
            value = payload(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096)), kind)
            if fdp.ConsumeBool():  # addressed to this trainer, so that its values reach the buffer
                try:
                    msg = kind.FromString(value)
                    msg.tenant, msg.model = "default", "ranker"
                    value = msg.SerializeToString()
                except Exception:  # noqa: BLE001 - undecodable stays as it is
                    pass
            trainer._ingest(SimpleNamespace(topic=topic, partition=0, offset=offset, key=b"k", value=value,
                                            timestamp=0))
        trainer.window.flush()
        part = build_example_part(builder, list(trainer.window.read("default", "ranker", "examples").payloads))
        pairs = build_pair_part(builder, list(trainer.window.read("default", "ranker", "preferences").payloads))
        if not (np.isfinite(part.weight).all() and np.isfinite(part.label).all()
                and np.isfinite(pairs.strength).all()):
            raise Broken("a non-finite row reached training")
    return one


def memory_target() -> Callable[[bytes], None]:
    keys = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)

    def one(data: bytes) -> None:
        metrics = InferenceMetrics()
        bank = MemoryBank(MemoryConfig(mode="on"), metrics=metrics, tenants=["default"])
        memory = bank.serve("default", "ranker", "v1", 64)
        consumer = ErrorConsumer(bank, metrics)
        fdp = atheris.FuzzedDataProvider(data)
        values = []
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            value = payload(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096)), learning_pb2.PredictionError)
            try:
                error = learning_pb2.PredictionError.FromString(value)
                error.tenant, error.model, error.version = "default", "ranker", "v1"
                value = error.SerializeToString()
            except Exception:  # noqa: BLE001
                pass
            values.append(SimpleNamespace(value=value, timestamp=0))
        consumer.write(*decode(values, metrics))
        served = memory.compensate(np.full(8, 0.3, dtype=np.float32), keys)
        if not all(math.isfinite(float(s)) and 0.0 <= s <= 1.0 for s in served):
            raise Broken("fuzzed errors broke the memory's compensation")
    return one


def fuzz_one(name: str, argv: list[str]) -> None:
    one = {"rank": lambda: grpc_target("rank"), "rewrite": lambda: grpc_target("rewrite"),
           "report": lambda: grpc_target("report"), "attribution": attribution_target,
           "trainer": trainer_target, "memory": memory_target}[name]()
    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()
