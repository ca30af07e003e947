"""Carrier-pooled rules: a misheard request learned once, served in every carrier phrase.

Whole-utterance rules need their support per utterance: "play wizard of oz"
and "watch wizard of oz" (the same habit, another carrier) are learned apart,
each from its own three users, and a title said partially ("play raiders
of") has no replaced span for a span rule (the rephrase adds words). This
module pools the evidence of the utterances that differ only by their
carrier phrase.

Carriers (`learn_carriers`): the successful surface forms of one
interpretation state ("play raiders of the lost ark", "watch raiders of the
lost ark") share a word suffix, the request's words; what precedes it in each
is a carrier. A carrier counts when it precedes the request's words of at
least ``min_states`` states; it remembers the intents it served.

Pooled rules (`select_carrier_rules`): every heard utterance not understood
splits into its longest known carrier and its tail ("watch" + "wizard of
oz"). The utterances of one tail pool their chain evidence: the distinct
users of their rephrase edges per target state, and the outcomes of their
turns heard as is. The tail's target is the state most of its users reached
(``min_share`` of them, ``min_support`` users or more, success
``min_target_success`` and ``min_margin`` above the tail's own); each
utterance of the tail that fails by itself then gets a whole-utterance rule to
its own carrier followed by the target's request words ("watch wizard of oz"
-> "watch the wizard of oz"), when its carrier has served the target's intent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from loopwise.spans import UTTERANCE

from .chain import Chain
from .rules import Blocklist, Rule, rule_id


@dataclass(frozen=True)
class CarrierConfig:
    enabled: bool = True
    min_states: int = 3  # interpretation states a carrier must precede
    max_words: int = 5  # longest carrier
    min_share: float = 0.6  # of the tail's rephrase users that reach its target
    min_source_defect: float = 0.5  # of an utterance's own turns, for it to get a rule
    expand: bool = True  # rules also for the tail in the carriers not heard with it yet
    # The pooled rules are re-derived at most this often (wall ms; a pass over every heard
    # utterance), the carriers re-learnt when the chain's states changed by this fraction.
    every_ms: int = 10_000
    relearn: float = 0.1


def _understood(key: str | None) -> bool:
    """Whether a chain state is an interpretation (a normalised utterance never has ":")."""
    return key is not None and ":" in key


def _common_suffix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def learn_carriers(chain: Chain, config: CarrierConfig = CarrierConfig()) -> dict[str, set[str]]:
    """{carrier: intents it served} from the successful forms of each interpretation state."""
    seen: dict[str, set[int]] = {}
    intents: dict[str, set[str]] = {}
    for key, idx in chain.index.items():
        forms = [f.split() for f, (_, ok) in chain.forms[idx].items() if ok > 0]
        if len(forms) < 2 or not _understood(key):
            continue
        intent = key.split(":", 1)[0]
        for i in range(len(forms)):
            for j in range(i + 1, len(forms)):
                n = _common_suffix(forms[i], forms[j])
                if n == 0:
                    continue
                for f in (forms[i], forms[j]):
                    if 0 < len(f) - n <= config.max_words:
                        carrier = " ".join(f[:len(f) - n])
                        seen.setdefault(carrier, set()).add(idx)
                        intents.setdefault(carrier, set()).add(intent)
    return {c: intents[c] for c, states in seen.items() if len(states) >= config.min_states}


def split(text: str, carriers: Mapping[str, object], max_words: int = 5) -> tuple[str, str]:
    """(carrier, tail) by the longest known carrier that leaves a tail; ("", text) without one."""
    words = text.split()
    for n in range(min(max_words, len(words) - 1), 0, -1):
        head = " ".join(words[:n])
        if head in carriers:
            return head, " ".join(words[n:])
    return "", text


def select_carrier_rules(chain: Chain, heard: Mapping[str, Sequence[int]], tenant: str, *,
                         min_support: float, min_target_success: float, min_margin: float,
                         min_source_turns: int, config: CarrierConfig = CarrierConfig(),
                         blocklist: Blocklist | None = None, skip: Iterable[str] = (),
                         carriers: Mapping[str, set[str]] | None = None) -> list[Rule]:
    """Whole-utterance rules from the evidence pooled per tail (module docstring); ``skip``: table
    keys that have a rule already; ``carriers``: `learn_carriers` (learnt now when None). Call
    `Chain.solve` first."""
    blocklist = blocklist or Blocklist()
    carriers = learn_carriers(chain, config) if carriers is None else carriers
    if not carriers:
        return []
    groups: dict[str, list[tuple[str, str]]] = {}  # tail -> [(carrier, text)]
    for text in heard:
        if text in chain.index:  # its turns were not understood: the text is their chain state
            carrier, tail = split(text, carriers, config.max_words)
            if carrier:
                groups.setdefault(tail, []).append((carrier, text))
    indptr, dst, _, users = chain.successors()

    def _edges(s: int) -> list[tuple[int, float]]:
        return list(zip(dst[indptr[s]:indptr[s + 1]].tolist(), users[indptr[s]:indptr[s + 1]].tolist(),
                        strict=True))
    done = set(skip)
    out: list[Rule] = []
    for tail, members in groups.items():
        reach: dict[int, float] = {}
        turns = successes = 0
        for _, text in members:
            s = chain.index[text]
            for d, u in _edges(s):
                if _understood(chain.keys[d]):
                    reach[d] = reach.get(d, 0.0) + u
                elif d != s:  # through another utterance not understood (a second try)
                    for d2, u2 in _edges(d):
                        if _understood(chain.keys[d2]):
                            reach[d2] = reach.get(d2, 0.0) + min(u, u2)
            turns += heard[text][0]
            successes += heard[text][1]
        if not reach or turns < min_source_turns:
            continue
        t = max(reach, key=lambda d: (reach[d], chain.p_success[d]))
        support, total = reach[t], sum(reach.values())
        target = chain.keys[t]
        tail_success = successes / turns
        margin = float(chain.p_success[t]) - tail_success
        if support < min_support or support / total < config.min_share \
                or chain.p_success[t] < min_target_success or margin < min_margin:
            continue
        rewrite_carrier, rewrite_tail = split(chain.best_form(target), carriers, config.max_words)
        intent = target.split(":", 1)[0]
        if not rewrite_carrier or rewrite_tail == tail:
            continue
        said = dict.fromkeys(text for _, text in members)
        if config.expand:
            said.update((f"{c} {tail}", None) for c, served in carriers.items() if intent in served)
        for text in said:
            carrier = split(text, carriers, config.max_words)[0]
            n, ok = heard.get(text, (0, 0))
            rewrite = f"{carrier} {rewrite_tail}"
            if text in done or not carrier or intent not in carriers[carrier] \
                    or (n and 1 - ok / n < config.min_source_defect) \
                    or not blocklist.allows(text, target, source_state=text, rewrite=rewrite):
                continue
            out.append(Rule(tenant=tenant, rule_id=rule_id(tenant, text, target), source=text, source_state=text,
                            target=target, rewrite=rewrite, support=support, confidence=margin,
                            source_success=tail_success, target_success=float(chain.p_success[t]),
                            source_absorption=float(chain.p_success[chain.index[text]]) if text in chain.index
                            else 0.0, source_turns=turns,
                            kind=UTTERANCE))
    return out
