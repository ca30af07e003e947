"""InferenceService: Rank with the serving model, Rewrite from the rule table."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np

from loopwise import stamps
from loopwise.errors import InvalidArgument, NotFound, UnknownTenant
from loopwise.features import MAX_CANDIDATES, FeatureError
from loopwise.grpcserver import rpc
from loopwise.v1 import inference_pb2, inference_pb2_grpc

from .impressions import ImpressionEmitter
from .metrics import InferenceMetrics
from .models import LoadedModel, ModelRegistry
from .rewrites import RewriteTable
from .settings import InferenceSettings

log = logging.getLogger(__name__)
MAX_UTTERANCE_CHARS = 1_000


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, settings: InferenceSettings, model_registry: ModelRegistry, emitter: ImpressionEmitter | None,
                 rewrites: RewriteTable, metrics: InferenceMetrics) -> None:
        self.settings = settings
        self.model_registry = model_registry
        self.emitter = emitter
        self.rewrites = rewrites
        self.metrics = metrics
        self.rpc_metrics = metrics.rpc
        self.tenants = frozenset(settings.tenants)

    def _tenant(self, tenant: str) -> str:
        if not tenant:
            raise InvalidArgument("tenant is required", violations=[("tenant", "required")])
        if tenant not in self.tenants:
            raise UnknownTenant(f"tenant {tenant[:64]!r} is not served here")
        return tenant

    @rpc("Rank")
    async def Rank(self, request: inference_pb2.RankRequest, context) -> inference_pb2.RankResponse:  # noqa: N802
        tenant = self._tenant(request.tenant)
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
        start = time.perf_counter()
        if n > self.settings.offload_candidates:
            prob, hidden = await asyncio.get_running_loop().run_in_executor(None, self._score, loaded, request)
        else:
            prob, hidden = self._score(loaded, request)
        ranking = np.argsort(-prob, kind="stable")
        self.metrics.score_seconds.observe(time.perf_counter() - start)
        self.metrics.candidates.observe(n)
        request_id = request.request_id or uuid.uuid4().hex
        if self.emitter is not None:
            self.emitter.offer((tenant, request, request_id, loaded.model, loaded.version, prob, ranking,
                                hidden, stamps.now_ms()))
        return inference_pb2.RankResponse(request_id=request_id, model=loaded.model, version=loaded.version,
                                          scores=prob.tolist(), ranking=ranking.tolist())

    @staticmethod
    def _score(loaded: LoadedModel, request: inference_pb2.RankRequest) -> tuple[np.ndarray, np.ndarray]:
        try:
            sparse, dense = loaded.builder.build(request.user_id, request.user, request.context,
                                                 request.candidates)
        except FeatureError as exc:
            raise InvalidArgument(str(exc), violations=[(exc.field, str(exc))]) from None
        return loaded.score(sparse, dense)

    @rpc("Rewrite")
    async def Rewrite(self, request: inference_pb2.RewriteRequest, context) -> inference_pb2.RewriteResponse:  # noqa: N802
        tenant = self._tenant(request.tenant)
        if not request.utterance.strip():
            raise InvalidArgument("utterance is empty", violations=[("utterance", "required")])
        if len(request.utterance) > MAX_UTTERANCE_CHARS:
            raise InvalidArgument(f"utterance longer than {MAX_UTTERANCE_CHARS} characters",
                                  violations=[("utterance", f"at most {MAX_UTTERANCE_CHARS} characters")])
        rule = self.rewrites.lookup(tenant, request.utterance)  # local copy: no Redis round trip
        if rule is None:
            self.metrics.rewrites.labels("miss").inc()
            return inference_pb2.RewriteResponse(rewritten=False, utterance=request.utterance)
        self.metrics.rewrites.labels("hit").inc()
        return inference_pb2.RewriteResponse(rewritten=True, utterance=rule.rewrite,
                                             confidence=rule.confidence, rule_id=rule.rule_id)
