"""The simulated users, and `simulate`: every turn of a population, with its ground truth.

Users make their own recurring errors (a partial title, or no leading "the").
After a failed turn a user repeats (same words), rephrases (carefully, the
full title, "play the movie ..."), or gives up. Each turn, before its NLU, the
assistant asks ``rewrite`` (the stack's `Rewrite` RPC, or any function) for a
rewrite of what it heard. `simulate` is pure and deterministic for a seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from loopwise.text import normalize
from loopwise.tools.simulate.asr import Asr, hash_unit
from loopwise.tools.simulate.catalog import DOMAIN, INTENT, OK, Catalog, Movie, Nlu

CARRIERS = ("play", "play", "play", "put on", "watch", "i want to watch")


@dataclass(frozen=True)
class Behaviour:
    p_partial: float = 0.12  # says only the first words of a long title
    p_no_article: float = 0.2  # drops a leading "the"
    p_repeat: float = 0.35
    p_rephrase: float = 0.45  # else abandons
    max_attempts: int = 4
    p_another: float = 0.35  # another request in the same session after a success
    p_false_barge_in: float = 0.02  # interrupts a right answer anyway
    p_reject_wrong: float = 0.5  # says "no" to a wrong movie (and always barges in)
    session_gap_s: tuple[float, float] = (300.0, 1800.0)
    retry_s: tuple[float, float] = (2.5, 7.0)
    next_request_s: tuple[float, float] = (8.0, 30.0)


@dataclass(frozen=True)
class RewriteContext:
    user_id: str
    session_id: str
    time_ms: int


Rewriter = Callable[[str, RewriteContext], "tuple[str, str] | None"]


def no_rewrite(utterance: str, ctx: RewriteContext) -> None:
    return None


def table_rewriter(table: dict[str, tuple[str, str]]) -> Rewriter:
    """A rewriter from {normalised utterance: (rewrite, rule id)}, as the Rewrite RPC serves it."""

    def rewrite(utterance: str, ctx: RewriteContext) -> tuple[str, str] | None:
        return table.get(normalize(utterance))

    return rewrite


@dataclass
class SimTurn:
    user_id: str
    session_id: str
    time_ms: int
    utterance: str  # as heard
    rewritten: str
    rule_id: str
    status: int
    item: str  # the interpretation's item, "" when unhandled
    barge_in: bool
    explicit_reject: bool
    latency_ms: int
    target: str  # the movie the user wanted
    said: str  # what the user actually said (before recognition)
    attempt: int  # 0 first try, then retries
    success: bool  # ground truth: the wanted movie played and was kept
    success_without_rewrite: bool  # what the NLU would have done with the heard utterance
    domain: str = DOMAIN
    intent: str = INTENT
    slots: dict[str, str] | None = None  # the interpretation's slots; None: {"item": item}

    @property
    def interpretation(self) -> str:
        return f"{self.intent}:{self.item}" if self.item else ""

    @property
    def slot_values(self) -> dict[str, str]:
        """The interpretation's slots ({} when unhandled)."""
        if not self.item:
            return {}
        return dict(self.slots) if self.slots is not None else {"item": self.item}

    def to_event(self, factory: Any) -> Any:
        """A Turn event from a `loopwise.client.build.EventFactory`."""
        from loopwise.v1 import events_pb2

        interp = (events_pb2.Interpretation(domain=self.domain, intent=self.intent, slots=self.slot_values)
                  if self.item else None)
        return factory.turn(self.utterance, user_id=self.user_id, session_id=self.session_id,
                            status=self.status, barge_in=self.barge_in, latency_ms=self.latency_ms,
                            interpretation=interp, rewritten_utterance=self.rewritten,
                            rewrite_rule_id=self.rule_id, explicit_reject=self.explicit_reject,
                            at_ms=self.time_ms)


@dataclass(frozen=True)
class World:
    catalog: Catalog
    asr: Asr = Asr()
    behaviour: Behaviour = Behaviour()
    time_scale: float = 1.0  # multiplies every simulated gap (0.1: ten times denser time stamps)

    @property
    def nlu(self) -> Nlu:
        return Nlu(self.catalog)

    def user(self, nlu: Nlu, seed: int, index: int, start_ms: int, end_ms: int, out: list[SimTurn],
             oracle: bool = False) -> Iterator[tuple[int, str, str, str]]:
        """One simulated user (see `simulate`)."""
        return _user(self, nlu, seed, index, start_ms, end_ms, out, oracle)


def _phrase(movie: Movie, rng: random.Random, b: Behaviour, seed: int, user: str) -> str:
    words = movie.spoken.split()
    # A user's own habit with this title recurs: decided by a hash, not per utterance.
    if len(words) >= 3 and hash_unit(seed, "partial", user, movie.id) < b.p_partial:
        return " ".join(words[:2 if words[0] in ("the", "a") else 1 + (len(words) > 4)])
    if words[0] == "the" and len(words) > 1 and hash_unit(seed, "article", user, movie.id) < b.p_no_article:
        return " ".join(words[1:])
    return movie.spoken


def _user(world: World, nlu: Nlu, seed: int, index: int, start_ms: int, end_ms: int, out: list[SimTurn],
          oracle: bool = False) -> Iterator[tuple[int, str, str, str]]:
    """One user: yields (time_ms, heard, user_id, session_id), is sent the rewrite (or None).
    With ``oracle`` every recurring confusion (the recogniser's, or the user's own habit with a
    title) is rewritten to the right utterance instead: the ceiling of any rewrite table."""
    rng = random.Random(f"{seed}:user:{index}")
    b, asr, scale = world.behaviour, world.asr, world.time_scale
    user = f"sim-{seed}-{index}"
    t = start_ms + int(rng.uniform(0, end_ms - start_ms))
    n_session = 0
    while t < end_ms:
        session = f"{user}-s{n_session}"
        n_session += 1
        another = True
        while another and t < end_ms:
            movie = world.catalog.draw(rng)
            said_title = _phrase(movie, rng, b, seed, user)
            carrier = rng.choice(CARRIERS)
            careful = False
            success = False
            for attempt in range(b.max_attempts):
                if t >= end_ms:  # the simulated window is over: no turn at or after its end
                    break
                heard = asr.hear(carrier, said_title, rng, careful=careful,
                                 neighbour=world.catalog.neighbours.get(said_title))
                rewrite = yield t, heard, user, session
                if oracle:
                    right_words = f"{carrier} {movie.spoken}"
                    wrong = asr.confusion(said_title, world.catalog.neighbours.get(said_title))
                    recurring = said_title != movie.spoken or (wrong is not None and heard == f"{carrier} {wrong}")
                    if heard != right_words and recurring:
                        rewrite = (right_words, "oracle")
                text = rewrite[0] if rewrite else heard
                got = nlu.parse(text)
                plain = got if not rewrite else nlu.parse(heard)
                latency = int(rng.uniform(300, 1200))
                right = got.item == movie.id
                fickle = rng.random() < b.p_false_barge_in
                barge = (not right and got.status == OK) or (right and fickle)
                reject = got.status == OK and not right and rng.random() < b.p_reject_wrong
                success = right and not barge
                out.append(SimTurn(user, session, t, heard, rewrite[0] if rewrite else "",
                                   rewrite[1] if rewrite else "", got.status, got.item, barge, reject,
                                   latency, movie.id, f"{carrier} {said_title}", attempt, success,
                                   plain.item == movie.id and not fickle))
                if success:
                    break
                u = rng.random()
                if u < b.p_repeat:
                    pass
                elif u < b.p_repeat + b.p_rephrase:
                    said_title, carrier, careful = movie.spoken, rng.choice(("play", "play the movie")), True
                else:
                    break
                t += int(1000 * scale * rng.uniform(*b.retry_s)) + latency
            another = success and rng.random() < b.p_another
            t += int(1000 * scale * rng.uniform(*b.next_request_s))
        t += int(1000 * scale * rng.uniform(*b.session_gap_s))


def simulate(world: Any, *, users: int, minutes: float, seed: int, rewrite: Rewriter = no_rewrite,
             start_ms: int = 1_700_000_000_000, sink: Callable[[SimTurn], None] | None = None,
             oracle: bool = False) -> list[SimTurn]:
    """All turns of ``users`` users over ``minutes`` (of simulated time, before ``time_scale``),
    in time order; ``rewrite`` is consulted before every NLU call, ``sink`` sees each turn.
    ``world``: a `World` (movies) or a `places.PlacesWorld`; ``oracle``: see `_user`."""
    out: list[SimTurn] = []
    nlu = world.nlu
    end_ms = start_ms + int(minutes * 60_000 * world.time_scale)
    heap: list[tuple[int, int, Iterator, tuple]] = []
    for i in range(users):
        gen = world.user(nlu, seed, i, start_ms, end_ms, out, oracle)
        first = next(gen, None)
        if first is not None:
            heapq.heappush(heap, (first[0], i, gen, first))
    while heap:
        _, i, gen, (t, heard, user, session) = heapq.heappop(heap)
        result = rewrite(heard, RewriteContext(user, session, t))
        n = len(out)
        try:
            nxt = gen.send(result)
        except StopIteration:
            nxt = None
        if sink is not None:
            for turn in out[n:]:
                sink(turn)
        if nxt is not None:
            heapq.heappush(heap, (nxt[0], i, gen, nxt))
    return out


@dataclass(frozen=True)
class Summary:
    turns: int
    defects: int
    requests: int
    failed_requests: int
    rewritten: int
    wins: int  # rewritten turns that succeeded and would have failed without the rewrite
    losses: int  # rewritten turns that failed and would have succeeded without it

    @property
    def defect_rate(self) -> float:
        return self.defects / self.turns if self.turns else 0.0

    @property
    def request_failure_rate(self) -> float:
        return self.failed_requests / self.requests if self.requests else 0.0

    @property
    def win_loss(self) -> float:
        return self.wins / self.losses if self.losses else float("inf") if self.wins else 0.0


def summarize(turns: Sequence[SimTurn]) -> Summary:
    """Ground-truth figures: defect rate per turn, failed requests (the last try failed), win/loss."""
    requests = sum(1 for t in turns if t.attempt == 0)
    # a request ends at its last turn: the next turn of that user is a first attempt, or none
    last_of: dict[str, SimTurn] = {}
    failed = 0
    for t in turns:
        prev = last_of.get(t.user_id)
        if t.attempt == 0 and prev is not None and not prev.success:
            failed += 1
        last_of[t.user_id] = t
    failed += sum(1 for t in last_of.values() if not t.success)
    rew = [t for t in turns if t.rule_id]
    return Summary(turns=len(turns), defects=sum(1 for t in turns if not t.success), requests=requests,
                   failed_requests=failed, rewritten=len(rew),
                   wins=sum(1 for t in rew if t.success and not t.success_without_rewrite),
                   losses=sum(1 for t in rew if not t.success and t.success_without_rewrite))
