"""A second population: users asking a clock-and-weather assistant about places.

Its confusions are phonetic, not spellings: a confusable place is heard as a
sound-alike word or phrase (``SOUND_ALIKES``: "seoul" -> "soul", "nice" ->
"niece", "manila" -> "vanilla"), recurring for everyone who says it (with
probability ``p_error``, less when speaking carefully). Its users vary their
carrier phrases: each request picks one of the intent's ``CARRIERS``, and a
rephrase after a failure picks another one of the same intent ("time in
soul" -> "what time is it in seoul"). The NLU wants a carrier of an intent
and a known place, and reports the place as the slot ``city``.

`PlacesWorld` plugs into `users.simulate` (and so `assistant.run`) like the
movie `World`; its turns have the same ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from loopwise.text import normalize
from loopwise.tools.simulate.asr import hash_unit
from loopwise.tools.simulate.catalog import OK, UNHANDLED, Understanding
from loopwise.tools.simulate.users import Behaviour, SimTurn

DOMAIN = "assistant"
CARRIERS = {
    "get_time": ("time in", "what time is it in", "what's the time in", "current time in"),
    "get_weather": ("weather in", "what's the weather in", "forecast for", "how's the weather in"),
}
# Places by popularity, each with the sound-alike a recogniser hears instead.
SOUND_ALIKES = {
    "london": "lunden", "paris": "pairs", "new york": "knew york", "tokyo": "toe kyo", "seoul": "soul",
    "sydney": "sidney", "rome": "roam", "berlin": "burling", "madrid": "mad rid", "dubai": "do buy",
    "chicago": "she car go", "boston": "bossed in", "nice": "niece", "manila": "vanilla", "delhi": "deli",
    "mumbai": "mom bye", "beijing": "bay jing", "shanghai": "shang high", "dallas": "dollars",
    "miami": "my ami", "prague": "plague", "milan": "my land", "naples": "maples", "vienna": "via now",
    "warsaw": "war saw", "lyon": "lion", "kyoto": "coyote", "cologne": "colon", "bern": "burn",
    "hungary": "hungry", "greece": "grease", "chile": "chilly", "wales": "whales", "lagos": "legos",
    "quito": "keto", "sofia": "sophia", "venice": "menace", "dublin": "doubling", "cardiff": "card if",
    "belfast": "bell fast", "oslo": "oh slow", "perth": "purse", "denver": "then for", "seattle": "see at all",
    "phoenix": "fee nicks", "turin": "touring", "zurich": "zoo rick", "doha": "dough ha",
    "hanoi": "hand oy", "jakarta": "jack carter", "tampa": "tamper", "buffalo": "buff a low",
    "orlando": "or land oh", "memphis": "mem fist", "geneva": "jenever", "cairo": "kyro",
}
PLACES = tuple(SOUND_ALIKES)


class PlacesNlu:
    """An intent's carrier phrase + a known place -> ``<intent>:<place>`` (slot ``city``)."""

    def __init__(self) -> None:
        self.carriers = sorted(((c, i) for i, cs in CARRIERS.items() for c in cs), key=lambda ci: -len(ci[0]))
        self.places = set(PLACES)

    def parse(self, utterance: str) -> Understanding:
        text = normalize(utterance)
        for carrier, intent in self.carriers:
            if text.startswith(carrier + " ") and text[len(carrier) + 1:] in self.places:
                place = text[len(carrier) + 1:]
                return Understanding(OK, f"{intent}:{place}", DOMAIN, intent, (("city", place),))
        return Understanding(UNHANDLED)


@dataclass(frozen=True)
class PhoneticAsr:
    seed: int = 0
    p_confusable: float = 0.5
    p_error: float = 0.6
    careful_factor: float = 0.35
    p_noise: float = 0.02  # a one-off error: the first word of the carrier dropped

    def confusion(self, place: str) -> str | None:
        """The recurring sound-alike of ``place``, or None if it is heard right."""
        if hash_unit(self.seed, "confusable", place) >= self.p_confusable:
            return None
        return SOUND_ALIKES.get(place)

    def hear(self, carrier: str, place: str, rng: random.Random, *, careful: bool = False) -> str:
        wrong = self.confusion(place)
        if wrong is not None and rng.random() < self.p_error * (self.careful_factor if careful else 1.0):
            place = wrong
        elif rng.random() < self.p_noise and " " in carrier:
            carrier = carrier.split(" ", 1)[1]
        return f"{carrier} {place}"


@dataclass(frozen=True)
class PlacesWorld:
    asr: PhoneticAsr = PhoneticAsr()
    behaviour: Behaviour = Behaviour()
    time_scale: float = 1.0
    zipf: float = 0.9  # place popularity ~ 1 / rank**zipf

    @property
    def nlu(self) -> PlacesNlu:
        return PlacesNlu()

    def user(self, nlu: PlacesNlu, seed: int, index: int, start_ms: int, end_ms: int, out: list[SimTurn],
             oracle: bool = False) -> Iterator[tuple[int, str, str, str]]:
        """One user, as `users._user` for movies (``oracle``: every sound-alike rewritten right)."""
        rng = random.Random(f"{seed}:places:{index}")
        b, asr, scale = self.behaviour, self.asr, self.time_scale
        weights = [1 / (r + 1) ** self.zipf for r in range(len(PLACES))]
        user = f"sim-{seed}-p{index}"
        t = start_ms + int(rng.uniform(0, end_ms - start_ms))
        n_session = 0
        while t < end_ms:
            session = f"{user}-s{n_session}"
            n_session += 1
            another = True
            while another and t < end_ms:
                place = rng.choices(PLACES, weights)[0]
                intent = rng.choice(sorted(CARRIERS))
                carrier, careful, success = rng.choice(CARRIERS[intent]), False, False
                for attempt in range(b.max_attempts):
                    if t >= end_ms:
                        break
                    heard = asr.hear(carrier, place, rng, careful=careful)
                    rewrite = yield t, heard, user, session
                    right_words = f"{carrier} {place}"
                    if oracle and heard.endswith(f" {asr.confusion(place)}"):
                        rewrite = (right_words, "oracle")
                    got = nlu.parse(rewrite[0] if rewrite else heard)
                    plain = got if not rewrite else nlu.parse(heard)
                    latency = int(rng.uniform(300, 1200))
                    right = got.item == f"{intent}:{place}"
                    fickle = rng.random() < b.p_false_barge_in
                    barge = (not right and got.status == OK) or (right and fickle)
                    reject = got.status == OK and not right and rng.random() < b.p_reject_wrong
                    success = right and not barge
                    out.append(SimTurn(user, session, t, heard, rewrite[0] if rewrite else "",
                                       rewrite[1] if rewrite else "", got.status, got.item, barge, reject,
                                       latency, f"{intent}:{place}", right_words, attempt, success,
                                       plain.item == f"{intent}:{place}" and not fickle, DOMAIN,
                                       got.intent if got.item else intent, dict(got.slots) if got.item else None))
                    if success:
                        break
                    u = rng.random()
                    if u < b.p_repeat:
                        pass
                    elif u < b.p_repeat + b.p_rephrase:  # another carrier of the same intent, carefully
                        carrier = rng.choice([c for c in CARRIERS[intent] if c != carrier])
                        careful = True
                    else:
                        break
                    t += int(1000 * scale * rng.uniform(*b.retry_s)) + latency
                another = success and rng.random() < b.p_another
                t += int(1000 * scale * rng.uniform(*b.next_request_s))
            t += int(1000 * scale * rng.uniform(*b.session_gap_s))
