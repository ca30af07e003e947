"""The miner's changelog-backed tables, declared on an app from settings.

Each lives in memory and is recovered, after a restart or a rebalance, from
its changelog topic ``{app_id}-{name}-changelog``: a table's name is part of
the deployment (a renamed table starts empty). Keys and values are bytes.

- ``attribution``: ``tenant|r|request_id`` -> ``AttributionState``
  (`attribution_windows.Windows`), partitioned like the inputs;
- ``sessions``: ``tenant|u|user_id`` -> the user's open session
  (`reformulation.session_book.SessionBook`), partitioned like the turns;
- ``exposure``: the item exposure counts (`debias.StoredCounts`), one partition,
  written on the close timer: ``tenant|c|candidate_id`` -> its clicks
  (`debias.ExposureCounter`, the popularity proxy), or ``tenant|x|candidate_id`` ->
  impressions that showed it and ``tenant|n`` -> the tenant's impressions
  (`debias.ImpressionExposure`);
- ``reformulation``: ``tenant|<chunk>`` and ``tenant|meta`` -> each tenant's
  mining checkpoint (`agents.reformulation`), one partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import TableT

from .settings import MinerSettings


@dataclass(frozen=True)
class MinerTables:
    attribution: TableT
    sessions: TableT
    checkpoints: TableT
    exposure: TableT


def create_tables(app: faust.App, settings: MinerSettings) -> MinerTables:
    def table(name: str, partitions: int) -> TableT:
        return app.Table(name, default=None, partitions=partitions, use_partitioner=True, key_type=bytes,
                         value_type=bytes)

    return MinerTables(attribution=table("attribution", settings.topic_partitions),
                       sessions=table("sessions", settings.topic_partitions),
                       checkpoints=table("reformulation", 1), exposure=table("exposure", 1))
