"""A population of users talking to a movie-playing voice assistant.

The catalog is MovieLens-100K (titles and rating counts as popularity, via
`loopwise.tools.datasets`). The assistant's NLU is strict: after a carrier phrase
("play", "put on", "watch", ...) it needs the title exactly as spoken ("the
wizard of oz" for "Wizard of Oz, The"; parenthesised parts dropped), and
gives ``play_movie:<item id>``, else the turn is UNHANDLED.

Speech recognition (`Asr`) makes *recurring* errors: each title is
confusable or not (decided by a hash, with probability ``p_confusable``), and
a confusable title has one fixed misrecognition built from a homophone /
near-homophone table, spelling-by-sound edits ("ph"->"f", "ight"->"ite", ...),
a split or merged word; it happens with probability ``p_error`` per
utterance (less when the user speaks carefully). Users also make their own
recurring errors: a partial title, or no leading "the".

After a failed turn a user repeats (same words), rephrases (carefully, the
full title, "play the movie ..."), or gives up. Each turn, before its NLU, the
assistant asks ``rewrite`` (the stack's `Rewrite` RPC, or any function) for a
rewrite of what it heard.

`simulate` is pure and deterministic for a seed: it returns every turn with
its ground truth (intended movie, whether it succeeded, and whether it would
have without the rewrite). `run` drives a running stack with it.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from loopwise.text import normalize

log = logging.getLogger(__name__)

OK, UNHANDLED = 1, 2  # loopwise.v1.events_pb2.ResponseStatus
DOMAIN, INTENT = "video", "play_movie"
CARRIERS = ("play", "play", "play", "put on", "watch", "i want to watch")
NLU_CARRIERS = ("i want to watch", "play the movie", "play", "put on", "watch")

HOMOPHONES = {
    "two": "to", "to": "two", "four": "for", "for": "four", "night": "knight", "knight": "night",
    "eight": "ate", "sea": "see", "son": "sun", "sun": "son", "one": "won", "won": "one", "blue": "blew",
    "red": "read", "road": "rode", "whole": "hole", "hour": "our", "bear": "bare", "tail": "tale",
    "male": "mail", "right": "write", "write": "right", "hear": "here", "here": "hear", "peace": "piece",
    "rain": "reign", "new": "knew", "knows": "nose", "would": "wood", "wood": "would", "dear": "deer",
    "die": "dye", "flower": "flour", "heal": "heel", "high": "hi", "hole": "whole", "in": "inn",
    "made": "maid", "meet": "meat", "pair": "pear", "plane": "plain", "rose": "rows", "sail": "sale",
    "scene": "seen", "so": "sew", "some": "sum", "steal": "steel", "their": "there", "way": "weigh",
    "week": "weak", "wild": "wiled", "wind": "wined", "witch": "which", "lost": "loss", "days": "daze",
    "kids": "kid's", "men": "man", "women": "woman", "seven": "heaven", "nine": "mine", "ten": "then",
    "bride": "bribe", "ghost": "goats", "beauty": "booty", "city": "sitty", "story": "storey",
    "wars": "was", "man": "men", "girl": "girls", "heat": "heet", "mars": "mass", "fargo": "far go",
    "dead": "dad", "love": "of", "little": "littel", "house": "how's", "secret": "secrets",
}
EDITS = (("ph", "f"), ("ight", "ite"), ("tion", "shun"), ("ck", "k"), ("qu", "kw"), ("ee", "ea"),
         ("ea", "ee"), ("ou", "ow"), ("er", "a"), ("x", "ks"), ("ce", "se"), ("y", "ie"), ("oo", "u"))
_DOUBLE = re.compile(r"([bcdfgklmnprstz])\1")
_PAREN = re.compile(r"\([^)]*\)")
_ARTICLE_SUFFIX = re.compile(r"^(.*), (the|a|an|la|le|il|el|les|das|der|die)$", re.IGNORECASE)


def spoken_title(title: str) -> str:
    """How a title is said: "Wizard of Oz, The (1939)" -> "the wizard of oz"."""
    t = _PAREN.sub(" ", title).strip()
    m = _ARTICLE_SUFFIX.match(t)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    return normalize(t)


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    h = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


# -- catalog and NLU ---------------------------------------------------------------------


@dataclass(frozen=True)
class Movie:
    id: str
    title: str
    spoken: str
    popularity: float = 1.0


@dataclass
class Catalog:
    movies: list[Movie]
    by_spoken: dict[str, Movie] = field(default_factory=dict)
    cum_weights: list[float] = field(default_factory=list)
    # spoken title -> the most popular other title starting with the same two words (sequels, series)
    neighbours: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in self.movies:
            self.by_spoken.setdefault(m.spoken, m)
            self.by_spoken.setdefault(normalize(m.title), m)
        groups: dict[tuple[str, ...], list[Movie]] = {}
        for m in self.movies:
            words = tuple(m.spoken.split()[:2])
            if len(words) == 2:
                groups.setdefault(words, []).append(m)
        for group in groups.values():
            for m in group:
                others = [o for o in group if o.spoken != m.spoken]
                if others:
                    self.neighbours[m.spoken] = max(others, key=lambda o: (o.popularity, o.id)).spoken
        total = 0.0
        self.cum_weights = []
        for m in self.movies:
            total += m.popularity
            self.cum_weights.append(total)

    @classmethod
    def from_titles(cls, items: Sequence[tuple[str, str, float]]) -> Catalog:
        """From (item id, title, popularity) triples; titles that say nothing are left out."""
        return cls([Movie(i, t, spoken_title(t), p) for i, t, p in items if spoken_title(t)])

    def draw(self, rng: random.Random) -> Movie:
        return rng.choices(self.movies, cum_weights=self.cum_weights)[0]


@lru_cache(maxsize=2)
def movielens_catalog(cache_dir: str | None = None) -> Catalog:
    """MovieLens-100K titles, weighted by their rating counts (fetched on first use)."""
    from loopwise.tools import datasets

    data = datasets.movielens_100k(Path(cache_dir) if cache_dir else None)
    counts = dict(zip(data.item_ids, data.item_counts.tolist(), strict=True))
    return Catalog.from_titles([(i, data.items[i].title, float(counts.get(i, 0)) + 1.0) for i in data.item_ids])


@dataclass(frozen=True)
class Understanding:
    status: int
    item: str = ""

    @property
    def interpretation(self) -> str:
        return f"{INTENT}:{self.item}" if self.item else ""


class Nlu:
    """Carrier phrase + exact spoken title -> ``play_movie:<id>``; anything else UNHANDLED."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def parse(self, utterance: str) -> Understanding:
        text = normalize(utterance)
        for carrier in NLU_CARRIERS:
            if text.startswith(carrier + " "):
                movie = self.catalog.by_spoken.get(text[len(carrier) + 1:])
                if movie is not None:
                    return Understanding(OK, movie.id)
        return Understanding(UNHANDLED)


# -- speech recognition ------------------------------------------------------------------


def _edit_word(word: str, salt: float) -> str:
    if word in HOMOPHONES:
        return HOMOPHONES[word]
    options = [word.replace(a, b, 1) for a, b in EDITS if a in word]
    if _DOUBLE.search(word):
        options.append(_DOUBLE.sub(r"\1", word, count=1))
    if len(word) >= 7:
        cut = len(word) // 2
        options.append(f"{word[:cut]} {word[cut:]}")
    if len(word) > 4 and word.endswith("s"):
        options.append(word[:-1])
    options = [o for o in options if o != word]
    return options[int(salt * len(options))] if options else word


@dataclass(frozen=True)
class Asr:
    """The recognition channel; deterministic for ``seed`` (which titles are confusable, and how)."""

    seed: int = 0
    p_confusable: float = 0.3
    p_error: float = 0.6
    careful_factor: float = 0.35  # careful speech multiplies p_error by this
    p_noise: float = 0.02  # a one-off error: a word dropped
    p_collide: float = 0.5  # a confusable title with a neighbour is heard as that neighbour

    def confusion(self, spoken: str, neighbour: str | None = None) -> str | None:
        """The recurring misrecognition of ``spoken`` (a title), or None if it is heard right;
        ``neighbour`` is a similar title the recogniser may prefer (`Catalog.neighbours`)."""
        if _unit(self.seed, "confusable", spoken) >= self.p_confusable:
            return None
        if neighbour and _unit(self.seed, "collide", spoken) < self.p_collide:
            return neighbour
        words = spoken.split()
        pick = [i for i, w in enumerate(words) if len(w) > 2] or list(range(len(words)))
        i = pick[int(_unit(self.seed, "word", spoken) * len(pick))]
        salt = _unit(self.seed, "edit", spoken)
        if len(words) > 1 and salt < 0.12 and i + 1 < len(words):
            new = words[:i] + [words[i] + words[i + 1]] + words[i + 2:]  # merged words
        else:
            new = words[:i] + [_edit_word(words[i], salt)] + words[i + 1:]
        out = " ".join(new)
        return out if out != spoken else None

    def hear(self, carrier: str, title_words: str, rng: random.Random, *, careful: bool = False,
             neighbour: str | None = None) -> str:
        title = title_words
        wrong = self.confusion(title_words, neighbour)
        p = self.p_error * (self.careful_factor if careful else 1.0)
        if wrong is not None and rng.random() < p:
            title = wrong
        elif rng.random() < self.p_noise and " " in title:
            parts = title.split()
            del parts[rng.randrange(len(parts))]
            title = " ".join(parts)
        return f"{carrier} {title}"


# -- users ---------------------------------------------------------------------------------


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

    @property
    def interpretation(self) -> str:
        return f"{INTENT}:{self.item}" if self.item else ""

    def to_event(self, factory: Any) -> Any:
        """A Turn event from a `loopwise.client.build.EventFactory`."""
        from loopwise.v1 import events_pb2

        interp = (events_pb2.Interpretation(domain=DOMAIN, intent=INTENT, slots={"item": self.item})
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


def _phrase(movie: Movie, rng: random.Random, b: Behaviour, seed: int, user: str) -> str:
    words = movie.spoken.split()
    # A user's own habit with this title recurs: decided by a hash, not per utterance.
    if len(words) >= 3 and _unit(seed, "partial", user, movie.id) < b.p_partial:
        return " ".join(words[:2 if words[0] in ("the", "a") else 1 + (len(words) > 4)])
    if words[0] == "the" and len(words) > 1 and _unit(seed, "article", user, movie.id) < b.p_no_article:
        return " ".join(words[1:])
    return movie.spoken


def _user(world: World, nlu: Nlu, seed: int, index: int, start_ms: int, end_ms: int, out: list[SimTurn]
          ) -> Iterator[tuple[int, str, str, str]]:
    """One user: yields (time_ms, heard, user_id, session_id), is sent the rewrite (or None)."""
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


def simulate(world: World, *, users: int, minutes: float, seed: int, rewrite: Rewriter = no_rewrite,
             start_ms: int = 1_700_000_000_000, sink: Callable[[SimTurn], None] | None = None) -> list[SimTurn]:
    """All turns of ``users`` users over ``minutes`` (of simulated time, before ``time_scale``),
    in time order; ``rewrite`` is consulted before every NLU call, ``sink`` sees each turn."""
    out: list[SimTurn] = []
    nlu = world.nlu
    end_ms = start_ms + int(minutes * 60_000 * world.time_scale)
    heap: list[tuple[int, int, Iterator, tuple]] = []
    for i in range(users):
        gen = _user(world, nlu, seed, i, start_ms, end_ms, out)
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


# -- driving a running stack -----------------------------------------------------------------------


def run(target: Any, *, users: int = 100, minutes: float = 10.0, seed: int = 7, tenant: str | None = None,
        time_scale: float = 1.0, pace: bool = True, world: World | None = None, flush_s: float = 1.0
        ) -> Summary:
    """Drive a running stack: ``target`` is a `loopwise.client.Client` (or a stand-in with
    ``rewrite``, ``send``, ``flush`` and ``events``) or the root folder of a running stack.

    Every turn calls ``Rewrite`` before the NLU and is reported (with the rule id
    when a rewrite applied) through FeedbackService. With ``pace`` the turns
    are sent when their (scaled) time comes, so ``minutes * time_scale`` of
    wall time; without, as fast as possible with time stamps ending now.
    """
    world = world or World(movielens_catalog(), time_scale=time_scale)
    own = None
    if isinstance(target, str | Path):
        from loopwise.client import Client
        from loopwise.tools import stack

        info = stack.StackInfo.read(Path(target).resolve())
        if info is None:
            raise RuntimeError(f"no stack running in {target}")
        own = target = Client(info.collector, info.inference,
                              tenant=tenant or (info.tenants[0] if info.tenants else "default"))
    client = target  # anything with rewrite(), send(), flush() and an `events` EventFactory
    span_ms = int(minutes * 60_000 * world.time_scale)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms if pace else now_ms - span_ms - 1000
    wall0 = time.monotonic()

    def rewrite(utterance: str, ctx: RewriteContext) -> tuple[str, str] | None:
        if pace:
            delay = (ctx.time_ms - start_ms) / 1000 - (time.monotonic() - wall0)
            if delay > 0:
                time.sleep(delay)
        resp = client.rewrite(utterance, user_id=ctx.user_id, session_id=ctx.session_id)
        return (resp.utterance, resp.rule_id) if resp.rewritten else None

    last_flush = [time.monotonic()]

    def sink(turn: SimTurn) -> None:
        client.send(turn.to_event(client.events))
        if pace and time.monotonic() - last_flush[0] >= flush_s:  # live traffic: at most flush_s late
            client.flush()
            last_flush[0] = time.monotonic()

    try:
        turns = simulate(world, users=users, minutes=minutes, seed=seed, rewrite=rewrite,
                         start_ms=start_ms, sink=sink)
        client.flush()
    finally:
        if own is not None:
            own.close()
    return summarize(turns)


def main_simulate(args: Any) -> int:
    """For ``loopwise simulate assistant``: ``args`` has root, users, minutes, seed, and optionally
    tenant, time_scale, pace."""
    try:
        s = run(Path(args.root), users=args.users, minutes=args.minutes, seed=args.seed,
                tenant=getattr(args, "tenant", None), time_scale=getattr(args, "time_scale", 1.0),
                pace=getattr(args, "pace", True))
    except Exception as exc:  # noqa: BLE001 - a CLI reports, never tracebacks
        log.debug("simulate failed", exc_info=True)
        print(f"loopwise simulate assistant: {exc}", file=sys.stderr)
        return 1
    print(f"turns {s.turns}, defect rate {s.defect_rate:.3f}, failed requests {s.request_failure_rate:.3f}, "
          f"rewritten {s.rewritten}, wins {s.wins}, losses {s.losses}")
    return 0
