"""The miner's Faust topics, declared on an app from settings (nothing happens at import).

Read:
- ``source``: ``loopwise.events.v1`` and ``loopwise.impressions.v1`` together,
  co-partitioned by request (both keyed ``tenant|r|request_id``);
- ``turns``: the internal ``{app_id}-turns``, every valid ``Turn`` re-keyed
  ``tenant|u|user_id`` (`turn_key`), so a user's turns meet on one partition;
- ``sessions``: the internal ``{app_id}-sessions``, closed sessions keyed by
  tenant on one partition.

Written through Faust: ``deadletter`` and ``rewrites``. Examples, preference
pairs and prediction errors go through the `outputs.Outbox`, by name
(``outputs``). Keys and values are raw bytes: the agents decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import faust

from loopwise.v1 import events_pb2

from .settings import MinerSettings

RAW = {"key_serializer": "raw", "value_serializer": "raw"}


@dataclass(frozen=True)
class MinerTopics:
    source: faust.TopicT
    deadletter: faust.TopicT
    turns: faust.TopicT
    sessions: faust.TopicT
    rewrites: faust.TopicT
    inputs: tuple[str, str]  # the names of ``source``: (events, impressions)
    outputs: Mapping[str, str]  # "examples" | "preferences" | "errors" -> topic name


def create_topics(app: faust.App, settings: MinerSettings) -> MinerTopics:
    names = settings.topics
    return MinerTopics(
        source=app.topic(names.events, names.impressions, **RAW),
        deadletter=app.topic(names.deadletter, **RAW),
        turns=app.topic(f"{settings.app_id}-turns", partitions=settings.topic_partitions, internal=True, **RAW),
        sessions=app.topic(f"{settings.app_id}-sessions", partitions=1, internal=True, **RAW),
        rewrites=app.topic(names.rewrites, **RAW),
        inputs=(names.events, names.impressions),
        outputs={name: getattr(names, name) for name in ("examples", "preferences", "errors")},
    )


def turn_key(event: events_pb2.Event) -> bytes:
    """The key of a turn on the turns topic (and of its user's entry in the ``sessions`` table)."""
    return f"{event.tenant}|u|{event.user_id}".encode()
