"""The coordinator's gRPC surface through a real `eve serve` process: reflection,
health, the brief's JSON bodies sent verbatim with grpcurl, validation codes,
persistence across restarts, authentication and redaction."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from eve_process import EveServer

from eve.v1 import endpoints_pb2, workflows_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
DATA = Path(__file__).parent / "data"
SECRETS = ("<read-password>", "<write-password>", "<admin-password>")


def grpcurl_json(eve: EveServer, method: str, body: dict | str, **kw) -> dict:
    data = body if isinstance(body, str) else json.dumps(body)
    result = eve.grpcurl(f"eve.v1.{method}", data=data, **kw)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "{}")


def grpcurl_error(eve: EveServer, method: str, body: dict, **kw) -> str:
    result = eve.grpcurl(f"eve.v1.{method}", data=json.dumps(body), **kw)
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_list_shows_services_health_and_reflection(eve):
    result = eve.grpcurl("list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"eve.v1.EndpointService", "eve.v1.InterlayService", "eve.v1.MigrationService",
            "grpc.health.v1.Health"} <= services
    assert any(s.startswith("grpc.reflection.") for s in services)
    health = eve.grpcurl("grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    described = eve.grpcurl("describe", "eve.v1.MigrationService")
    for rpc in ("CreateRun", "SubmitSetup", "SubscribeEvents", "ExportErrorKeys", "Rollback", "Cancel"):
        assert rpc in described.stdout


def test_brief_bodies_verbatim(eve):
    source = grpcurl_json(eve, "EndpointService/CreateEndpoint", (DATA / "brief_source_endpoint.json").read_text())
    assert source["endpoint"] == "redis-source"
    assert source["config"]["read_conn"]["host"] == "redis-source.internal"
    assert source["description"] == "Current Redis source"
    target_text = (DATA / "brief_target_endpoint.json").read_text()
    target = grpcurl_json(eve, "EndpointService/CreateEndpoint", target_text)
    assert target["config"]["target"]["port"] == 6380
    assert target["config"]["read_credentials"] == {"username": "reader", "password": "<redacted>"}
    interlay = grpcurl_json(eve, "InterlayService/CreateInterlay", (DATA / "brief_interlay.json").read_text())
    assert interlay["id"] == "redis-live-interlay" and interlay["port"] == 6200
    assert interlay["settings"]["maxConcurrentConnections" if "maxConcurrentConnections" in interlay["settings"]
                                else "max_concurrent_connections"] == 512
    assert interlay["state"] == "INTERLAY_STOPPED"
    listed = grpcurl_json(eve, "EndpointService/ListEndpoints", {})
    assert [e["endpoint"] for e in listed["endpoints"]] == ["redis-source", "redis-target"]
    text = json.dumps(listed)
    assert not any(secret in text for secret in SECRETS)
    assert not any(secret in eve.log() for secret in SECRETS), "passwords must never reach the log"


@pytest.mark.parametrize(
    "body, code, needle",
    [
        ({"endpoint": "x", "kind": "memcached", "config": {"target": {"host": "h"}}}, "InvalidArgument", "kind"),
        ({"endpoint": "x", "kind": "redis", "config": {"target": {"port": 6379}}}, "InvalidArgument",
         "config.target.host"),
        ({"endpoint": "x", "kind": "redis", "config": {"target": {"host": "h", "port": 0}}}, "InvalidArgument",
         "config.target.port"),
        ({"endpoint": "x", "kind": "redis", "config": {"target": {"host": "h", "port": 70000}}}, "InvalidArgument",
         "config.target.port"),
        ({"endpoint": "x", "kind": "redis", "config": {"target": {"host": "h", "protocol_version": 4}}},
         "InvalidArgument", "protocol_version"),
        ({"endpoint": "x", "kind": "redis", "config": {"target": {"host": "h"}, "read_conn": {"host": "h"}}},
         "InvalidArgument", "config.target"),
        ({"endpoint": "x", "kind": "redis",
          "config": {"target": {"host": "h"}, "connection_pool": {"multiplexed_connections": 0}}},
         "InvalidArgument", "multiplexed_connections"),
        ({"endpoint": "", "kind": "redis", "config": {"target": {"host": "h"}}}, "InvalidArgument", "endpoint"),
    ],
    ids=["unknown-kind", "missing-host", "port-0", "port-70000", "protocol-4", "mixed-shapes", "pool-0",
         "no-name"],
)
def test_invalid_endpoints(eve, body, code, needle):
    stderr = grpcurl_error(eve, "EndpointService/CreateEndpoint", body)
    assert f"Code: {code}" in stderr and needle in stderr


def test_duplicate_and_in_use(eve):
    body = json.loads((DATA / "brief_source_endpoint.json").read_text())
    grpcurl_json(eve, "EndpointService/CreateEndpoint", body)
    assert "Code: AlreadyExists" in grpcurl_error(eve, "EndpointService/CreateEndpoint", body)
    grpcurl_json(eve, "InterlayService/CreateInterlay", (DATA / "brief_interlay.json").read_text())
    stderr = grpcurl_error(eve, "EndpointService/DeleteEndpoint", {"endpoint": "redis-source"})
    assert "Code: FailedPrecondition" in stderr and "redis-live-interlay" in stderr
    assert "Code: NotFound" in grpcurl_error(eve, "EndpointService/GetEndpoint", {"endpoint": "nope"})
    bad_interlay = {"id": "i2", "endpoint": "redis-source", "port": 0}
    assert "Code: InvalidArgument" in grpcurl_error(eve, "InterlayService/CreateInterlay", bad_interlay)
    grpcurl_json(eve, "InterlayService/DeleteInterlay", {"id": "redis-live-interlay"})
    grpcurl_json(eve, "EndpointService/DeleteEndpoint", {"endpoint": "redis-source"})
    assert grpcurl_json(eve, "EndpointService/ListEndpoints", {}) == {}


def test_set_traffic_needs_a_live_run(eve):
    grpcurl_json(eve, "MigrationService/CreateRun", {"id": "r1"})
    stderr = grpcurl_error(eve, "MigrationService/SetTraffic", {"run": "r1", "read_percent_target": 10})
    assert "Code: FailedPrecondition" in stderr and "OFFLINE" in stderr


def test_update_keeps_redacted_passwords(eve, tmp_path):
    stub = eve.endpoints()
    created = stub.CreateEndpoint(endpoints_pb2.CreateEndpointRequest(
        endpoint="t", kind="redis", config=endpoints_pb2.EndpointConfig(
            target=endpoints_pb2.Connection(host="h", port=1234),
            write_credentials=endpoints_pb2.Credentials(username="w", password="s3cret-w"))))
    assert created.config.write_credentials.password == "<redacted>"
    # Send back what Get returned, with another description: the password stays.
    got = stub.GetEndpoint(endpoints_pb2.GetEndpointRequest(endpoint="t"))
    updated = stub.UpdateEndpoint(endpoints_pb2.UpdateEndpointRequest(
        endpoint="t", kind="redis", config=got.config, description="renamed"))
    assert updated.description == "renamed"
    eve.stop()
    import sqlite3
    with sqlite3.connect(eve.state) as db:
        (config,) = db.execute("SELECT config FROM endpoints WHERE name = 't'").fetchone()
    assert json.loads(config)["write_credentials"]["password"] == "s3cret-w"
    assert "s3cret-w" not in eve.log()


def test_state_survives_restart(tmp_path):
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    try:
        grpcurl_json(server, "EndpointService/CreateEndpoint", (DATA / "brief_target_endpoint.json").read_text())
        grpcurl_json(server, "EndpointService/CreateEndpoint", (DATA / "brief_source_endpoint.json").read_text())
        grpcurl_json(server, "InterlayService/CreateInterlay", (DATA / "brief_interlay.json").read_text())
    finally:
        server.stop()
    assert server.process.returncode == 0, "SIGTERM must shut down cleanly"
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    try:
        endpoints = grpcurl_json(server, "EndpointService/ListEndpoints", {})["endpoints"]
        assert [e["endpoint"] for e in endpoints] == ["redis-source", "redis-target"]
        assert grpcurl_json(server, "InterlayService/GetInterlay", {"id": "redis-live-interlay"})["port"] == 6200
    finally:
        server.stop()


def test_auth_on(tmp_path):
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", token="t0ken-abc").start()
    try:
        denied = server.grpcurl("eve.v1.EndpointService/ListEndpoints", data="{}")
        assert "Unauthenticated" in denied.stderr and "Bearer <token>" in denied.stderr
        wrong = server.grpcurl("eve.v1.EndpointService/ListEndpoints", data="{}",
                               headers=["authorization: Bearer nope"])
        assert "Unauthenticated" in wrong.stderr
        assert server.grpcurl("list").returncode != 0, "reflection needs the token too"
        ok = server.grpcurl("eve.v1.EndpointService/ListEndpoints", data="{}",
                            headers=["authorization: Bearer t0ken-abc"])
        assert ok.returncode == 0, ok.stderr
        stub = server.endpoints()
        with pytest.raises(grpc.RpcError) as info:
            stub.ListEndpoints(endpoints_pb2.ListEndpointsRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.ListEndpoints(endpoints_pb2.ListEndpointsRequest(), metadata=server.metadata())
        # Streaming calls are guarded as well.
        stream = server.migrations().ExportErrorKeys(workflows_pb2.ExportErrorKeysRequest(run="r"))
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "t0ken-abc" not in server.log()
    finally:
        server.stop()


def test_auth_off_refuses_non_loopback(tmp_path):
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", listen="0.0.0.0:0")
    with pytest.raises(RuntimeError, match="without a token"):
        server.start()
    assert server.process.returncode == 2


def test_port_in_use_is_a_clear_error(eve, tmp_path):
    second = EveServer(state=tmp_path / "other.db", log_path=tmp_path / "other.log", listen=eve.address)
    with pytest.raises(RuntimeError, match="cannot listen"):
        second.start()
    assert second.process.returncode == 2
