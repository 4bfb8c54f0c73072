"""TLS on the API (``eve serve --tls-cert/--tls-key``, ``--tls-client-ca`` for mutual TLS), for
gRPC and HTTP alike: a client trusting the CA connects, one without it or trusting another CA
is refused, and with mutual TLS a client without a certificate is refused too. Certificates
come from a throwaway CA made with the ``cryptography`` package. The exposure rules: off
loopback a token is needed, and TLS for it unless ``--insecure``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from eve_process import EveServer, grpcurl_binary
from pki import Issued, TestCa

from eve.api.server import ServerOptions, check_exposure
from eve.api.tls import TlsFiles
from eve.core.errors import ConfigError
from eve.v1 import workflows_pb2 as wpb
from eve.v1 import workflows_pb2_grpc

pytestmark = [pytest.mark.timeout(120)]

TOKEN = "tls-test-token"


@pytest.fixture
def pki(tmp_path: Path):
    ca, other = TestCa(tmp_path, "eve"), TestCa(tmp_path, "other")
    return ca, other, ca.issue("eve-server")


def start_tls_eve(tmp_path: Path, server: Issued, *extra: str) -> EveServer:
    return EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", token=TOKEN,
                     extra_args=["--http", "127.0.0.1:0", "--tls-cert", str(server.cert), "--tls-key",
                                 str(server.key), *extra]).start()


def eve_cli(*args: str, token: str | None = TOKEN, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in ("EVE_TOKEN", "EVE_ADDRESS", "EVE_TLS_CERT",
                                                               "EVE_TLS_KEY")}, **(env or {})}
    if token:
        env["EVE_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "eve", *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", "-H", f"Authorization: Bearer {TOKEN}", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def list_runs(address: str, credentials: grpc.ChannelCredentials) -> wpb.ListRunsResponse:
    with grpc.secure_channel(address, credentials) as channel:
        stub = workflows_pb2_grpc.MigrationServiceStub(channel)
        return stub.ListRuns(wpb.ListRunsRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)


# -- TLS ----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_tls_server_accepts_clients_trusting_its_ca_and_refuses_the_others(tmp_path, pki):
    ca, other, server = pki
    eve = start_tls_eve(tmp_path, server)
    try:
        assert eve.http_url.startswith("https://127.0.0.1:")
        # The CLI: the right CA connects, another CA or none (plaintext) is refused with exit 2.
        created = eve_cli("runs", "create", "tls-run", "--address", eve.address, "--tls-ca", str(ca.path))
        assert created.returncode == 0, created.stderr
        listed = eve_cli("runs", "list", "--address", eve.address, "--tls-ca", str(ca.path), "--json")
        assert json.loads(listed.stdout)["runs"][0]["id"] == "tls-run"
        refused = eve_cli("runs", "list", "--address", eve.address, "--tls-ca", str(other.path))
        assert refused.returncode == 2 and "over TLS" in refused.stderr
        assert eve_cli("runs", "list", "--address", eve.address).returncode == 2
        assert TOKEN not in refused.stderr + refused.stdout

        # grpcurl as the runbooks show it (-cacert instead of -plaintext).
        reply = subprocess.run([grpcurl_binary(), "-cacert", str(ca.path), "-emit-defaults",
                                "-H", f"authorization: Bearer {TOKEN}", "-d", '{"run": "tls-run"}', eve.address,
                                "eve.v1.MigrationService/GetRun"], capture_output=True, text=True, timeout=30,
                               check=False)
        assert reply.returncode == 0 and json.loads(reply.stdout)["state"] == "CREATED", reply.stderr
        plain = subprocess.run([grpcurl_binary(), "-plaintext", eve.address, "list"], capture_output=True,
                               text=True, timeout=30, check=False)
        assert plain.returncode != 0

        # HTTP: curl with the CA; without it the certificate is not trusted (curl exit 60).
        ok = curl("--cacert", str(ca.path), f"{eve.http_url}/api/v1/runs/tls-run")
        assert ok.returncode == 0 and json.loads(ok.stdout)["id"] == "tls-run"
        assert curl(f"{eve.http_url}/api/v1/runs/tls-run").returncode == 60
        assert curl("--cacert", str(other.path), f"{eve.http_url}/api/v1/runs").returncode == 60
        assert curl(eve.http_url.replace("https://", "http://") + "/api/v1/runs").returncode != 0
    finally:
        eve.stop()


@pytest.mark.integration
def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path, pki):
    ca, other, server = pki
    clients = TestCa(tmp_path, "clients")
    operator, stranger = clients.issue("operator", client=True), other.issue("stranger", client=True)
    eve = start_tls_eve(tmp_path, server, "--tls-client-ca", str(clients.path))
    try:
        root = ca.path.read_bytes()

        def with_certificate(issued: Issued | None) -> grpc.ChannelCredentials:
            if issued is None:
                return grpc.ssl_channel_credentials(root_certificates=root)
            return grpc.ssl_channel_credentials(root_certificates=root, private_key=issued.key.read_bytes(),
                                                certificate_chain=issued.cert.read_bytes())

        assert list(list_runs(eve.address, with_certificate(operator)).runs) == []
        for refused in (None, stranger):
            with pytest.raises(grpc.RpcError) as info:
                list_runs(eve.address, with_certificate(refused))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The CLI has --tls-ca but presents no certificate: refused.
        cli = eve_cli("runs", "list", "--address", eve.address, "--tls-ca", str(ca.path))
        assert cli.returncode == 2 and "--tls-cert" in cli.stderr
        # With its certificate (flags, or EVE_TLS_CERT/EVE_TLS_KEY) every command group gets through.
        flags = ["--address", eve.address, "--tls-ca", str(ca.path), "--tls-cert", str(operator.cert),
                 "--tls-key", str(operator.key)]
        created = eve_cli("runs", "create", "mtls-run", *flags)
        assert created.returncode == 0, created.stderr
        for words in (("runs", "list"), ("endpoints", "list"), ("interlays", "list")):
            listed = eve_cli(*words, *flags, "--json")
            assert listed.returncode == 0, listed.stderr
        assert json.loads(eve_cli("runs", "list", *flags, "--json").stdout)["runs"][0]["id"] == "mtls-run"
        by_env = eve_cli("runs", "show", "mtls-run", "--address", eve.address, "--tls-ca", str(ca.path), "--json",
                         env={"EVE_TLS_CERT": str(operator.cert), "EVE_TLS_KEY": str(operator.key)})
        assert by_env.returncode == 0 and "mtls-run" in by_env.stdout, by_env.stderr
        # A certificate the client CA did not sign is refused; a missing or mismatched key is named.
        foreign = eve_cli("runs", "list", "--address", eve.address, "--tls-ca", str(ca.path),
                          "--tls-cert", str(stranger.cert), "--tls-key", str(stranger.key))
        assert foreign.returncode == 2 and "over TLS" in foreign.stderr
        alone = eve_cli("runs", "list", "--address", eve.address, "--tls-cert", str(operator.cert))
        assert alone.returncode == 2 and "--tls-key" in alone.stderr
        mismatched = eve_cli("runs", "list", "--address", eve.address, "--tls-cert", str(operator.cert),
                             "--tls-key", str(stranger.key))
        assert mismatched.returncode == 2 and "--tls-key" in mismatched.stderr

        ok = curl("--cacert", str(ca.path), "--cert", str(operator.cert), "--key", str(operator.key),
                  f"{eve.http_url}/api/v1/runs")
        assert ok.returncode == 0 and [r["id"] for r in json.loads(ok.stdout)["runs"]] == ["mtls-run"]
        assert curl("--cacert", str(ca.path), f"{eve.http_url}/api/v1/runs").returncode != 0
        assert curl("--cacert", str(ca.path), "--cert", str(stranger.cert), "--key", str(stranger.key),
                    f"{eve.http_url}/api/v1/runs").returncode != 0
    finally:
        eve.stop()


# -- flags and the exposure rules ---------------------------------------------------------------------


def test_exposure_rules_off_loopback():
    tls = TlsFiles(cert="server.pem", key="server.key")
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, ServerOptions(), field="listen")  # loopback: no token needed
    with pytest.raises(ConfigError, match="without a token"):
        check_exposure("10.1.2.3", ServerOptions(), field="listen")
    with pytest.raises(ConfigError, match="without a token"):
        check_exposure("0.0.0.0", ServerOptions(insecure=True, tls=tls), field="--http")
    with pytest.raises(ConfigError, match="without TLS") as info:
        check_exposure("0.0.0.0", ServerOptions(token="t"), field="--http")
    assert info.value.field == "--http" and "--insecure" in str(info.value)
    check_exposure("0.0.0.0", ServerOptions(token="t", tls=tls), field="listen")
    check_exposure("0.0.0.0", ServerOptions(token="t", insecure=True), field="listen")


def test_serve_refuses_bad_tls_flags_and_a_token_in_clear_naming_the_flag(tmp_path, pki):
    ca, other, server = pki
    state = str(tmp_path / "refused.db")
    cases = [
        (["--listen", "192.0.2.10:50051"], "listen: refusing to listen on 192.0.2.10 without TLS"),
        (["--http", "192.0.2.10:8080"], "--http: refusing to listen on 192.0.2.10 without TLS"),
        (["--tls-cert", str(server.cert)], "--tls-key: TLS needs both"),
        (["--tls-client-ca", str(ca.path)], "--tls-client-ca: a client CA needs"),
        (["--tls-cert", str(server.cert), "--tls-key", str(tmp_path / "missing.key")], "--tls-key: "),
        (["--tls-cert", str(server.cert), "--tls-key", str(other.issue("unrelated").key)],
         "--tls-key: " + f"{server.cert} and "),
    ]
    for args, message in cases:
        result = eve_cli("serve", "--state", state, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert TOKEN not in result.stderr
    assert not Path(state).exists(), "a refused start must not create the state file"
