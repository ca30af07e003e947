"""Faust's Kafka transport with the consumer's fetch wait taken from the miner's settings.

Faust's aiokafka driver creates its consumer with ``fetch_max_wait_ms=1500``,
fixed. The wait bounds how long the broker holds a fetch that found no data.
Apache Kafka answers such a fetch as soon as data arrives; brokers that hold
it to the end (the local stack's Tansu: a record produced during a 1.5 s wait
arrived 0.38 s later at the median, 0.7 s at worst; with 100 ms, 22 and
50 ms) make that wait part of every record's latency. The miner turns every
impression into training examples, so this latency is the first hop of the
loop's freshness (impression -> fake negative -> delta -> `Rank`). A shorter
wait costs only more empty fetches while a partition is idle.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: driver.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher (aiokafka 0.11-0.14).
        consumer._fetch_max_wait_ms = int(getattr(transport, "fetch_max_wait_ms", 1500))
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """`faust.transport.drivers.aiokafka.Transport` whose worker consumer waits at most
    ``fetch_max_wait_ms`` per fetch."""

    Consumer = _Consumer

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 1500, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms


def use_fetch_wait(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Give ``app`` this transport; call before any topic or agent is declared."""
    app.transport = Transport(app.conf.broker_consumer, app, fetch_max_wait_ms=fetch_max_wait_ms)
