"""loopwise.auth, loopwise.guard's pieces, the string limits and the other security settings."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client import CollectorRegistry

from loopwise import auth, runtime
from loopwise.grpcserver import server_options
from loopwise.settings import GrpcSettings
from loopwise.v1 import inference_pb2
from loopwise.validation import long_string


def test_keys_are_stored_hashed_and_granted_per_tenant(tmp_path):
    path = tmp_path / "keys.json"
    auth.write_keys(path, [("a", "k1"), ("b", "k1"), ("b", "k2")])
    assert "k1" not in path.read_text() and oct(path.stat().st_mode)[-3:] == "600"
    store = auth.KeyStore(path)
    principal, _ = store.authenticate("k1")
    assert principal is not None and principal.tenants == {"a", "b"}
    assert store.authenticate("k2")[0].tenants == {"b"}
    assert store.authenticate("nope") == (None, auth.UNKNOWN)
    assert store.authenticate("") == (None, auth.MISSING)


def test_expired_and_named_keys(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"tenants": {"acme": [
        {"hash": auth.hash_key("old"), "expires": "2020-01-01T00:00:00Z"},
        {"hash": auth.hash_key("new"), "expires": int(time.time()) + 3600, "name": "ci"}]}}))
    store = auth.KeyStore(path)
    assert store.authenticate("old") == (None, auth.EXPIRED)
    assert store.authenticate("new")[0].name == "ci"


def test_a_changed_file_is_reread_and_a_broken_one_keeps_the_last_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "keys.json"
    auth.write_keys(path, [("a", "k1")])
    store = auth.KeyStore(path)
    auth.write_keys(path, [("a", "k2"), ("a", "k3")])
    assert store.authenticate("k2")[0] is not None and store.authenticate("k1") == (None, auth.UNKNOWN)
    path.write_text("{not json")
    assert store.authenticate("k3")[0] is not None
    with pytest.raises(ValueError, match="keys"):
        auth.KeyStore(path)
    with pytest.raises(ValueError, match="sha256"):
        auth.parse_keys({"tenants": {"a": ["plain-text-key"]}})


def test_key_from_metadata_reads_both_headers():
    assert auth.key_from_metadata((("authorization", "Bearer abc"),)) == "abc"
    assert auth.key_from_metadata((("x-loopwise-key", " abc "),)) == "abc"
    assert auth.key_from_metadata((("authorization", "Basic abc"),)) == ""
    assert auth.key_from_metadata(None) == ""


def test_pseudonym_is_keyed_and_stable():
    assert auth.pseudonym(b"s", "alice") == auth.pseudonym(b"s", "alice") != auth.pseudonym(b"t", "alice")
    assert len(auth.pseudonym(b"s", "alice")) == 32 and auth.pseudonym(b"s", "") == ""


def test_every_string_of_a_request_is_bounded():
    assert long_string(inference_pb2.RankRequest(tenant="a", session_id="x" * 256)) is None
    assert long_string(inference_pb2.RankRequest(session_id="x" * 257)) == ("session_id", 256)
    request = inference_pb2.RankRequest()
    request.candidates.categorical.add(name="genre", values=["g", "g" * 300])
    assert long_string(request) == ("candidates.categorical[0].values", 256)
    assert long_string(inference_pb2.RewriteRequest(utterance="u" * 1000)) is None
    assert long_string(inference_pb2.RewriteRequest(context={"k": "v" * 300})) == ("context (value)", 256)


def test_server_options_carry_the_limits():
    options = dict(server_options(GrpcSettings(max_connections=7, max_connection_idle_s=0, keepalive_s=30)))
    assert options["grpc.max_allowed_incoming_connections"] == 7
    assert options["grpc.keepalive_time_ms"] == 30_000 and "grpc.max_connection_idle_ms" not in options
    assert options["grpc.max_connection_age_ms"] == 3_600_000


def test_metrics_want_the_bearer_token_and_probes_do_not():
    http = runtime.MetricsServer(CollectorRegistry(), token="t0ken")
    http.start("127.0.0.1", 0)

    def status(path: str, token: str = "") -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{http.port}{path}",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            return urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert status("/metrics") == 401 and status("/metrics", "wrong") == 401
        assert status("/metrics", "t0ken") == 200 and status("/healthz") == 200
    finally:
        http.close()


def test_redis_auth_and_tls_pass_through_the_url():
    """Every Redis client is built with ``from_url(LOOPWISE_REDIS_URL)``: password and TLS ride along."""
    client = redis.Redis.from_url("rediss://:pw@redis.example:6380/2?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "pw" and kwargs["ssl_ca_certs"] == "/ca.pem" and kwargs["db"] == 2
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_stack_json_is_private(tmp_path):
    from loopwise.tools.stack import StackInfo

    info = StackInfo(root=str(tmp_path), kafka="", redis="", collector="", inference="", metrics={}, pids={},
                     logs={}, model_store="", tenants=["default"], api_key="lw_x", redis_password="pw")
    info.write(tmp_path)
    assert oct(os.stat(tmp_path / "stack.json").st_mode)[-3:] == "600"
    assert json.loads((tmp_path / "stack.json").read_text())["api_key"] == "lw_x"


def test_every_redis_client_is_built_from_the_url():
    """No Redis client built from host and port: AUTH and TLS would be lost."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    built = [f"{path.relative_to(root)}: {line.strip()}"
             for folder in ("shared", "services") for path in (root / folder).rglob("*.py")
             for line in path.read_text().splitlines()
             if re.search(r"\b(Strict)?Redis(Cluster)?\(", line) and "from_url" not in line]
    assert not built, built


def test_the_connection_cap_leaves_descriptors_for_the_rest(monkeypatch):
    import resource

    from loopwise import grpcserver

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert grpcserver.connection_cap(2000) == 1024 - grpcserver.FD_RESERVE
    assert grpcserver.connection_cap(500) == 500


def test_request_tenants_reads_the_field_and_every_event():
    from loopwise.client.build import EventFactory
    from loopwise.v1 import feedback_pb2

    report = feedback_pb2.ReportRequest(events=[EventFactory("a").click("r", "m"), EventFactory("b").click("r", "m"),
                                                EventFactory("").click("r", "m")])
    assert auth.request_tenants(report) == {"a", "b"}  # the tenant-less event is the handler's to reject
    assert auth.request_tenants(inference_pb2.RankRequest(tenant="a")) == {"a"}
