"""TLS credentials of the gRPC servers and of the client, from PEM files.

A server with a certificate and key (``LOOPWISE_TLS_CERT_FILE``,
``LOOPWISE_TLS_KEY_FILE``) listens with TLS only: a plaintext client's
handshake fails. With a client CA (``LOOPWISE_TLS_CLIENT_CA_FILE``) it also
requires every client to present a certificate signed by that CA (mutual
TLS). The client (`loopwise.client.Client`) trusts the CA named by
``ca_file`` (else the system's) and presents ``cert_file``/``key_file`` when
given; its environment: ``LOOPWISE_TLS_CA_FILE``, ``LOOPWISE_TLS_CLIENT_CERT_FILE``,
``LOOPWISE_TLS_CLIENT_KEY_FILE``.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials | None:
    """None without a certificate (plaintext), else TLS (mutual with a client CA)."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise ValueError("LOOPWISE_TLS_CLIENT_CA_FILE needs LOOPWISE_TLS_CERT_FILE and LOOPWISE_TLS_KEY_FILE")
        return None
    if not (cert_file and key_file):
        raise ValueError("TLS needs both LOOPWISE_TLS_CERT_FILE and LOOPWISE_TLS_KEY_FILE")
    pair = [(_read(key_file), _read(cert_file))]
    if client_ca_file:
        return grpc.ssl_server_credentials(pair, root_certificates=_read(client_ca_file),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def client_credentials(ca_file: str = "", cert_file: str = "", key_file: str = "") -> grpc.ChannelCredentials:
    """Channel credentials trusting ``ca_file`` (else the system's CAs), presenting a client
    certificate when ``cert_file`` and ``key_file`` are given (mutual TLS)."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs both cert_file and key_file")
    return grpc.ssl_channel_credentials(root_certificates=_read(ca_file) if ca_file else None,
                                        private_key=_read(key_file) if key_file else None,
                                        certificate_chain=_read(cert_file) if cert_file else None)


def client_tls_from_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The client's TLS files named in the environment (empty: plaintext)."""
    env = dict(os.environ if env is None else env)
    out = {"ca_file": env.get("LOOPWISE_TLS_CA_FILE", ""),
           "cert_file": env.get("LOOPWISE_TLS_CLIENT_CERT_FILE", ""),
           "key_file": env.get("LOOPWISE_TLS_CLIENT_KEY_FILE", "")}
    return {k: v for k, v in out.items() if v}
