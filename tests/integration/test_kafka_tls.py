"""The services' Kafka clients speak TLS when the settings say so, on a real broker.

Tansu (the local broker) offers no TLS listener and, with memory storage, no way to
create a SCRAM user before authentication is required; so the test puts a
TLS-terminating proxy (certificates from a throwaway CA made with ``openssl``) in
front of Tansu, which advertises the proxy's address. Every connection the clients
open, bootstrap and partition leaders alike, is then TLS verified against the CA
file of ``LOOPWISE_KAFKA_SSL_CAFILE``: kafka-python (topic creation, the collector's
producer), aiokafka and the miner's Faust app. SASL is covered by the unit tests of
`loopwise.kafka_security` (the arguments) and the contract test (every client gets them).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopwise.collector.producer import AckedProducer
from loopwise.kafka_security import aiokafka_security
from loopwise.settings import BaseSettings
from loopwise.tools import procs
from loopwise.topics import ensure_topics

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1 and localhost."""
    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=loopwise-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


class TlsProxy:
    """Accepts TLS on ``port`` and forwards the plaintext to ``target`` (one thread per direction)."""

    def __init__(self, port: int, target: int, context: ssl.SSLContext) -> None:
        self.target, self.context = target, context
        self.server = socket.create_server(("127.0.0.1", port))
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True, name="tls-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()  # not TLS, or the client refused the certificate
            return
        self.handshakes += 1
        upstream = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pump, args=(upstream, tls), daemon=True).start()
        self._pump(tls, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, TlsProxy]]:
    """(bootstrap of the TLS port, the CA file, the proxy): Tansu behind a TLS proxy."""
    folder = tmp_path_factory.mktemp("kafka-tls")
    ca, cert, key = _certificates(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inner, outer = procs.free_port(), procs.free_port()
    log = open(folder / "tansu.log", "ab")  # noqa: SIM115 - closed below
    popen = subprocess.Popen([procs.tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{inner}",
                              "--advertised-listener-url", f"tcp://127.0.0.1:{outer}",
                              "--storage-engine", "memory://tansu/"],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    proxy = TlsProxy(outer, inner, context)
    try:
        procs.wait_port(inner, 20)
        yield f"127.0.0.1:{outer}", ca, proxy
    finally:
        proxy.close()
        procs.stop_pid(popen.pid, 10, popen)
        log.close()


@pytest.fixture
def tls_env(tls_broker, monkeypatch) -> BaseSettings:
    """The environment a deployment with a TLS Kafka gives the services."""
    _, ca, _ = tls_broker
    monkeypatch.setenv("LOOPWISE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("LOOPWISE_KAFKA_SSL_CAFILE", str(ca))
    return BaseSettings.from_env()


def test_services_clients_produce_and_consume_over_tls(tls_broker, tls_env):
    """Topic creation (kafka-python's admin), the collector's producer (kafka-python) and
    an aiokafka consumer, all through the TLS port only."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    bootstrap, _, proxy = tls_broker
    ensure_topics(bootstrap, ["tls.events"], 1, timeout=20)

    async def round_trip() -> list[bytes]:
        producer = AckedProducer(bootstrap, compression="none")
        try:
            await producer.send_batch([("tls.events", b"k", b"over tls")], timeout=15)
        finally:
            await producer.close()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    **aiokafka_security(tls_env))
        await consumer.start()
        try:
            consumer.assign([TopicPartition("tls.events", 0)])
            await consumer.seek_to_beginning()
            batch = await consumer.getmany(timeout_ms=10_000)
            return [r.value for records in batch.values() for r in records]
        finally:
            await consumer.stop()

    assert asyncio.run(round_trip()) == [b"over tls"]
    assert proxy.handshakes >= 3  # admin, producer and consumer each verified the broker


def test_a_plaintext_client_does_not_get_through(tls_broker, monkeypatch):
    """The proxy really is TLS only: the default (PLAINTEXT) settings cannot bootstrap."""
    from kafka.errors import KafkaError

    bootstrap, _, _ = tls_broker
    monkeypatch.delenv("LOOPWISE_KAFKA_SECURITY_PROTOCOL", raising=False)
    with pytest.raises(KafkaError):
        ensure_topics(bootstrap, ["tls.refused"], 1, timeout=2)


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_broker):
    """The broker's certificate is checked: without the CA file (the system's CAs) TLS fails."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    bootstrap, _, _ = tls_broker
    s = BaseSettings.from_env({"LOOPWISE_KAFKA_SECURITY_PROTOCOL": "SSL"})

    async def connect() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000, **aiokafka_security(s))
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect())


def test_the_miners_faust_app_produces_over_tls(tls_broker, tls_env, tmp_path):
    """The miner's Faust app (its `broker_credentials`) reaches the broker through TLS."""
    from loopwise.miner.app import faust_app
    from loopwise.miner.settings import MinerSettings

    bootstrap, _, proxy = tls_broker
    ensure_topics(bootstrap, ["tls.faust"], 1, timeout=20)
    app = faust_app(MinerSettings.from_env(kafka_bootstrap=bootstrap, data_dir=str(tmp_path)))
    before = proxy.handshakes

    async def produce() -> None:
        await app.producer.start()
        try:
            await app.producer.send_and_wait("tls.faust", b"k", b"from faust", partition=0,
                                             timestamp=None, headers=None)
        finally:
            await app.producer.stop()

    asyncio.run(asyncio.wait_for(produce(), 30))
    assert proxy.handshakes > before
