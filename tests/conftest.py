"""Shared fixtures: one real broker and one real Redis per test run, fresh
topics per test, services in-process on one background event loop, talked to
through real gRPC channels."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loopwise.modelstore import ModelStore, coldstart
from loopwise.tools import procs
from loopwise.topics import Topics


class LoopThread:
    """One asyncio loop in a daemon thread; services live on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="services-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, factory: Callable[[], Any]) -> Any:
        """Build a service on the loop (its gRPC server binds to it) and start it."""

        async def _make() -> Any:
            service = factory()
            await service.start()
            return service

        return self.run(_make())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loopwise")


@pytest.fixture(scope="session")
def broker(workdir: Path) -> Iterator[str]:
    """A Tansu broker (Kafka protocol) on a free port: its bootstrap address."""
    port = procs.free_port()
    proc = procs.start_broker(port, workdir / "kafka.log")
    yield f"127.0.0.1:{port}"
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    port = procs.free_port()
    proc = procs.start_redis(port, workdir / "redis", workdir / "redis.log")
    yield f"redis://127.0.0.1:{port}/0"
    proc.stop()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def topics() -> Topics:
    """Fresh topic names for this test."""
    return Topics.with_prefix(f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture(scope="session")
def coldstart_onnx() -> bytes:
    return coldstart.build_onnx()


@pytest.fixture
def model_store(tmp_path: Path, coldstart_onnx: bytes) -> ModelStore:
    """A store with the cold-start model as default/ranker v1."""
    store = ModelStore(str(tmp_path / "models"))
    store.publish("default", "ranker", coldstart_onnx, feature_spec=coldstart.DEFAULT_SPEC,
                  hidden_dim=coldstart.HIDDEN_DIM, source="coldstart")
    return store


@pytest.fixture
def start_collector(loop_thread: LoopThread, broker: str, topics: Topics) -> Iterator[Callable[..., Any]]:
    """``start_collector(**settings)`` -> a running Collector on a free port."""
    from loopwise.collector.app import Collector
    from loopwise.collector.settings import CollectorSettings

    started = []

    def _start(**overrides: Any) -> Any:
        settings = CollectorSettings(**{"kafka_bootstrap": broker, "grpc_host": "127.0.0.1", "grpc_port": 0,
                                        "metrics_host": "127.0.0.1", "metrics_port": 0, "topics": topics, "grace_s": 1.0, "drain_s": 0.0,
                                        "topic_partitions": 2, **overrides})
        service = loop_thread.start(lambda: Collector(settings))
        started.append(service)
        return service

    yield _start
    for service in started:
        loop_thread.run(service.stop())


@pytest.fixture
def start_inference(loop_thread: LoopThread, broker: str, redis_url: str, topics: Topics,
                    model_store: ModelStore) -> Iterator[Callable[..., Any]]:
    """``start_inference(**settings)`` -> a running Inference on a free port."""
    from loopwise.inference.app import Inference
    from loopwise.inference.settings import InferenceSettings

    started = []

    def _start(**overrides: Any) -> Any:
        settings = InferenceSettings(**{"kafka_bootstrap": broker, "redis_url": redis_url,
                                        "model_store": model_store.url, "grpc_host": "127.0.0.1",
                                        "grpc_port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0, "topics": topics, "grace_s": 1.0, "drain_s": 0.0,
                                        "topic_partitions": 2, **overrides})
        service = loop_thread.start(lambda: Inference(settings))
        started.append(service)
        return service

    yield _start
    for service in started:
        loop_thread.run(service.stop())
