"""``loopwise replay obd``: the Open Bandit Dataset sample through a running stack.

`run_obd` reads ``{root}/stack.json`` (a stack started with ``loopwise up``;
it fails clearly if there is none or it is not running) and reports the
rounds of one OBD sample file (`loopwise.tools.datasets.open_bandit`) to the
stack's FeedbackService, as a client that ranks with its own system would:

- per round one ``Impression``: source ``obd-{policy}``, candidate ids
  ``obd-{campaign}-{item_id}`` of the logged slots in position order, the
  logging policy's propensities, the four hashed user features as
  categorical ``user`` features, and ``context`` features ``campaign`` and
  ``positions`` (the OBD positions of the candidates, e.g. ``"3"`` or
  ``"1,3"``);
- per clicked slot one ``Click`` with its OBD position (1..3), 1 s after
  its impression (OBD logs no click time).

The sample is a subsample of rows, so nearly every round holds one slot of
its three (see `loopwise.tools.datasets.load_open_bandit`): such an impression
lists a single candidate even where it was shown at position 2 or 3, and
nothing is invented for the slots that were not sampled. The Click carries
the true position; the impression's ``context.positions`` says where each
candidate was.

Request ids (``obd-{policy}-{campaign}-{round:06d}``) and event ids (the
request id plus ``-imp`` or ``-click{position}``) are deterministic: a
resent batch is deduped, and so is a second replay while the miner still
holds those requests' states; once it has forgotten them (one window after
closing) a second replay is new traffic again. Timestamps keep the sample's
gaps, shifted so the last event replayed is now (the collector refuses
events older than 30 days or from the future; the sample spans 7 days).

``speedup`` > 0 paces the replay on the sample's clock, that many times
faster than real time (the CLI's default: 3000x, the week in ~3.5 minutes);
0 sends as fast as the collector takes batches. The miner closes windows by
per-partition watermarks on the events' own clock, so an unpaced replay is
attributed like a paced one; pacing only makes it look like live traffic.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from loopwise.client import Client, ReportError, build
from loopwise.tools import datasets, procs, stack
from loopwise.v1 import events_pb2, feedback_pb2

CLICK_DELAY_MS = 1_000
BATCH_SIZE = 500
PROGRESS_LINES = 5
MIN_PACING_SLEEP_S = 0.05


@dataclass
class ReplayCounts:
    rounds: int = 0
    impressions: int = 0
    clicks: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, response: feedback_pb2.ReportResponse | None) -> None:
        if response is None:
            return
        self.accepted += response.accepted
        self.rejected += response.rejected
        self.reasons.update(r.reason for r in response.results if not r.accepted)


class ReplayError(Exception):
    """The replay could not start or the collector did not take everything."""


# -- events --------------------------------------------------------------------------------


def request_id(policy: str, campaign: str, index: int) -> str:
    return f"obd-{policy}-{campaign}-{index:06d}"


def candidate_id(campaign: str, item: int) -> str:
    return f"obd-{campaign}-{item}"


def time_shift_ms(timestamp_us: np.ndarray, now_ms: int) -> int:
    """What to add to a round's time (ms) so the last event replayed lands on ``now_ms``."""
    last_ms = int(timestamp_us.max()) // 1000 if timestamp_us.size else now_ms
    return now_ms - (last_ms + CLICK_DELAY_MS)


def round_events(events: build.EventFactory, data: datasets.OpenBandit, index: int, shift_ms: int
                 ) -> list[events_pb2.Event]:
    """The Impression of round ``index`` and a Click per clicked slot."""
    rid = request_id(data.policy, data.campaign, index)
    at_ms = int(data.timestamp_us[index]) // 1000 + shift_ms
    slots = np.flatnonzero(data.item[index] >= 0)
    ids = [candidate_id(data.campaign, int(data.item[index, s])) for s in slots]
    impression = events.impression(rid, ids, propensities=[float(data.propensity[index, s]) for s in slots],
                                   source=f"obd-{data.policy}", at_ms=at_ms, event_id=f"{rid}-imp")
    impression.impression.user.CopyFrom(build.features(
        {name: str(value) for name, value in zip(datasets.OBD_USER_FEATURES, data.user[index], strict=True)}))
    impression.impression.context.CopyFrom(build.features(
        {"campaign": data.campaign, "positions": ",".join(str(s + 1) for s in slots)}))
    clicks = [events.click(rid, cid, position=int(s) + 1, at_ms=at_ms + CLICK_DELAY_MS,
                           event_id=f"{rid}-click{int(s) + 1}")
              for s, cid in zip(slots, ids, strict=True) if data.click[index, s]]
    return [impression, *clicks]


# -- sending -------------------------------------------------------------------------------


def flush(client: Client, counts: ReplayCounts) -> None:
    try:
        counts.add(client.flush())
    except ReportError as exc:
        raise ReplayError(f"the collector did not acknowledge {len(exc.events)} events: {exc}") from exc


def pace(client: Client, counts: ReplayCounts, start: float, offset_us: int, speedup: float) -> None:
    """Wait until ``offset_us`` of sample time has passed at ``speedup`` (flushing first)."""
    wait = start + offset_us / 1e6 / speedup - time.monotonic()
    if wait >= MIN_PACING_SLEEP_S:
        flush(client, counts)
        time.sleep(wait)


def replay(client: Client, data: datasets.OpenBandit, rounds: int, speedup: float = 0.0) -> ReplayCounts:
    """Report the first ``rounds`` rounds of ``data``; the collector's answers tallied."""
    counts = ReplayCounts(rounds=rounds)
    stamps = data.timestamp_us[:rounds]
    shift = time_shift_ms(stamps, stamps.now_ms())
    every = max(1, rounds // PROGRESS_LINES)
    start = time.monotonic()
    for index in range(rounds):
        if speedup > 0:
            pace(client, counts, start, int(stamps[index] - stamps[0]), speedup)
        events = round_events(client.events, data, index, shift)
        counts.impressions += 1
        counts.clicks += len(events) - 1
        counts.sent += len(events)
        try:
            counts.add(client.send(*events))
        except ReportError as exc:
            raise ReplayError(f"the collector did not acknowledge {len(exc.events)} events: {exc}") from exc
        if (index + 1) % every == 0 and index + 1 < rounds:
            print(f"  {index + 1:>6}/{rounds} rounds  events sent {counts.sent}, accepted {counts.accepted}")
    flush(client, counts)
    counts.seconds = time.monotonic() - start
    return counts


# -- entry point ---------------------------------------------------------------------------


def running_stack(root: Path) -> stack.StackInfo:
    """The stack of ``root``, every process alive; else `ReplayError` saying what to do."""
    info = stack.StackInfo.read(root.resolve())
    if info is None:
        raise ReplayError(f"no stack in {root} (start one with: loopwise --root {root} up)")
    dead = [name for name, pid in info.pids.items() if not procs.pid_alive(pid)]
    if dead:
        raise ReplayError(f"the stack in {root} is not running ({', '.join(dead)} gone); "
                          f"loopwise --root {root} down, then up")
    return info


def show(counts: ReplayCounts, data: datasets.OpenBandit) -> None:
    print(f"replayed {counts.rounds} of {len(data)} rounds of OBD {data.policy}/{data.campaign} in "
          f"{counts.seconds:.1f}s: {counts.impressions} impressions, {counts.clicks} clicks")
    print(f"collector accepted {counts.accepted}/{counts.sent} events"
          + (f", rejected {counts.rejected}: {dict(counts.reasons)}" if counts.rejected else ""))


def run_obd(root: Path, policy: str = "bts", campaign: str = "all", rounds: int | None = None,
            speedup: float = 0.0, *, batch_size: int = BATCH_SIZE, cache_dir: Path | None = None) -> int:
    """Replay an OBD sample file through the stack in ``root``; 0 if the collector took every event."""
    if (rounds is not None and rounds < 1) or speedup < 0:
        print("loopwise replay obd: --rounds must be at least 1 and --speedup non-negative", file=sys.stderr)
        return 2
    try:
        info = running_stack(root)
        data = datasets.open_bandit(policy, campaign, cache_dir=cache_dir)
        total = len(data) if rounds is None else min(rounds, len(data))
        tenant = info.tenants[0] if info.tenants else "default"
        print(f"replaying {total} rounds of OBD {policy}/{campaign} ({data.rows} logged slots in the file) "
              f"to {info.collector} (tenant {tenant!r})")
        with Client(info.collector, tenant=tenant, batch_size=batch_size, api_key=info.api_key) as client:
            counts = replay(client, data, total, speedup)
    except (ReplayError, datasets.DatasetError) as exc:
        print(f"loopwise replay obd: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"loopwise replay obd: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    show(counts, data)
    return 0 if counts.accepted == counts.sent else 1
