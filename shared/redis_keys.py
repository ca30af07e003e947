"""Every Redis key Loopwise uses, built here and nowhere else."""

from __future__ import annotations

PREFIX = "loopwise"


def rewrite_table(tenant: str) -> str:
    """Hash: normalised utterance -> JSON rule {rewrite, confidence, rule_id}."""
    return f"{PREFIX}:{tenant}:rewrites"


def model_pointer(tenant: str, model: str) -> str:
    """String: the version of (tenant, model) that serves."""
    return f"{PREFIX}:{tenant}:model:{model}:current"


def delta_replica(tenant: str, model: str, replica: str) -> str:
    """String with TTL, JSON ``{"replica", "version", "stream", "sequence", "rolled_back", "at_ms"}``:
    what one inference replica serves for (tenant, model), rewritten every few seconds
    (``loopwise model show`` lists them with ``SCAN``)."""
    return f"{PREFIX}:{tenant}:model:{model}:replica:{replica}"


def dedupe(scope: str, event_id: str) -> str:
    """String with TTL: an event id already processed by ``scope``."""
    return f"{PREFIX}:dedupe:{scope}:{event_id}"


def rewrite_version(tenant: str) -> str:
    """Integer counter: bumped (``INCR``) by whoever changes ``rewrite_table(tenant)``.

    Contract for writers (the miner, operators): change the hash first, then
    ``INCR`` this key (a ``MULTI``/``EXEC`` pipeline with both is best).
    Inference keeps an in-memory copy of the table and re-reads it
    (``HGETALL``) only when this counter moves, polling the counters of all its
    tenants with one ``MGET`` every ~0.5 s. While the counter does not exist
    (a writer that never bumps it), inference re-reads the whole table on every
    poll instead, which is correct but costs more on large tables.
    """
    return f"{PREFIX}:{tenant}:rewrites:version"


def model_history(tenant: str, model: str) -> str:
    """List, newest first: the moves of ``model_pointer(tenant, model)``.

    Each entry is JSON ``{"from": old_version, "to": new_version, "action":
    "promoted" | "published" | ..., "time_ms": int}``, pushed with ``LPUSH``
    in the same transaction that sets the pointer and trimmed to the newest
    50 (see ``loopwise.modelstore.pointers.move``). A rollback pops the head
    entry when its ``to`` is the current pointer and moves the pointer back to
    its ``from``; when the head does not match (the pointer was moved without
    recording), rollback falls back to the manifest's ``parent_version``.
    """
    return f"{PREFIX}:{tenant}:model:{model}:history"


def rewrite_blocklist(tenant: str, kind: str) -> str:
    """Set: normalised utterances (``kind`` "sources") or chain states / surface forms
    (``kind`` "targets") an operator never wants rewritten from / to (``loopwise rules block``)."""
    if kind not in ("sources", "targets"):
        raise ValueError(f"blocklist kind {kind!r}: expected sources or targets")
    return f"{PREFIX}:{tenant}:rewrites:blocklist:{kind}"


def rules_caught_up(tenant: str) -> str:
    """String, JSON ``{"through_ms": int, "refreshed_ms": int}``: written by the miner after each
    rules refresh of ``tenant``; every session whose turns all came before ``through_ms`` (event
    time) was mined and the rewrite table refreshed from it at ``refreshed_ms`` (``loopwise rules
    status``)."""
    return f"{PREFIX}:{tenant}:rewrites:caught_up"
