"""Per-model error memory configuration: defaults from the settings, overrides by model name.

``LOOPWISE_ERROR_MEMORY_MODELS`` overrides the defaults for named models:
``model:key=value,key=value;model2:...`` with keys ``mode`` (off | shadow |
on), ``k``, ``bits`` (L), ``lambda``, ``tau``, ``gamma``, ``prior``,
``half_life_s``, ``settle_s``, ``seed``, and the exact (user, item) table's
``pair_lambda`` (0: no table), ``pair_prior``, ``pair_bits``, ``pair_at_rank`` — e.g.
``ranker:mode=on,lambda=0.4,pair_lambda=1;cold:mode=off``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .compensate import Params

MODES = ("off", "shadow", "on")


@dataclass(frozen=True)
class MemoryConfig:
    mode: str = "shadow"
    k: int = 32
    bits: int = 12
    params: Params = Params()
    half_life_s: float = 0.0
    settle_s: float = 0.0
    seed: int = 0
    # the exact (user, item) table (pairs.py): its lambda (0: none) and prior; gamma is 1 (its own labels)
    pair: Params = Params(lam=1.0, gamma=1.0, prior=1.0)
    pair_bits: int = 16
    # the replica answering a Rank writes its pairs as shown at once (pairs.py)
    pair_at_rank: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"error memory mode {self.mode!r}: one of {', '.join(MODES)}")
        p, q = self.params, self.pair
        if not (0 <= p.gamma <= 1 and p.tau > 0 and p.lam >= 0 and p.prior >= 0 and self.half_life_s >= 0
                and self.settle_s >= 0 and q.lam >= 0 and q.prior >= 0 and q.gamma == 1.0
                and 1 <= self.pair_bits <= 26):
            raise ValueError(f"error memory parameters out of range: {self}")

    def with_overrides(self, spec: str) -> MemoryConfig:
        """This config with ``key=value,...`` applied."""
        config, params, pair = {}, {}, {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if key == "mode":
                config["mode"] = value
            elif key in ("k", "bits", "seed", "pair_bits"):
                config[key] = int(value)
            elif key == "pair_at_rank":
                config[key] = value.lower() in ("1", "true", "yes", "on")
            elif key in ("half_life_s", "settle_s"):
                config[key] = float(value)
            elif key in ("lambda", "tau", "gamma", "prior"):
                params["lam" if key == "lambda" else key] = float(value)
            elif key in ("pair_lambda", "pair_prior"):
                pair["lam" if key == "pair_lambda" else "prior"] = float(value)
            else:
                raise ValueError(f"unknown error memory setting {key!r}")
        return replace(self, params=replace(self.params, **params), pair=replace(self.pair, **pair), **config)


def per_model(default: MemoryConfig, spec: str) -> dict[str, MemoryConfig]:
    """{model: config} from ``model:key=value,...;model2:...``."""
    out = {}
    for part in filter(None, (x.strip() for x in spec.split(";"))):
        model, sep, rest = part.partition(":")
        if not sep or not model.strip():
            raise ValueError(f"error memory override {part!r}: expected model:key=value,...")
        out[model.strip()] = default.with_overrides(rest)
    return out
