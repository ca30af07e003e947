"""Attribution: impressions x feedback -> examples, preference pairs, errors.

The state of one request (`AttributionState`) moves by event time only, so a
replayed log is attributed exactly like live traffic:

- the impression opens a window of ``window_ms`` from its own timestamp;
- a click or accept on a shown candidate is a positive, emitted at once;
  a reject is an explicit negative, emitted at once; the first label of a
  candidate wins;
- when the watermark passes the window's end, every shown candidate without
  feedback becomes a negative, preference pairs are built, and the state is
  kept (closed) for one more window to recognise duplicates and late feedback;
- feedback whose own timestamp is past the window is late: a positive on a
  candidate already emitted as a negative yields a correction record;
- feedback may precede its impression: it waits in the state for one window
  (from its own timestamp), then is dead-lettered as ``unknown_request``;
- an event id seen before is a duplicate and changes nothing;
- a prediction error (the error memory's input) is emitted with its label:
  at once for a click, accept or reject, at close for a no-feedback
  negative; one per shown candidate (id from tenant, request, candidate), so
  a record read again after a crash repeats the id and consumers dedupe. Its
  ``served_score`` is the model's own probability (the impression's
  ``base_scores`` when serving logged them): what the memory compensates,
  whether or not the memory's correction was served;
- a state that raises when closed (poison stored before validation) is
  dead-lettered as ``processing_error`` and forgotten, never retried.

So after its window every shown candidate has exactly one (non-correction)
example, whatever the arrival order and duplication (property-tested).

That is the ``window`` mode. In ``fnw`` (fake negatives, docs/methods.md section 6) the
impression emits at once a negative per shown candidate (``feedback_mode`` FAKE_NEGATIVE), a
candidate's first click or accept a positive duplicate at once (IPS-weighted; also when late),
a reject nothing. Closing emits only errors and pairs: the window decides when a negative is
final. The mode is fixed in the state at its impression; a replayed event (duplicate id) emits
nothing again (positives are marked in ``emitted``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from loopwise import representation
from loopwise.v1 import events_pb2, features_pb2, learning_pb2

from .debias import ExposureModel, clipped_weight, position_propensity

log = logging.getLogger(__name__)
FEEDBACK = ("click", "accept", "reject")
FEEDBACK_MODES = {"window": learning_pb2.FEEDBACK_MODE_WINDOW, "fnw": learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE}
FAKE = learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE
SOURCE = {"click": learning_pb2.LABEL_SOURCE_CLICK, "accept": learning_pb2.LABEL_SOURCE_ACCEPT,
          "reject": learning_pb2.LABEL_SOURCE_REJECT}


class PositionModel(Protocol):
    def propensities(self) -> np.ndarray: ...

    def update(self, positions: np.ndarray, item_ids: list[str], clicks: np.ndarray) -> None: ...


@dataclass(frozen=True)
class AttributionConfig:
    window_ms: int = 30 * 60 * 1000
    # Clip M of the inverse-propensity weights; weights False: every example weighs 1 (the
    # propensities are still computed and recorded on the example).
    clip: float = 0.05
    weights: bool = True
    # Preference strength of "click over skipped-above": dwell of this many ms
    # counts as fully satisfied; unknown dwell counts as `unknown_dwell`.
    full_dwell_ms: int = 30_000
    unknown_dwell: float = 0.7
    feedback_mode: str = "window"  # or "fnw": fake negatives at once, positive duplicates


@dataclass
class Outputs:
    examples: list[learning_pb2.Example] = field(default_factory=list)
    pairs: list[learning_pb2.PreferencePair] = field(default_factory=list)
    errors: list[learning_pb2.PredictionError] = field(default_factory=list)
    # (reason, detail, the event)
    dead: list[tuple[str, str, events_pb2.Event]] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0
    attributed: int = 0
    conflicts: int = 0

    def extend(self, other: Outputs) -> None:
        self.examples += other.examples
        self.pairs += other.pairs
        self.errors += other.errors
        self.dead += other.dead
        self.duplicates += other.duplicates
        self.late += other.late
        self.attributed += other.attributed
        self.conflicts += other.conflicts


def stable_id(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


class _Shown:
    """The impression of a state, decoded once for one step."""

    def __init__(self, imp: events_pb2.Event) -> None:
        self.event = imp
        body = imp.impression
        self.ids = list(body.candidate_ids)
        self.position: dict[str, int] = {}
        for i, cid in enumerate(self.ids):
            self.position.setdefault(cid, i + 1)  # a candidate shown twice counts where first shown
        self.scores = list(body.scores)
        # The model's own probability (before the error memory) where serving logged it.
        base = list(body.base_scores)
        self.base = base if len(base) == len(self.ids) else self.scores
        self.logged = list(body.propensities)
        cands = body.candidates
        ranking = list(body.ranking)
        # request-order index of each served position
        self.index = ranking if len(ranking) == len(self.ids) else list(range(len(self.ids)))
        self.has_features = len(cands.ids) == len(self.ids)

    @cached_property
    def columns(self) -> list[tuple[str, list[str]]]:
        cands = self.event.impression.candidates
        return [(c.name, list(c.values)) for c in cands.categorical] if self.has_features else []

    @cached_property
    def numeric(self) -> list[tuple[str, list[float]]]:
        cands = self.event.impression.candidates
        return [(c.name, list(c.values)) for c in cands.numeric] if self.has_features else []

    @cached_property
    def hidden(self) -> np.ndarray | None:
        body = self.event.impression
        if not (body.representation and body.representation_dim):
            return None
        try:
            return representation.decode(body.representation, body.representation_scale, body.representation_dim)
        except ValueError:
            return None

    def features(self, position: int) -> features_pb2.Features:
        out = features_pb2.Features()
        if not self.has_features:
            return out
        j = self.index[position - 1]
        for name, values in self.columns:
            out.categorical[name] = values[j]
        for name, values in self.numeric:
            out.numeric[name] = values[j]
        return out

    def key(self, position: int) -> list[float]:
        if self.hidden is None:
            return []
        j = self.index[position - 1]
        return self.hidden[j].tolist() if j < len(self.hidden) else []


class Attribution:
    """The attribution rules, with the debiasing estimators they share across requests."""

    def __init__(self, config: AttributionConfig, positions: PositionModel, exposure: ExposureModel) -> None:
        self.config = config
        self.positions = positions
        self.exposure = exposure
        if config.feedback_mode not in FEEDBACK_MODES:
            raise ValueError(f"feedback mode {config.feedback_mode!r}: expected one of {', '.join(FEEDBACK_MODES)}")

    # -- transitions --------------------------------------------------------------------
    def on_event(self, state: learning_pb2.AttributionState | None, event: events_pb2.Event
                 ) -> tuple[learning_pb2.AttributionState | None, Outputs]:
        """Apply one impression or feedback event; returns the new state (None = forget)."""
        out = Outputs()
        state = state if state is not None else learning_pb2.AttributionState()
        kind = event.WhichOneof("body")
        if self._seen(state, event.event_id):
            out.duplicates += 1
            return state, out
        if kind == "impression":
            if state.HasField("impression"):  # a second impression for one request id
                out.dead.append(("duplicate_request_id", "a second impression for this request id", event))
                return state, out
            state.impression.CopyFrom(event)
            self.exposure.shown(event.tenant, event.impression.candidate_ids)
            state.deadline_ms = event.client_time_ms + self.config.window_ms
            state.feedback_mode = FEEDBACK_MODES[self.config.feedback_mode]
            if state.feedback_mode == FAKE:
                shown = _Shown(event)
                for position in shown.position.values():
                    out.examples.append(self._example(shown, position, 0.0, learning_pb2.LABEL_SOURCE_NO_FEEDBACK,
                                                      event.client_time_ms, fake=True))
            waiting = list(state.feedback)
            del state.feedback[:]
            for fb in waiting:  # feedback that came first
                out.extend(self._feedback(state, fb))
            return state, out
        if kind not in FEEDBACK:
            out.dead.append(("not_attributable", f"{kind} events are not attributed", event))
            return state, out
        if not state.HasField("impression"):
            if not state.feedback:
                state.deadline_ms = event.client_time_ms + self.config.window_ms
            state.feedback.append(event)
            return state, out
        out.extend(self._feedback(state, event))
        return state, out

    def close(self, state: learning_pb2.AttributionState) -> tuple[learning_pb2.AttributionState | None, Outputs]:
        """The window ended (watermark >= deadline): negatives, pairs; or dead letters.

        A state that cannot be closed (its impression stored before it was validated,
        recovered from the changelog) would fail again at every attempt and after every
        restart: its events are dead-lettered (``processing_error``) and it is forgotten."""
        try:
            return self._close(state)
        except Exception as exc:  # noqa: BLE001 - poison must not stop the window timer
            log.warning("window could not be closed, dead-lettered", exc_info=exc,
                        extra={"tenant": state.impression.tenant, "request_id": state.impression.request_id})
            detail = f"closing the window failed: {type(exc).__name__}: {exc}"[:500]
            events = [state.impression] if state.HasField("impression") else []
            return None, Outputs(dead=[("processing_error", detail, ev) for ev in [*events, *state.feedback]])

    def _close(self, state: learning_pb2.AttributionState) -> tuple[learning_pb2.AttributionState | None, Outputs]:
        out = Outputs()
        if state.closed:
            return None, out  # retention over: forget
        if not state.HasField("impression"):
            for fb in state.feedback:
                out.dead.append(("unknown_request", "no impression for this request id within the "
                                 "attribution window", fb))
            return None, out
        shown = _Shown(state.impression)
        labelled = self._labels(state)
        emitted = set(state.emitted)
        for position, cid in enumerate(shown.ids, start=1):
            if cid in labelled or cid in emitted:
                continue
            emitted.add(cid)
            state.emitted.append(cid)
            if state.feedback_mode != FAKE:  # a fake negative went out with the impression
                out.examples.append(self._example(shown, position, 0.0, learning_pb2.LABEL_SOURCE_NO_FEEDBACK,
                                                  state.deadline_ms))
            out.errors.append(self._error(shown, position, 0.0, state.deadline_ms))
        out.pairs.extend(self._pairs(shown, labelled, state.deadline_ms))
        for fb in state.feedback:  # late by their own clock, arrived before closing
            if fb.client_time_ms > state.deadline_ms:
                out.late += 1
                out.examples.extend(self._correction(state, shown, fb))
        clicks = np.array([1.0 if labelled.get(cid, (None,))[0] in ("click", "accept") else 0.0
                           for cid in shown.ids])
        self.positions.update(np.arange(1, len(shown.ids) + 1), shown.ids, clicks)
        state.closed = True
        state.expires_ms = state.deadline_ms + self.config.window_ms
        return state, out

    # -- feedback -----------------------------------------------------------------------
    def _feedback(self, state: learning_pb2.AttributionState, event: events_pb2.Event) -> Outputs:
        out = Outputs()
        kind = event.WhichOneof("body")
        body = getattr(event, kind)
        shown = _Shown(state.impression)
        position = shown.position.get(body.candidate_id)
        if position is None:
            out.dead.append(("unknown_candidate", f"{body.candidate_id[:64]!r} was not shown in this request",
                             event))
            state.handled.append(event.event_id)
            return out
        if state.closed:  # arrived after the window closed: late
            out.late += 1
            state.handled.append(event.event_id)
            out.examples.extend(self._correction(state, shown, event))
            return out
        if event.client_time_ms > state.deadline_ms:
            # Late by its own clock; the window has not closed yet (feedback for
            # other candidates may still come in order): settled at close.
            state.feedback.append(event)
            return out
        labels = self._labels(state)
        state.feedback.append(event)
        if body.candidate_id in labels:
            out.conflicts += 1  # a second label for one candidate: the first wins
            return out
        out.attributed += 1
        label = 0.0 if kind == "reject" else 1.0
        if label:
            self.exposure.clicked(event.tenant, body.candidate_id)
        state.emitted.append(body.candidate_id)
        if state.feedback_mode == FAKE:  # a positive duplicate; a reject's negative is out already
            if label:
                state.emitted.append("positive:" + body.candidate_id)
                out.examples.append(self._example(shown, position, label, SOURCE[kind], event.client_time_ms,
                                                  fake=True))
        else:
            out.examples.append(self._example(shown, position, label, SOURCE[kind], event.client_time_ms))
        out.errors.append(self._error(shown, position, label, event.client_time_ms))
        return out

    @staticmethod
    def _seen(state: learning_pb2.AttributionState, event_id: str) -> bool:
        if state.HasField("impression") and state.impression.event_id == event_id:
            return True
        return any(fb.event_id == event_id for fb in state.feedback) or event_id in state.handled

    @staticmethod
    def _labels(state: learning_pb2.AttributionState) -> dict[str, tuple[str, events_pb2.Event]]:
        """candidate id -> (kind, event) of its first in-window label."""
        labels: dict[str, tuple[str, events_pb2.Event]] = {}
        for fb in state.feedback:
            if fb.client_time_ms <= state.deadline_ms:
                kind = fb.WhichOneof("body")
                labels.setdefault(getattr(fb, kind).candidate_id, (kind, fb))
        return labels

    def _correction(self, state: learning_pb2.AttributionState, shown: _Shown, event: events_pb2.Event
                    ) -> list[learning_pb2.Example]:
        """A late positive on a candidate emitted as a no-feedback negative: once per candidate
        (fnw mode: the positive duplicate of its fake negative, which stays)."""
        kind = event.WhichOneof("body")
        cid = getattr(event, kind).candidate_id
        fake = state.feedback_mode == FAKE
        marker = ("positive:" if fake else "correction:") + cid
        if kind == "reject" or cid in self._labels(state) or marker in state.emitted:
            return []
        state.emitted.append(marker)
        return [self._example(shown, shown.position[cid], 1.0, SOURCE[kind], event.client_time_ms,
                              correction=not fake, fake=fake)]

    # -- records ------------------------------------------------------------------------
    def _example(self, shown: _Shown, position: int, label: float, source: int, at_ms: int,
                 correction: bool = False, fake: bool = False) -> learning_pb2.Example:
        imp = shown.event
        cid = shown.ids[position - 1]
        pos_p = position_propensity(self.positions.propensities(), position)
        logged = shown.logged[position - 1] if len(shown.logged) == len(shown.ids) else 0.0
        exposure = logged if logged > 0 else self.exposure.propensity(imp.tenant, cid)
        propensity = pos_p * exposure
        click_weight = clipped_weight(propensity, self.config.clip) if self.config.weights else 1.0
        weight = click_weight if label > 0 else 1.0
        return learning_pb2.Example(
            example_id=stable_id(imp.tenant, imp.request_id, cid, ("fake_negative", "positive")[label > 0] if fake
                                 else "correction" if correction else "label"),
            tenant=imp.tenant, user_id=imp.user_id, session_id=imp.session_id, request_id=imp.request_id,
            candidate_id=cid, label=label, source=source, weight=weight, propensity=propensity,
            position_propensity=pos_p, exposure_propensity=exposure, logged_propensity=logged,
            position=position, served_score=shown.scores[position - 1] if shown.scores else 0.0,
            model=imp.impression.model, version=imp.impression.version,
            impression_time_ms=imp.client_time_ms, label_time_ms=at_ms, user=imp.impression.user,
            context=imp.impression.context, candidate=shown.features(position), correction=correction,
            feedback_mode=FAKE if fake else learning_pb2.FEEDBACK_MODE_WINDOW, click_weight=click_weight if fake else 0.0)

    @staticmethod
    def _error(shown: _Shown, position: int, label: float, at_ms: int) -> learning_pb2.PredictionError:
        imp = shown.event
        cid = shown.ids[position - 1]
        return learning_pb2.PredictionError(
            error_id=stable_id(imp.tenant, imp.request_id, cid, "error"), tenant=imp.tenant,
            user_id=imp.user_id, request_id=imp.request_id, candidate_id=cid, label=label,
            served_score=shown.base[position - 1] if shown.base else 0.0, key=shown.key(position),
            model=imp.impression.model, version=imp.impression.version, time_ms=at_ms)

    def _pairs(self, shown: _Shown, labels: dict[str, tuple[str, events_pb2.Event]], at_ms: int
               ) -> list[learning_pb2.PreferencePair]:
        imp = shown.event
        out = []

        def pair(better: str, worse: str, strength: float, kind: str) -> learning_pb2.PreferencePair:
            pb, pw = shown.position[better], shown.position[worse]
            return learning_pb2.PreferencePair(
                pair_id=stable_id(imp.tenant, imp.request_id, better, worse), tenant=imp.tenant,
                user_id=imp.user_id, request_id=imp.request_id, preferred_id=better, other_id=worse,
                preferred_position=pb, other_position=pw, strength=strength, kind=kind,
                model=imp.impression.model, version=imp.impression.version, time_ms=at_ms,
                user=imp.impression.user, context=imp.impression.context, preferred=shown.features(pb),
                other=shown.features(pw))

        clicked = [(cid, ev) for cid, (kind, ev) in labels.items() if kind == "click"]
        for cid, ev in clicked:
            p = shown.position[cid]
            dwell = ev.click.dwell_ms
            satisfaction = min(1.0, 0.5 + 0.5 * dwell / self.config.full_dwell_ms) if dwell else \
                self.config.unknown_dwell
            for q in range(1, p):
                other = shown.ids[q - 1]
                if other in labels and labels[other][0] != "reject":
                    continue
                gap = p - q
                out.append(pair(cid, other, satisfaction * (1.0 - 0.5 ** gap), "click_over_skip_above"))
        accepted = [cid for cid, (kind, _) in labels.items() if kind == "accept"]
        rejected = [cid for cid, (kind, _) in labels.items() if kind == "reject"]
        for a in accepted:
            for r in rejected:
                out.append(pair(a, r, 1.0, "accept_over_reject"))
        return out
