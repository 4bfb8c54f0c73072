"""Interlays through the coordinator's API: start, serve clients, stats, stop, restart with the coordinator."""

from __future__ import annotations

import socket
import time

import grpc
import pytest
import redis
from eve_process import EveServer
from servers import free_port

from eve.v1 import endpoints_pb2 as epb
from eve.v1 import interlays_pb2 as ipb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _setup(eve: EveServer, backend, port: int) -> None:
    eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
        endpoint="src", kind="redis",
        config=epb.EndpointConfig(target=epb.Connection(host="127.0.0.1", port=backend.port))))
    eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(
        id="live", endpoint="src", port=port, settings=ipb.InterlaySettings(max_concurrent_connections=50)))


def test_start_serve_stats_stop_and_restart(tmp_path, server_factory):
    backend = server_factory("valkey-9.1")
    port = free_port()
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    try:
        _setup(eve, backend, port)
        stub = eve.interlays()
        started = stub.StartInterlay(ipb.StartInterlayRequest(id="live"))
        assert started.state == ipb.INTERLAY_RUNNING and list(started.listener_ports) == [port]
        client = redis.Redis(port=port)
        for i in range(200):
            client.set(f"k{i}", i)
        assert client.get("k7") == b"7" and backend.client().get("k7") == b"7"
        deadline = time.monotonic() + 10
        while True:
            got = stub.GetInterlay(ipb.GetInterlayRequest(id="live"))
            if got.stats.backends and got.stats.backends[0].ops >= 200:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.3)
        assert got.stats.connections >= 1
        with pytest.raises(grpc.RpcError) as info:
            stub.StartInterlay(ipb.StartInterlayRequest(id="live"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as info:
            stub.DeleteInterlay(ipb.DeleteInterlayRequest(id="live"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "stop it" in info.value.details()
        client.close()
    finally:
        eve.stop()
    # The interlay was running: a restarted coordinator brings it back.
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve2.log").start()
    try:
        stub = eve.interlays()
        assert stub.GetInterlay(ipb.GetInterlayRequest(id="live")).state == ipb.INTERLAY_RUNNING
        assert redis.Redis(port=port).get("k9") == b"9"
        stopped = stub.StopInterlay(ipb.StopInterlayRequest(id="live"))
        assert stopped.state == ipb.INTERLAY_STOPPED
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_connect_timeout=1, retry_on_timeout=False,
                        retry=None).ping()
        stub.DeleteInterlay(ipb.DeleteInterlayRequest(id="live"))
    finally:
        eve.stop()


def test_port_in_use_is_a_clear_error(tmp_path, server_factory):
    backend = server_factory("redis-7.0")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
        try:
            _setup(eve, backend, port)
            with pytest.raises(grpc.RpcError) as info:
                eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="live"))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"port {port}" in info.value.details() and "in use" in info.value.details()
            got = eve.interlays().GetInterlay(ipb.GetInterlayRequest(id="live"))
            assert got.state == ipb.INTERLAY_FAILED and "in use" in got.last_error
        finally:
            eve.stop()
