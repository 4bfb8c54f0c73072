"""Helpers for tests that drive interlays (proxy processes) through ``InterlaySupervisor``:
free loopback ports, endpoint configs, an ``Interlay`` handle, socket reads with a deadline,
condition waits, and the dirty keys an interlay reported. The ``supervisor`` and ``interlay``
fixtures built on them live in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import free_port

from eve.core.endpoints import EndpointConfig, parse_config
from eve.live.backlog import DirtyKeys
from eve.live.interlays import InterlaySupervisor
from proxy.control import start_identity

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- helpers


def free_ports(count: int) -> int:
    """A base port such that base .. base+count-1 are all free."""
    for _ in range(200):
        base = free_port()
        ports = [base + i for i in range(count)]
        if all(_can_bind(port) for port in ports[1:]):
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def _can_bind(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def endpoint_for(host: str, port: int, *, password: str | None = None, username: str | None = None,
                 pool: int = 1, protocol: int = 2) -> EndpointConfig:
    target: dict = {"host": host, "port": port, "protocol_version": protocol}
    if password:
        target["password"] = password
    if username:
        target["username"] = username
    return parse_config({"target": target, "connection_pool": {"multiplexed_connections": pool}})


@dataclass
class Interlay:
    supervisor: InterlaySupervisor
    id: str
    host: str
    ports: list[int]

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def pids(self) -> tuple[int, ...]:
        return self.supervisor.status(self.id).pids

    def client(self, **kw: object) -> redis.Redis:
        # No retries: a test wants the first answer, as fast as it comes.
        options: dict = {"host": self.host, "port": self.port, "socket_timeout": 10,
                         "socket_connect_timeout": 5, "retry": Retry(NoBackoff(), 0)}
        options.update(kw)
        return redis.Redis(**options)

    def raw(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        return sock


def recv_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def recv_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def drain_dirty(supervisor: InterlaySupervisor, it: Interlay, keys: DirtyKeys,
                timeout: float = 10.0) -> set[tuple[int, bytes]]:
    """The keys the interlay reported dirty up to now (its barrier passed), taken out of ``keys``."""
    assert supervisor.dirty_barrier(it.id, timeout=timeout)
    items = keys.take(100_000)
    keys.done(items)
    return set(items)


def interlay_pids(control_dir: Path) -> dict[str, list[int]]:
    """Interlay id -> pids of its proxy processes that still run, from the control files a
    coordinator keeps in ``control_dir`` (``eve.live.interlays``)."""
    found: dict[str, list[int]] = {}
    for path in sorted(control_dir.glob("*.json")) if control_dir.is_dir() else []:
        record = json.loads(path.read_text())
        found[record["interlay"]] = [worker["pid"] for worker in record["workers"]
                                     if start_identity(worker["pid"]) == worker["start"]]
    return found


def reap_interlays(control_dir: Path) -> list[int]:
    """Kill the proxy processes a killed coordinator left serving: the safety net of tests that
    kill coordinators, so that no test leaves a process running."""
    pids = [pid for pids in interlay_pids(control_dir).values() for pid in pids]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(start_identity(pid) for pid in pids), what="the interlays to exit")
    return pids
