"""Developer tooling around the core: the ``loopwise`` CLI, the local stack and
its process supervision, the demo, dataset loaders, replays and simulators.

No service imports this package; it imports the core and the client.
"""
