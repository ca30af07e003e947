"""Every gRPC method fuzzed on real servers: structured messages built from the
protobuf descriptors (a new field is fuzzed without touching this file), random
bytes and damaged encodings of valid requests.

Each answer is either OK or a documented refusal that says why: a status code a
client can act on and non-empty details. Never UNKNOWN or INTERNAL (an
unhandled exception), never a hang past the deadline, and the server keeps
answering a well-behaved request afterwards. Budgets are bounded for ``make
test``; ``bench/fuzz.py`` runs the coverage-guided fuzzer for longer.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor as d
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopwise.tools import fuzz
from loopwise.v1 import feedback_pb2, inference_pb2

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE}
BUDGET = settings(max_examples=40, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                         HealthCheck.data_too_large])


def methods(file: d.FileDescriptor) -> list[d.MethodDescriptor]:
    return [m for s in file.services_by_name.values() for m in s.methods]


INFERENCE = methods(inference_pb2.DESCRIPTOR)
FEEDBACK = methods(feedback_pb2.DESCRIPTOR)


def path(method: d.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def call_raw(channel: grpc.Channel, method: d.MethodDescriptor, payloads: list[bytes]) -> grpc.RpcError | None:
    """Send already-serialised bytes (no client-side encoding): the server's decoding is under test."""
    try:
        if method.client_streaming:
            channel.stream_unary(path(method))(iter(payloads), timeout=10)
        else:
            channel.unary_unary(path(method))(payloads[0], timeout=10)
    except grpc.RpcError as err:
        return err
    return None


def check(err: grpc.RpcError | None, what: str) -> None:
    if err is None:
        return
    code = err.code()
    assert code in REFUSALS, f"{what}: {code.name} {err.details()!r}"
    assert err.details(), f"{what}: {code.name} without details"


@pytest.fixture
def servers(start_inference, start_collector):
    inference, collector = start_inference(), start_collector()
    with grpc.insecure_channel(f"127.0.0.1:{inference.port}") as ic, \
            grpc.insecure_channel(f"127.0.0.1:{collector.port}") as cc:
        yield {"inference": ic, "feedback": cc}


def still_answers(servers) -> None:
    from loopwise.client.build import EventFactory

    check(call_raw(servers["inference"], INFERENCE[0],
                   [inference_pb2.RankRequest(tenant="default", model="ranker", request_id="ok",
                                              candidates={"ids": ["a", "b"]}).SerializeToString()]),
          "well-behaved Rank after fuzzing")
    event = EventFactory("default").click("ok", "a", position=1, user_id="u")
    err = call_raw(servers["feedback"], FEEDBACK[0],
                   [feedback_pb2.ReportRequest(events=[event]).SerializeToString()])
    assert err is None, f"well-behaved Report after fuzzing: {err.code().name} {err.details()}"


@pytest.mark.parametrize("method", INFERENCE + FEEDBACK, ids=path)
def test_structured_requests_are_answered_or_refused_with_a_reason(servers, method):
    channel = servers["inference" if method in INFERENCE else "feedback"]

    @BUDGET
    @given(st.lists(fuzz.strategy(method.input_type), min_size=1, max_size=3))
    def run(requests):
        check(call_raw(channel, method, [r.SerializeToString() for r in requests]), path(method))

    run()
    still_answers(servers)


@pytest.mark.parametrize("method", INFERENCE + FEEDBACK, ids=path)
def test_random_and_damaged_bytes_are_refused_with_a_reason(servers, method):
    channel = servers["inference" if method in INFERENCE else "feedback"]
    valid = fuzz.strategy(method.input_type, fuzz.Limits(max_depth=2))

    @BUDGET
    @given(st.one_of(st.binary(max_size=512).map(lambda b: [b]),
                     st.tuples(valid, st.integers(0, 4), st.integers(0, 4096)).map(
                         lambda t: [fuzz.mangle(t[0].SerializeToString(), t[1], t[2])])))
    def run(payloads):
        check(call_raw(channel, method, payloads), path(method))

    run()
    still_answers(servers)
