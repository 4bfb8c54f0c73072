"""What one proxy process is told: a frozen, picklable value.

The supervisor (``eve.live.interlays``) builds one ``ProxyOptions`` per
worker process of an interlay and hands it to the process it spawns; the
process reads nothing else (no globals, no protobuf, no environment).
"""

from __future__ import annotations

from dataclasses import dataclass

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import ConfigError
from eve.redis import resp

__all__ = [
    "ProxyOptions",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_OUTPUT_HARD_LIMIT",
    "DEFAULT_OUTPUT_SOFT_LIMIT",
    "DEFAULT_OUTPUT_SOFT_SECONDS",
    "DEFAULT_STATS_INTERVAL",
    "DEFAULT_STREAM_THRESHOLD",
    "DEFAULT_STUCK_AFTER",
    "TLS_SETTINGS",
]

DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_STATS_INTERVAL = 1.0
# Clean dedicated backend connections kept per node and protocol, so that the
# next MULTI or BLPOP does not pay for a TCP connect and a handshake.
DEFAULT_IDLE_CONNECTIONS = 16
# A request or reply frame larger than this is forwarded piece by piece as it
# arrives instead of being buffered whole (large values, DESIGN.md section 5).
DEFAULT_STREAM_THRESHOLD = 1 << 20
# Replies a client has not read yet, per client, like the server's
# ``client-output-buffer-limit normal <hard> <soft> <soft seconds>``: over the
# hard limit, or over the soft one for the soft seconds, the client is
# disconnected and its buffer freed. The server's own default for normal
# clients is no limit at all, which in front of production lets one client
# that stops reading take the interlay's memory (issue 12); these bound it
# while leaving room for a client reading a large value at its own pace.
DEFAULT_OUTPUT_HARD_LIMIT = 256 << 20
DEFAULT_OUTPUT_SOFT_LIMIT = 64 << 20
DEFAULT_OUTPUT_SOFT_SECONDS = 60.0
# A shared backend connection whose oldest request has waited this long (a
# busy script, DEBUG SLEEP, a paused client's write) takes no new commands:
# they go to a fresh connection, where the server answers them as it answers
# any other client meanwhile (BUSY during a script past busy-reply-threshold).
DEFAULT_STUCK_AFTER = 0.1
# The interlay settings the TLS files come from, as errors name them.
TLS_SETTINGS = ("settings.tls_cert_file", "settings.tls_key_file", "settings.tls_ca_file")


@dataclass(frozen=True)
class ProxyOptions:
    """One proxy worker process of an interlay.

    ``nodes[i]`` is the backend behind ``ports[i]``: one node for a standalone
    source, one per master for a cluster (DESIGN.md section 5). With
    ``workers`` > 1, that many processes listen on the same ports
    (``SO_REUSEPORT``) and the kernel spreads the clients; ``max_connections``
    is then enforced across them through a counter the supervisor shares.
    """

    interlay_id: str
    listen_host: str
    ports: tuple[int, ...]
    nodes: tuple[ConnectionSpec, ...]
    cluster: bool = False
    pool_size: int = 1                        # multiplexed backend connections per node and RESP version
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    worker: int = 0                           # this process's index, 0 .. workers-1
    workers: int = 1
    idle_connections: int = DEFAULT_IDLE_CONNECTIONS
    max_bulk: int = resp.DEFAULT_MAX_BULK     # a longer bulk string in a request is a protocol error
    max_args: int = resp.DEFAULT_MAX_ARGS     # more arguments in a request is a protocol error
    stream_threshold: int = DEFAULT_STREAM_THRESHOLD
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    output_hard_limit: int = DEFAULT_OUTPUT_HARD_LIMIT    # bytes; 0: none
    output_soft_limit: int = DEFAULT_OUTPUT_SOFT_LIMIT    # bytes; 0: none
    output_soft_seconds: float = DEFAULT_OUTPUT_SOFT_SECONDS
    stuck_after: float = DEFAULT_STUCK_AFTER
    tls_cert_file: str = ""                   # set (with the key): clients connect with TLS
    tls_key_file: str = ""
    tls_ca_file: str = ""                     # set: clients must present a certificate it signed
    stats_interval: float = DEFAULT_STATS_INTERVAL
    backend_label: str = "source"             # names the backend in stats (BackendStats.backend)
    log_level: int = 20                       # logging.INFO

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(int(p) for p in self.ports))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if not self.interlay_id:
            raise ConfigError("an interlay id is required", field="interlay_id")
        if not self.nodes:
            raise ConfigError("at least one backend node is required", field="nodes")
        for node in self.nodes:
            if not isinstance(node, ConnectionSpec):
                raise ConfigError(f"must be a ConnectionSpec, got {type(node).__name__}", field="nodes")
        if len(self.ports) != len(self.nodes):
            raise ConfigError(f"{len(self.ports)} ports for {len(self.nodes)} backend nodes", field="ports")
        for port in self.ports:
            if not 1 <= port <= 65535:
                raise ConfigError(f"port {port} is outside 1..65535", field="ports")
        for name in ("pool_size", "max_connections", "workers", "max_bulk", "max_args", "stream_threshold"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", field=name)
        if not 0 <= self.worker < self.workers:
            raise ConfigError(f"worker {self.worker} is outside 0..{self.workers - 1}", field="worker")
        for name in ("idle_connections", "output_hard_limit", "output_soft_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be 0 or more, got {getattr(self, name)}", field=name)
        for name in ("connect_timeout", "stats_interval", "output_soft_seconds", "stuck_after"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be more than 0, got {getattr(self, name)}", field=name)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("TLS for clients needs both a certificate and its key",
                              field="tls_key_file" if self.tls_cert_file else "tls_cert_file")
        if self.tls_ca_file and not self.tls_cert_file:
            raise ConfigError("a client CA needs the interlay's own certificate and key", field="tls_cert_file")

    @property
    def tls(self) -> bool:
        """Whether clients connect with TLS."""
        return bool(self.tls_cert_file)

    @property
    def name(self) -> str:
        """Names the process in logs: ``interlay=cache worker=0``."""
        return f"interlay={self.interlay_id} worker={self.worker}"
