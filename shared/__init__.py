"""Loopwise: self-learning assistants and recommenders.

The `loopwise` package root holds what more than one service needs (settings,
event codecs, topics, Redis keys, feature hashing, the model store, the gRPC
server bootstrap) plus the client and the local-stack CLI. Services live in
`loopwise.<service>` and never import each other.
"""

__version__ = "0.1.0"
