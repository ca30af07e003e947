"""The miner's Faust consumer takes its fetch wait from the settings, not Faust's fixed 1.5 s."""

from __future__ import annotations

import asyncio

from loopwise.miner.app import create_app
from loopwise.miner.settings import MinerSettings
from loopwise.miner.transport import Transport


def _worker_consumer_wait(**settings: object) -> int:
    async def build() -> int:
        miner = create_app(MinerSettings(kafka_bootstrap="127.0.0.1:1", **settings))
        assert isinstance(miner.app.transport, Transport)
        consumer = miner.app.consumer._thread._create_worker_consumer(miner.app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    return asyncio.run(build())


def test_the_worker_consumer_waits_the_configured_time():
    assert _worker_consumer_wait() == MinerSettings().kafka_fetch_max_wait_ms == 100
    assert _worker_consumer_wait(kafka_fetch_max_wait_ms=250) == 250
