"""The miner: Faust agents that turn impressions and feedback into learning signal."""
