"""The Loopwise Python client, sync and asyncio.

>>> from loopwise.client import Client  # doctest: +SKIP
>>> with Client("127.0.0.1:50051", "127.0.0.1:50052") as lw:  # doctest: +SKIP
...     ranked = lw.rank(["m1", "m2", "m3"], user_id="u1")
...     lw.report([lw.events.click(ranked.request_id, ranked.top(1)[0], user_id="u1")])

`report` sends at most `batch_size` events per call and retries a batch that
met UNAVAILABLE with the same event ids (the loop dedupes on them); `send` +
`flush` buffer events into batches.
"""

from loopwise.client.aio import AsyncClient
from loopwise.client.sync import Client, Ranked, ReportError

__all__ = ["AsyncClient", "Client", "Ranked", "ReportError"]
