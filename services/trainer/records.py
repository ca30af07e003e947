"""What the trainer accepts from the examples and preferences topics.

A record that decodes is not yet usable: proto3 decodes bytes of another
schema or with damaged values into a message, and one NaN weight or label makes
the whole run's loss NaN (the candidate then fails the export's finite-weights
check, and the run's data is lost with it). `problem` names what is wrong with a
decoded record; the trainer dead-letters it with that reason instead of
training on it.
"""

from __future__ import annotations

import math

from loopwise.v1 import learning_pb2

MAX_WEIGHT = 1e6  # an importance weight past this is not a clipped IPS weight
MAX_ID = 1024  # characters of an id (request, candidate, user, example)


def _bad_number(name: str, value: float, lo: float, hi: float) -> tuple[str, str] | None:
    if not math.isfinite(value):
        return "invalid_value", f"{name} is not finite: {value}"
    if not lo <= value <= hi:
        return "invalid_value", f"{name} {value} outside [{lo}, {hi}]"
    return None


def _bad_id(name: str, value: str, required: bool) -> tuple[str, str] | None:
    if required and not value:
        return "missing_field", f"{name} is required"
    if len(value) > MAX_ID:
        return "invalid_value", f"{name} longer than {MAX_ID} characters ({len(value)})"
    return None


def example_problem(ex: learning_pb2.Example) -> tuple[str, str] | None:
    """(reason, detail) when ``ex`` cannot be trained on; None when it can."""
    return (_bad_id("candidate_id", ex.candidate_id, True)
            or _bad_id("request_id", ex.request_id, False)
            or _bad_id("user_id", ex.user_id, False)
            or _bad_id("example_id", ex.example_id, False)
            or _bad_number("label", ex.label, 0.0, 1.0)
            or _bad_number("weight", ex.weight, 0.0, MAX_WEIGHT))


def pair_problem(pair: learning_pb2.PreferencePair) -> tuple[str, str] | None:
    """(reason, detail) when ``pair`` cannot be trained on; None when it can."""
    return (_bad_id("preferred_id", pair.preferred_id, True)
            or _bad_id("other_id", pair.other_id, True)
            or _bad_id("user_id", pair.user_id, False)
            or _bad_id("pair_id", pair.pair_id, False)
            or _bad_number("strength", pair.strength, 0.0, MAX_WEIGHT))


def problem(kind: str, msg: learning_pb2.Example | learning_pb2.PreferencePair) -> tuple[str, str] | None:
    return example_problem(msg) if kind == "examples" else pair_problem(msg)
