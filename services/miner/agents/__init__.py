"""The miner's Faust agents and timers, registered on the app by `loopwise.miner.app`:
`attribution` (impressions x feedback -> learning signal) and `reformulation`
(turns -> sessions -> rewrite rules)."""

from .attribution import AttributionAgents
from .reformulation import ReformulationAgents

__all__ = ["AttributionAgents", "ReformulationAgents"]
