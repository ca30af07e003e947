"""A stand-in for aiokafka's consumer that only records how it was built (its keyword
arguments) and fails to start: for tests of which settings a topic reader passes."""

from __future__ import annotations


def consumer_recorder(built: list[dict]) -> type:
    """A consumer class whose every construction appends its keyword arguments to ``built``."""

    class Recorder:
        def __init__(self, *args, **kwargs) -> None:
            built.append(kwargs)

        async def start(self) -> None:
            raise RuntimeError("no broker here")

        async def stop(self) -> None:
            pass

    return Recorder
