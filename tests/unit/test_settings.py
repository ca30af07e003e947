import pytest

from loopwise.collector.settings import CollectorSettings
from loopwise.inference.settings import InferenceSettings


def test_from_env_converts_types():
    s = CollectorSettings.from_env({"LOOPWISE_TENANTS": "a, b", "LOOPWISE_GRPC_PORT": "1234",
                                    "LOOPWISE_ACK_TIMEOUT_S": "2.5", "LOOPWISE_TOPIC_EVENTS": "ev"})
    assert s.tenants == ("a", "b") and s.grpc_port == 1234 and s.ack_timeout_s == 2.5
    assert s.topics.events == "ev"
    i = InferenceSettings.from_env({"LOOPWISE_EMIT_IMPRESSIONS": "false"})
    assert i.emit_impressions is False and i.grpc_port == 50052


def test_bad_value_names_the_variable():
    with pytest.raises(ValueError, match="LOOPWISE_GRPC_PORT"):
        CollectorSettings.from_env({"LOOPWISE_GRPC_PORT": "eighty"})


def test_metrics_host_falls_back_to_the_grpc_host_variable():
    from loopwise.trainer.settings import TrainerSettings

    assert TrainerSettings.from_env({}).metrics_host == "0.0.0.0"
    assert TrainerSettings.from_env({"LOOPWISE_GRPC_HOST": "127.0.0.1"}).metrics_host == "127.0.0.1"
    both = {"LOOPWISE_GRPC_HOST": "127.0.0.1", "LOOPWISE_METRICS_HOST": "10.0.0.1"}
    c = CollectorSettings.from_env(both)
    assert (c.grpc_host, c.metrics_host) == ("127.0.0.1", "10.0.0.1")
    assert not hasattr(TrainerSettings(), "grpc_port")  # a worker serves no gRPC


def test_kafka_session_timeout_reads_its_old_name_too():
    from loopwise.miner.settings import MinerSettings
    from loopwise.trainer.settings import TrainerSettings

    for cls in (MinerSettings, TrainerSettings):
        assert cls.from_env({}).kafka_session_timeout_s == 6.0
        assert cls.from_env({"LOOPWISE_SESSION_TIMEOUT_S": "9"}).kafka_session_timeout_s == 9.0
        both = {"LOOPWISE_SESSION_TIMEOUT_S": "9", "LOOPWISE_KAFKA_SESSION_TIMEOUT_S": "12"}
        assert cls.from_env(both).kafka_session_timeout_s == 12.0
