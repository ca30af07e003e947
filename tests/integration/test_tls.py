"""TLS and mutual TLS on the real services (certificates made at test time).

A server with a certificate listens with TLS only: the client that trusts its
CA is served, a plaintext client is refused. With a client CA the server also
wants a client certificate that CA signed: none, or one from another CA, and
the handshake fails. The API key still applies inside TLS.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loopwise import auth
from loopwise.client import Client, ReportError
from tests.integration.certs import Authority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = Authority(folder, "loopwise-ca"), Authority(folder, "rogue-ca")
    server_cert, server_key = ca.issue("server", server=True)
    client_cert, client_key = ca.issue("client", server=False)
    rogue_cert, rogue_key = rogue.issue("client", server=False)
    return {"ca": ca.ca_file, "rogue_ca": rogue.ca_file, "server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key, "rogue_cert": rogue_cert, "rogue_key": rogue_key}


def report_code(target: str, **client: object) -> grpc.StatusCode | None:
    with Client(target, timeout=5, retries=0, **client) as lw:
        try:
            assert lw.report([lw.events.click("r1", "m1", user_id="u1")]).accepted == 1
        except ReportError as exc:  # UNAVAILABLE after the client's retries
            return exc.cause.code()
        except grpc.RpcError as exc:
            return exc.code()
    return None


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(start_collector, pki):
    collector = start_collector(tls_cert_file=str(pki["server_cert"]), tls_key_file=str(pki["server_key"]))
    target = f"127.0.0.1:{collector.port}"
    assert report_code(target, ca_file=str(pki["ca"])) is None  # handshake, call, broker ack
    assert report_code(target, tls=False) == grpc.StatusCode.UNAVAILABLE  # plaintext: no handshake
    with grpc.insecure_channel(target) as channel:  # not even the health service answers in plaintext
        with pytest.raises(grpc.RpcError) as exc:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    # a server certificate the client's CA did not sign
    assert report_code(target, ca_file=str(pki["rogue_ca"])) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_wants_a_client_certificate_of_the_ca(start_collector, pki):
    collector = start_collector(tls_cert_file=str(pki["server_cert"]), tls_key_file=str(pki["server_key"]),
                                tls_client_ca_file=str(pki["ca"]))
    target = f"127.0.0.1:{collector.port}"
    ca = str(pki["ca"])
    assert report_code(target, ca_file=ca, cert_file=str(pki["client_cert"]), key_file=str(pki["client_key"])) is None
    assert report_code(target, ca_file=ca) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert report_code(target, ca_file=ca, cert_file=str(pki["rogue_cert"]),
                       key_file=str(pki["rogue_key"])) == grpc.StatusCode.UNAVAILABLE  # another CA's
    assert report_code(target, tls=False) == grpc.StatusCode.UNAVAILABLE


def test_keys_and_tls_together_on_inference(start_inference, pki, tmp_path, monkeypatch):
    keys = tmp_path / "keys.json"
    auth.write_keys(keys, [("default", "lw_tls-key")])
    inference = start_inference(tls_cert_file=str(pki["server_cert"]), tls_key_file=str(pki["server_key"]),
                                tls_client_ca_file=str(pki["ca"]), api_keys_file=str(keys))
    target = f"127.0.0.1:{inference.grpc.port}"
    # the client's TLS files from its environment, as a deployment would set them
    monkeypatch.setenv("LOOPWISE_TLS_CA_FILE", str(pki["ca"]))
    monkeypatch.setenv("LOOPWISE_TLS_CLIENT_CERT_FILE", str(pki["client_cert"]))
    monkeypatch.setenv("LOOPWISE_TLS_CLIENT_KEY_FILE", str(pki["client_key"]))
    monkeypatch.setenv("LOOPWISE_API_KEY", "lw_tls-key")
    credentials = grpc.ssl_channel_credentials(pki["ca"].read_bytes(), pki["client_key"].read_bytes(),
                                               pki["client_cert"].read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        wait_serving_secure(channel)
    with Client(inference=target, timeout=10) as lw:
        assert lw.rank(["m1", "m2"], user_id="u1").version == "v1"
    with Client(inference=target, timeout=5, api_key="") as keyless:
        with pytest.raises(grpc.RpcError) as exc:
            keyless.rank(["m1"])
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def wait_serving_secure(channel: grpc.Channel, timeout: float = 20.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError("inference never SERVING over TLS")

