"""InferenceService: Rank with the serving model, Rewrite from the rule table.

Sizes are checked at the door (`loopwise.limits`): at most ``MAX_CANDIDATES``
candidates, and a request whose impression could exceed ``MAX_EVENT_BYTES``
is refused with INVALID_ARGUMENT (reason ``impression_too_large``), measured
with a bound from the request's own byte size (no per-candidate work).

Only what was delivered is logged: the impression is offered to the emitter
from the call's done callback (after the answer was handed to the
transport), and only when the call was not cancelled and its deadline was
still at least ``impression_deadline_margin_ms`` away by then. The margin
stands for the round trip the server cannot see: the client's deadline runs
out before the server's (the request's transit) and the answer still has to
travel back, and gRPC tells a server nothing when an answer it sent arrives
too late. An abandoned call's impression is counted
(``impressions_dropped_total{reason="abandoned"}``), never emitted: its
candidates were not seen. The rule errs on the safe side: a call answered
within the margin of its deadline loses its impression even if it arrived.

The error memory (`memory.MemoryBank`) compensates the model's scores with
one vectorised read per call, in the same step as the model (off the event
loop with it for large calls): in mode ``on`` the compensated scores are
served, in ``shadow`` they are computed and the base is served. The answer
and the impression carry both (``base_scores``, ``compensated_scores``).

Sparse deltas (`deltas`): a call takes the serving version's delta snapshot
once (one reference read: one consistent sequence, whole) and moves the
version's probabilities by what the deltas changed in the sparse terms
(`deltas.Snapshot.adjust`, vectorised over the candidates) before the error
memory. The answer and the impression name the sequence (``delta_sequence``);
calls scored with deltas are remembered for the online guard (`deltas_guard`).
On top of live deltas, the candidates this replica showed that the deltas do
not cover yet take the trainer's next cross-table steps at once
(`pending.PendingShows`), and each answered call's candidates join them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np

from loopwise import stamps
from loopwise.auth import pseudonym
from loopwise.errors import InvalidArgument, NotFound, UnknownTenant
from loopwise.features import FeatureError
from loopwise.grpcserver import rpc
from loopwise.limits import (
    MAX_CANDIDATES,
    MAX_EVENT_BYTES,
    MAX_UTTERANCE_CHARS,
    impression_bytes_bound,
)
from loopwise.v1 import inference_pb2, inference_pb2_grpc

from .deltas import EMPTY, DeltaRegistry, Snapshot
from .deltas_guard import DeltaGuard
from .impressions import ImpressionEmitter
from .memory import MemoryBank, ModelMemory
from .metrics import InferenceMetrics
from .models import LoadedModel, ModelRegistry
from .pending import PendingShows
from .rewrites import RewriteTable
from .rewrites import response as rewrite_response
from .settings import InferenceSettings

log = logging.getLogger(__name__)


def impression_bound(request: inference_pb2.RankRequest) -> int:
    """`loopwise.limits.impression_bytes_bound` of a request, without its
    representation, from C-level sizes only: the request's (its ids counted
    twice) when that is under the limit, else with the ids' own size (the
    candidates less their feature columns)."""
    request_bytes, n = request.ByteSize(), len(request.candidates.ids)
    loose = impression_bytes_bound(request_bytes, request_bytes, n)
    if loose <= MAX_EVENT_BYTES:
        return loose
    cands = request.candidates
    columns = sum(c.ByteSize() + 6 for c in (*cands.categorical, *cands.numeric))
    return impression_bytes_bound(request_bytes, max(cands.ByteSize() - columns, 0), n)


def _expired(context, margin_s: float) -> bool:
    """Whether the call's deadline (if any) is less than ``margin_s`` away."""
    remaining = context.time_remaining()
    return remaining is not None and remaining < margin_s


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, settings: InferenceSettings, model_registry: ModelRegistry, emitter: ImpressionEmitter | None,
                 rewrites: RewriteTable, metrics: InferenceMetrics, memory: MemoryBank | None = None,
                 deltas: DeltaRegistry | None = None, guard: DeltaGuard | None = None,
                 pending: PendingShows | None = None) -> None:
        self.settings = settings
        self.deltas = deltas
        self.pending = pending
        self.guard = guard
        self.memory = memory
        self.model_registry = model_registry
        self.emitter = emitter
        self.rewrites = rewrites
        self.metrics = metrics
        self.rpc_metrics = metrics.rpc
        self.tenants = frozenset(settings.tenants)
        self.pseudonym_key = settings.pseudonymise_key.encode()

    def _tenant(self, tenant: str) -> str:
        if not tenant:
            raise InvalidArgument("tenant is required", violations=[("tenant", "required")])
        if tenant not in self.tenants:
            raise UnknownTenant(f"tenant {tenant[:64]!r} is not served here")
        return tenant

    @rpc("Rank")
    async def Rank(self, request: inference_pb2.RankRequest, context) -> inference_pb2.RankResponse:  # noqa: N802
        tenant = self._tenant(request.tenant)
        if self.pseudonym_key and request.user_id:
            request.user_id = pseudonym(self.pseudonym_key, request.user_id)
        model_name = request.model or self.settings.default_model
        loaded = self.model_registry.get(tenant, model_name)
        if loaded is None:
            raise NotFound(f"no model {model_name!r} for tenant {tenant!r}", reason="unknown_model")
        n = len(request.candidates.ids)
        if n == 0:
            raise InvalidArgument("no candidates", violations=[("candidates.ids", "at least one candidate")])
        if n > MAX_CANDIDATES:
            raise InvalidArgument(f"{n} candidates, at most {MAX_CANDIDATES}",
                                  violations=[("candidates.ids", f"at most {MAX_CANDIDATES}")])
        if (size := impression_bound(request)) > MAX_EVENT_BYTES:
            self.metrics.impressions_refused.inc()
            raise InvalidArgument(f"the impression of this request could take {size} bytes, at most "
                                  f"{MAX_EVENT_BYTES}: fewer candidates or smaller features",
                                  reason="impression_too_large",
                                  violations=[("request", f"impression at most {MAX_EVENT_BYTES} bytes")])
        memory = (self.memory.for_rank(tenant, loaded.model, loaded.version, loaded.manifest.hidden_dim)
                  if self.memory is not None else None)
        snap = self.deltas.serving(loaded) if self.deltas is not None else EMPTY
        start = time.perf_counter()
        if n > self.settings.offload_candidates:
            base, hidden, compensated, own, cross = await asyncio.get_running_loop().run_in_executor(
                None, self._score, loaded, memory, request, snap, self.pending)
        else:
            base, hidden, compensated, own, cross = self._score(loaded, memory, request, snap, self.pending)
        served = compensated if compensated is not None and memory is not None and memory.serves else base
        ranking = np.argsort(-served, kind="stable")
        self.metrics.score_seconds.observe(time.perf_counter() - start)
        self.metrics.candidates.observe(n)
        mode = memory.config.mode if memory is not None else "off"
        if compensated is not None:
            self.metrics.memory_compensation.labels(mode).observe(float(np.abs(compensated - base).mean()))
        request_id = request.request_id or uuid.uuid4().hex
        at_ms = stamps.now_ms()  # the impression's time
        if self.pending is not None and cross is not None:
            self.pending.shown(tenant, loaded.model, loaded.version, snap.layout, cross, base, at_ms)
        if compensated is not None and memory is not None:  # on the event loop, like the memory's writes
            memory.shown(request_id, request.user_id, request.candidates.ids, base)
        if self.guard is not None and snap.sequence:
            self.guard.remember(request_id, tenant, loaded.model, loaded.version, snap, request.candidates.ids,
                                own, served)
        if self.emitter is not None:
            self._offer_when_delivered(context, (tenant, request, request_id, loaded.model, loaded.version,
                                                 served, ranking, hidden, at_ms, base, compensated,
                                                 snap.sequence))
        return inference_pb2.RankResponse(
            request_id=request_id, model=loaded.model, version=loaded.version, scores=served.tolist(),
            ranking=ranking.tolist(), base_scores=base.tolist(),
            compensated_scores=compensated.tolist() if compensated is not None else (), memory_mode=mode,
            delta_sequence=snap.sequence)

    def _offer_when_delivered(self, context, item: tuple) -> None:
        """Offer the impression once the call is done, unless it was abandoned."""
        margin = self.settings.impression_deadline_margin_ms / 1000
        if _expired(context, margin):
            self.metrics.impressions_dropped.labels("abandoned").inc()
            return
        emitter = self.emitter
        assert emitter is not None

        def done(ctx) -> None:  # after the answer was handed to the transport
            if ctx.cancelled() or _expired(ctx, margin):
                self.metrics.impressions_dropped.labels("abandoned").inc()
            else:
                emitter.offer(item)

        context.add_done_callback(done)

    @staticmethod
    def _score(loaded: LoadedModel, memory: ModelMemory | None, request: inference_pb2.RankRequest,
               snap: Snapshot = EMPTY, pending: PendingShows | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """The model's probabilities (with ``snap``'s deltas and, on top of live deltas, the
        pending shows' steps), its hidden layer, the memory's compensation (None without one),
        the version's own probabilities, and the candidates' cross ids for `PendingShows.shown`
        (None when no pending shows apply)."""
        try:
            sparse, dense = loaded.builder.build(request.user_id, request.user, request.context,
                                                 request.candidates)
        except FeatureError as exc:
            raise InvalidArgument(str(exc), violations=[(exc.field, str(exc))]) from None
        own, hidden = loaded.score(sparse, dense)
        prob = snap.adjust(own, sparse, loaded.sparse_base) if snap.sequence else own
        cross = None
        if pending is not None and snap.sequence:
            prob, cross = pending.adjust(loaded.tenant, loaded.model, loaded.version, snap.layout, prob, sparse)
        if memory is None or hidden.ndim != 2 or hidden.shape[1] != memory.dim:
            return prob, hidden, None, own, cross
        return (prob, hidden, memory.compensate(prob, hidden, request.user_id, request.candidates.ids), own,
                cross)

    @rpc("Rewrite")
    async def Rewrite(self, request: inference_pb2.RewriteRequest, context) -> inference_pb2.RewriteResponse:  # noqa: N802
        tenant = self._tenant(request.tenant)
        if not request.utterance.strip():
            raise InvalidArgument("utterance is empty", violations=[("utterance", "required")])
        if len(request.utterance) > MAX_UTTERANCE_CHARS:
            raise InvalidArgument(f"utterance longer than {MAX_UTTERANCE_CHARS} characters",
                                  violations=[("utterance", f"at most {MAX_UTTERANCE_CHARS} characters")])
        if self.pseudonym_key and request.user_id:
            request.user_id = pseudonym(self.pseudonym_key, request.user_id)
        # local copy: no Redis round trip; a canary rule only for the users in its share
        applied = self.rewrites.lookup(tenant, request.utterance, request.user_id)
        if applied is None:
            self.metrics.rewrites.labels("miss").inc()
            return inference_pb2.RewriteResponse(rewritten=False, utterance=request.utterance)
        self.metrics.rewrites.labels("hit").inc()
        return rewrite_response(applied)
