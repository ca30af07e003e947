"""The Kafka security settings map onto each client family's constructor arguments."""

import asyncio
import ssl

import faust
import pytest

from loopwise.kafka_security import aiokafka_security, faust_credentials, kafka_python_security
from loopwise.settings import BaseSettings

SASL = {"LOOPWISE_KAFKA_SASL_MECHANISM": "scram-sha-512", "LOOPWISE_KAFKA_SASL_USERNAME": "loopwise",
        "LOOPWISE_KAFKA_SASL_PASSWORD": "s3cret"}


def settings(protocol: str, **env: str) -> BaseSettings:
    return BaseSettings.from_env({"LOOPWISE_KAFKA_SECURITY_PROTOCOL": protocol, **env})


@pytest.fixture
def cafile(tmp_path):
    """A CA bundle `ssl` loads: the system's default one when there is one."""
    path = ssl.get_default_verify_paths().cafile
    if not path:
        pytest.skip("no system CA bundle to load")
    return path


def test_plaintext_adds_nothing():
    """The default (the local stack): every client keeps its own defaults."""
    s = BaseSettings.from_env({})
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert kafka_python_security(s) == {} and aiokafka_security(s) == {} and faust_credentials(s) is None


def test_no_settings_reads_the_environment(monkeypatch):
    monkeypatch.setenv("LOOPWISE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LOOPWISE_KAFKA_SASL_USERNAME", "env-user")
    assert kafka_python_security()["sasl_plain_username"] == "env-user"
    assert aiokafka_security()["security_protocol"] == "SASL_PLAINTEXT"


def test_sasl_plaintext():
    s = settings("sasl_plaintext", **SASL)
    want = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "loopwise", "sasl_plain_password": "s3cret"}
    assert kafka_python_security(s) == want
    assert aiokafka_security(s) == want
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.ssl_context is None
    assert (creds.username, creds.password, creds.mechanism.value) == ("loopwise", "s3cret", "SCRAM-SHA-512")
    assert creds.protocol.value == "SASL_PLAINTEXT"


def test_ssl_with_a_ca_file(cafile):
    s = settings("SSL", LOOPWISE_KAFKA_SSL_CAFILE=cafile)
    assert kafka_python_security(s) == {"security_protocol": "SSL", "ssl_cafile": cafile}
    kwargs = aiokafka_security(s)
    assert kwargs.keys() == {"security_protocol", "ssl_context"} and kwargs["security_protocol"] == "SSL"
    context = kwargs["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials) and creds.protocol.value == "SSL"
    assert creds.context.verify_mode == ssl.CERT_REQUIRED


def test_sasl_ssl_without_a_ca_file_trusts_the_system():
    s = settings("SASL_SSL", **SASL)
    assert "ssl_cafile" not in kafka_python_security(s)
    kwargs = aiokafka_security(s)
    assert kwargs["security_protocol"] == "SASL_SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)
    creds = faust_credentials(s)
    assert creds.protocol.value == "SASL_SSL" and isinstance(creds.ssl_context, ssl.SSLContext)


def test_aiokafka_and_kafka_python_accept_the_arguments():
    """The clients build (no connection) with what the functions give."""
    from aiokafka import AIOKafkaConsumer
    from kafka import KafkaConsumer

    s = settings("SASL_SSL", **SASL)
    KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5), **kafka_python_security(s)).close()

    async def build() -> None:
        AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **aiokafka_security(s))

    asyncio.run(build())


@pytest.mark.parametrize("env, variable", [
    ({"LOOPWISE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "LOOPWISE_KAFKA_SECURITY_PROTOCOL"),
    ({"LOOPWISE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LOOPWISE_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "LOOPWISE_KAFKA_SASL_MECHANISM"),
])
def test_a_wrong_value_names_its_variable(env, variable):
    s = BaseSettings.from_env(env)
    for build in (kafka_python_security, aiokafka_security, faust_credentials):
        with pytest.raises(ValueError, match=variable):
            build(s)


def test_the_password_stays_out_of_the_repr():
    assert "s3cret" not in repr(settings("SASL_SSL", **SASL))


@pytest.mark.parametrize("module", ["redis", "redis.asyncio"])
def test_a_rediss_url_with_a_password_reaches_the_connection(module):
    """Redis takes TLS and AUTH from LOOPWISE_REDIS_URL alone, as the chart writes it:
    every service hands the URL to ``Redis.from_url`` unchanged."""
    import importlib

    redis = importlib.import_module(module)
    url = "rediss://loopwise:s3cret@redis.data:6380/2?ssl_ca_certs=/etc/loopwise/redis-ca/ca.crt"
    pool = redis.Redis.from_url(url).connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.data", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("loopwise", "s3cret")
    assert kwargs["ssl_ca_certs"] == "/etc/loopwise/redis-ca/ca.crt"
    assert "SSL" in pool.connection_class.__name__
