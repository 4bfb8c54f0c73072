"""TLS for an interlay's clients (issue 12, part 5): the interlay listens with the
certificate and key of its settings, ``rediss://`` clients trusting its CA work
as in plaintext (RESP2 and RESP3, pipelines, large values streamed through
TLS), a client CA makes a client certificate mandatory, and bad files are a
clear error at CreateInterlay and StartInterlay, naming the setting."""

from __future__ import annotations

import os
import shutil
import socket
import ssl

import grpc
import pytest
import redis
from eve_process import EveServer
from pki import TestCa
from proxies import LOOPBACK, Interlay, endpoint_for, free_ports
from servers import free_port

from eve.core.errors import ConfigError, StateError
from eve.live.interlays import proxy_settings
from eve.v1 import endpoints_pb2 as epb
from eve.v1 import interlays_pb2 as ipb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def pki(tmp_path):
    ca = TestCa(tmp_path, "interlay")
    return ca, ca.issue("interlay-server"), ca.issue("app-client", client=True)


def start_tls_interlay(supervisor, server, **settings: str) -> Interlay:
    ports = supervisor.start("tls", free_ports(1), LOOPBACK, endpoint_for(server.host, server.port), 50,
                             settings=proxy_settings(settings))
    return Interlay(supervisor, "tls", LOOPBACK, ports)


def tls_client(it: Interlay, ca: TestCa, **kw: object) -> redis.Redis:
    return it.client(ssl=True, ssl_ca_certs=str(ca.path), **kw)


def test_rediss_clients_through_the_interlay(server_factory, supervisor, pki) -> None:
    ca, server_cert, _ = pki
    server = server_factory("redis-7.0")
    it = start_tls_interlay(supervisor, server, tls_cert_file=str(server_cert.cert),
                            tls_key_file=str(server_cert.key))
    for protocol in (2, 3):
        client = tls_client(it, ca, protocol=protocol)
        assert client.ping()
        pipe = client.pipeline(transaction=False)
        for i in range(500):
            pipe.set(f"k{i}", i)
            pipe.get(f"k{i}")
        assert pipe.execute()[1::2] == [str(i).encode() for i in range(500)]
        client.close()
    value = os.urandom(3 << 20)   # larger than the stream threshold: streamed both ways
    client = tls_client(it, ca)
    assert client.set("big", value) and client.get("big") == value
    assert server.client().get("big") == value   # it reached the backend, which speaks plaintext
    # A plaintext client gets no Redis reply from a TLS listener.
    with socket.create_connection((it.host, it.port), timeout=5) as plain:
        plain.sendall(b"PING\r\n")
        try:
            assert b"PONG" not in plain.recv(1024)
        except (ConnectionResetError, TimeoutError):
            pass
    assert client.ping()


def test_a_client_ca_makes_a_client_certificate_mandatory(server_factory, supervisor, pki) -> None:
    ca, server_cert, client_cert = pki
    server = server_factory("redis-7.0")
    it = start_tls_interlay(supervisor, server, tls_cert_file=str(server_cert.cert),
                            tls_key_file=str(server_cert.key), tls_ca_file=str(ca.path))
    with_cert = tls_client(it, ca, ssl_certfile=str(client_cert.cert), ssl_keyfile=str(client_cert.key))
    assert with_cert.ping()
    without = tls_client(it, ca)
    with pytest.raises((redis.ConnectionError, ssl.SSLError, OSError)):
        without.ping()


def test_bad_tls_files_are_refused_naming_the_setting(tmp_path, pki, server_factory, supervisor) -> None:
    ca, server_cert, _ = pki
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="settings.tls_cert_file.*does not exist"):
        proxy_settings({"tls_cert_file": missing, "tls_key_file": str(server_cert.key)})
    with pytest.raises(ConfigError, match="settings.tls_key_file"):
        proxy_settings({"tls_cert_file": str(server_cert.cert)})
    with pytest.raises(ConfigError, match="settings.tls_key_file.*not a PEM certificate and its unencrypted key"):
        proxy_settings({"tls_cert_file": str(server_cert.cert), "tls_key_file": str(ca.path)})
    # A proxy process started with files that went away since says so, naming the setting.
    copy = tmp_path / "gone.pem"
    shutil.copy(server_cert.cert, copy)
    settings = proxy_settings({"tls_cert_file": str(copy), "tls_key_file": str(server_cert.key)})
    copy.unlink()
    server = server_factory("redis-7.0")
    with pytest.raises(StateError, match="settings.tls_cert_file"):
        supervisor.start("gone", free_ports(1), LOOPBACK, endpoint_for(server.host, server.port), 10,
                         settings=settings)


def test_tls_settings_through_the_api(tmp_path, pki, server_factory) -> None:
    """CreateInterlay refuses files that do not load; StartInterlay too, when they went away
    after creation; with good files, GetInterlay shows the settings and a rediss:// client works."""
    ca, server_cert, _ = pki
    server = server_factory("redis-7.0")
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    try:
        eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
            endpoint="src", kind="redis",
            config=epb.EndpointConfig(target=epb.Connection(host="127.0.0.1", port=server.port))))
        stub = eve.interlays()
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateInterlay(ipb.CreateInterlayRequest(id="bad", endpoint="src", port=free_port(), settings=(
                ipb.InterlaySettings(tls_cert_file=str(tmp_path / "nope.pem"), tls_key_file=str(server_cert.key)))))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "settings.tls_cert_file" in refused.value.details()
        cert = tmp_path / "served.pem"
        shutil.copy(server_cert.cert, cert)
        settings = ipb.InterlaySettings(tls_cert_file=str(cert), tls_key_file=str(server_cert.key),
                                        output_buffer_hard_limit_bytes=64 << 20)
        created = stub.CreateInterlay(ipb.CreateInterlayRequest(id="tls", endpoint="src", port=free_port(),
                                                                settings=settings))
        assert created.settings.tls_cert_file == str(cert)
        assert created.settings.output_buffer_hard_limit_bytes == 64 << 20
        cert.unlink()
        with pytest.raises(grpc.RpcError) as gone:
            stub.StartInterlay(ipb.StartInterlayRequest(id="tls"))
        assert gone.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "settings.tls_cert_file" in gone.value.details()
        shutil.copy(server_cert.cert, cert)
        started = stub.StartInterlay(ipb.StartInterlayRequest(id="tls"))
        client = redis.Redis(host="127.0.0.1", port=started.listener_ports[0], ssl=True, ssl_ca_certs=str(ca.path),
                             socket_timeout=10)
        assert client.ping()
        client.close()
        stub.StopInterlay(ipb.StopInterlayRequest(id="tls"))
    finally:
        eve.stop()
