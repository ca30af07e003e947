"""Inference settings (LOOPWISE_* environment variables, see loopwise.settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.settings import GrpcSettings

from .memory.compensate import Params
from .memory.config import MemoryConfig, per_model


@dataclass(frozen=True)
class InferenceSettings(GrpcSettings):
    grpc_port: int = 50052
    metrics_port: int = 9102
    # Model used when a RankRequest leaves `model` empty.
    default_model: str = DEFAULT_MODEL
    # onnxruntime intra-op threads per session.
    ort_threads: int = 1
    # Requests with more candidates than this are scored off the event loop.
    offload_candidates: int = 1000
    # Impressions waiting to be produced; beyond this they are dropped (counted).
    impression_buffer: int = 10_000
    impression_batch: int = 500
    # A batch not acked is retried for at most this long, then dropped (counted).
    impression_retry_s: float = 30.0
    # No impression for a call whose deadline was less than this away when its
    # answer left (a round trip: the client may have given up before it arrived).
    impression_deadline_margin_ms: float = 5.0
    emit_impressions: bool = True
    # LOOPWISE_PSEUDONYMISE_KEY (the collector's): Rank and Rewrite replace the user id by its
    # HMAC under it (loopwise.auth.pseudonym) before anything else, so the impression, the
    # user's features and a canary rule's user share use what training sees.
    pseudonymise_key: str = field(default="", repr=False)
    compression: str = "zstd"
    # Hot swap: the Redis pointers of every served (tenant, model) are read
    # (one MGET) this often; the store is listed for new models/versions this often.
    pointer_poll_s: float = 0.5
    store_scan_s: float = 2.0
    # Follow ModelAnnouncements on the models topic (a wake-up; the pointer decides).
    watch_announcements: bool = True
    # A refused version is not tried again before this many seconds (a missing one: 5 s).
    refused_retry_s: float = 300.0
    # Rewrite table copy: version counters polled this often (HGETALL on change).
    rewrite_poll_s: float = 0.5
    # Full re-read of a rewrite table even when its counter did not move.
    rewrite_full_refresh_s: float = 30.0
    # Error memory (memory/, docs/methods.md §1), per model: off | shadow (computed, the base is
    # served) | on (the compensated probability is served). Defaults for every model, overridden per
    # model by LOOPWISE_ERROR_MEMORY_MODELS ("ranker:mode=on,lambda=0.4;other:mode=off").
    error_memory_mode: str = "shadow"
    error_memory_k: int = 32  # K arrays
    error_memory_bits: int = 12  # L: 2^L buckets per array
    error_memory_lambda: float = 0.5
    error_memory_tau: float = 1.0
    error_memory_gamma: float = 1.0
    error_memory_prior: float = 1.0  # pseudo-count shrinking thin buckets toward no correction
    error_memory_half_life_s: float = 0.0  # decay in stream time; 0: none (reset on a version swap)
    # A click's error waits this long (stream time) before its buckets take it, so that its window's
    # negatives are there too (memory/fresh.py): the miner's attribution window; 0: at once.
    error_memory_settle_s: float = 0.0
    error_memory_seed: int = 0  # the hyperplanes: the same on every replica
    # The exact (user, item) table beside the sketch (memory/pairs.py): its lambda (0: no table),
    # its prior (pseudo-count; 0: a pair seen is scored by its own mean label), and 2^bits slots.
    # lambda 1.0 as tuned on the first 10% of bench/error_memory.py's stream; prior 1 (the tuning's 0
    # would score every candidate of a list shown again 0: ties; 1 halves them, their order kept).
    error_memory_pair_lambda: float = 1.0
    error_memory_pair_prior: float = 1.0
    error_memory_pair_bits: int = 16
    # The replica answering a Rank writes its pairs as shown (unclicked so far) at once.
    error_memory_pair_at_rank: bool = True
    error_memory_models: str = ""
    # On start, errors of the last this many seconds are read (at most warmup_records per partition).
    error_memory_warmup_s: float = 900.0
    error_memory_warmup_records: int = 100_000
    # Errors of a version not serving here yet, kept per (tenant, model) for when it does.
    error_memory_pending: int = 50_000

    # Sparse deltas (deltas*.py, docs/methods.md §7): applied on top of the serving version.
    deltas: bool = True
    # Base versions whose delta streams are kept per model, and deltas waiting for a gap.
    delta_keep_bases: int = 4
    delta_max_pending: int = 10_000
    # Guard: deltas fall back to their base when their online AUC is below the base's by
    # more than this, over the newest delta_guard_window labels (at least _min_labels).
    delta_guard_margin: float = 0.01
    # ... plus this many standard errors of the paired AUC difference (chance must not trip it).
    delta_guard_z: float = 3.0
    delta_guard_min_labels: int = 200
    delta_guard_window: int = 1_000
    delta_guard_remember: int = 10_000  # Rank calls remembered for their labels
    # This replica's applied sequence in Redis, rewritten this often (expires after 3x).
    # Pending shows (pending.py): on top of live deltas, the candidates this replica showed
    # take the trainer's next cross-table steps before the deltas bring them. The step is
    # the trainer's Adagrad rate of the cross table (trainer_cross_lr); 0: off.
    # Make before break: while the serving version has live deltas, a new version replaces it
    # once its own first delta is applied here, or after this many seconds (0: at once).
    delta_swap_wait_s: float = 2.0
    pending_step: float = 3.0
    # The miner's feedback mode (the same LOOPWISE_FEEDBACK_MODE): pending shows mirror the
    # trainer's fake negatives, so they apply with "fnw" only, not with "window".
    feedback_mode: str = "fnw"
    pending_max_age_s: float = 10.0  # dropped when no delta covered them by then
    pending_max_held: int = 1_000_000  # cross ids held per model (the oldest shows go first)
    delta_status_s: float = 5.0

    def memory_configs(self) -> tuple[MemoryConfig, dict[str, MemoryConfig]]:
        """The default error memory config and the per-model ones."""
        default = MemoryConfig(mode=self.error_memory_mode, k=self.error_memory_k, bits=self.error_memory_bits,
                               params=Params(lam=self.error_memory_lambda, tau=self.error_memory_tau,
                                             gamma=self.error_memory_gamma, prior=self.error_memory_prior),
                               half_life_s=self.error_memory_half_life_s, settle_s=self.error_memory_settle_s,
                               seed=self.error_memory_seed,
                               pair=Params(lam=self.error_memory_pair_lambda, gamma=1.0,
                                           prior=self.error_memory_pair_prior),
                               pair_bits=self.error_memory_pair_bits,
                               pair_at_rank=self.error_memory_pair_at_rank)
        return default, per_model(default, self.error_memory_models)
