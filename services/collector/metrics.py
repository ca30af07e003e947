"""Every Prometheus object of the collector."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from loopwise.grpcserver import RpcMetrics


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc = RpcMetrics("collector", self.registry)
        self.events_accepted = Counter("loopwise_collector_events_accepted_total",
                                       "Events acked by the broker", ["tenant", "kind"], registry=self.registry)
        self.events_rejected = Counter("loopwise_collector_events_rejected_total",
                                       "Events refused by validation", ["reason"], registry=self.registry)
        self.produce_failures = Counter("loopwise_collector_produce_failures_total",
                                        "Batches the broker did not ack (answered UNAVAILABLE)",
                                        ["error"], registry=self.registry)
        self.events_duplicate = Counter("loopwise_collector_events_duplicate_total",
                                        "Copies of an event id already in their batch (acked, not written again)",
                                        registry=self.registry)
        self.producer_recreated = Counter("loopwise_collector_producer_recreated_total",
                                          "Producers closed and replaced because they could not deliver",
                                          registry=self.registry)
        self.producer_up = Gauge("loopwise_collector_producer_up",
                                 "1 while the producer delivers, 0 from a failed delivery until the broker "
                                 "answers again (health is NOT_SERVING meanwhile)", registry=self.registry)
        self.in_flight = Gauge("loopwise_collector_in_flight_events",
                               "Events sent and not yet acked", registry=self.registry)
