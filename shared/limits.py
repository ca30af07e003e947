"""Every size and count limit on Loopwise data, defined once.

The collector refuses, `Rank` refuses (or trims, below) and the miner
dead-letters by these numbers, so what one service accepts the next one can
carry: an impression inference emits always passes the miner's checks.

Records on the broker:

- ``MAX_EVENT_BYTES``: one serialised `Event` (a client's event or an
  impression). The collector rejects larger ones (``event_too_large``), the
  miner dead-letters them, inference never emits one.
- ``MAX_RECORD_BYTES``: one record on any topic, the producers'
  ``max_request_size``. It leaves room above ``MAX_EVENT_BYTES`` for what
  wraps an event (a `DeadLetter`, the miner's `AttributionState` with the
  request's feedback) and stays under the defaults of Kafka brokers
  (``message.max.bytes`` 1,048,588) and clients (aiokafka and kafka-python
  1 MiB, Faust 1,000,000): a deployment needs no broker setting for it.

`Rank` requests:

- ``MAX_CANDIDATES`` per request (and per impression).
- A request whose impression could exceed ``MAX_EVENT_BYTES`` is refused
  with INVALID_ARGUMENT (`impression_bytes_bound` is the cheap bound it is
  measured with). An impression that fits only without the model's hidden
  representation is emitted without it (the miner then writes no prediction
  errors for it): the documented trim rule.

Strings and gRPC:

- ``MAX_ID_CHARS`` (event ids), ``MAX_FIELD_CHARS`` (user, session, request
  and candidate ids), ``MAX_VALUE_CHARS`` (a categorical feature value the
  model hashes), ``MAX_UTTERANCE_CHARS`` (turns and `Rewrite`).
- ``MAX_MESSAGE_BYTES``: one gRPC message, both ways.
- ``MAX_REQUEST_BYTES``: a smaller bound on the requests of a service that can
  use no more: a `Rank` request larger than ``MAX_EVENT_BYTES`` is always
  refused (its impression would be larger still), so inference's gRPC core
  refuses a longer message from its length prefix, before receiving it
  (RESOURCE_EXHAUSTED), instead of buffering up to ``MAX_MESSAGE_BYTES``.
"""

from __future__ import annotations

MAX_CANDIDATES = 10_000
MAX_EVENT_BYTES = 768 * 1024
MAX_RECORD_BYTES = 1_000_000
MAX_ID_CHARS = 128
MAX_FIELD_CHARS = 256
MAX_VALUE_CHARS = 256
MAX_UTTERANCE_CHARS = 1_000
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_REQUEST_BYTES = {"loopwise.v1.InferenceService": 1024 * 1024}

# What an impression adds to its request besides per-candidate data: event id,
# model, version, source, timestamps, a generated request id, length prefixes.
IMPRESSION_OVERHEAD_BYTES = 1024


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def impression_bytes_bound(request_bytes: int, ids_bytes: int, n: int, hidden_dim: int = 0) -> int:
    """An upper bound of the serialised impression of a `Rank` request of
    ``request_bytes`` (``RankRequest.ByteSize()``) with ``n`` candidates whose
    ids take ``ids_bytes`` on the wire: the request's features and ids, the ids
    again in served order, three float scores (served, base, compensated) and
    a ranking index per candidate and, with ``hidden_dim``, the int8
    representation and a float scale per row."""
    per_candidate = 12 + _varint_bytes(max(n - 1, 0))
    if hidden_dim:
        per_candidate += hidden_dim + 4
    return request_bytes + ids_bytes + n * per_candidate + IMPRESSION_OVERHEAD_BYTES
