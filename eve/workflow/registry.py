"""The coordinator's domain: endpoints, interlays and direct endpoint calls.

Everything here is plain Python, testable without gRPC: ``eve.api.server`` parses
requests into these calls and converts the results. Returned records carry the
stored config (passwords included); redaction happens wherever a record leaves
the process (``eve.api.convert``, logs).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from eve.core import endpoints as model
from eve.core.errors import ConfigError, EveError, StateError, UnavailableError
from eve.core.store import EndpointRecord, InterlayRecord, Store
from eve.live.interlays import PROXY_SETTINGS, InterlaySupervisor, proxy_settings
from eve.redis import resp
from eve.redis.connections import DEFAULT_TIMEOUT, RedisConnection
from eve.workflow.setup import guided_setup
from eve.workflow.states import EXECUTING, RunState

__all__ = ["Coordinator", "CommandResult", "DEFAULT_MAX_CONNECTIONS"]

log = logging.getLogger("eve.workflow.registry")

DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_LISTEN_HOST = "127.0.0.1"
MAX_COMMAND_TIMEOUT = 300.0

# Commands that change or take over the connection itself: they make no sense as
# one call on a connection that is closed right after (use the db field for SELECT).
_CONNECTION_STATE_COMMANDS = frozenset({
    "multi", "exec", "discard", "watch", "unwatch", "subscribe", "psubscribe", "ssubscribe",
    "unsubscribe", "punsubscribe", "sunsubscribe", "monitor", "select", "hello", "auth",
    "reset", "quit", "sync", "psync", "replconf",
})


# Read runs commands the server flags "readonly", plus these inspections, which
# carry no readonly flag (INFO, CONFIG GET ...) yet change nothing. CONFIG GET and
# CONFIG SET have identical flags, so the flags alone cannot admit one and not the other.
_READ_INSPECTIONS = frozenset({
    "ping", "echo", "info", "time", "lastsave", "dbsize", "role", "command", "config|get",
    "client|list", "client|info", "client|getname", "client|id", "slowlog|get", "slowlog|len",
    "latency|latest", "latency|history", "latency|doctor", "memory|stats", "memory|doctor",
    "memory|usage", "module|list", "acl|whoami", "acl|list", "acl|getuser", "acl|cat", "acl|users",
    "acl|dryrun", "acl|log", "cluster|info", "cluster|nodes", "cluster|slots", "cluster|shards",
    "cluster|myid", "cluster|keyslot", "cluster|countkeysinslot", "cluster|getkeysinslot",
    "function|list", "function|dump", "function|stats", "script|exists", "pubsub|channels",
    "pubsub|numsub", "pubsub|numpat", "pubsub|shardchannels", "pubsub|shardnumsub",
    "object|encoding", "object|freq", "object|idletime", "object|refcount",
})


# CONFIG GET parameters whose values are credentials: a direct call never returns them
# (Valkey spells masterauth primaryauth too). ACL LIST/GETUSER password hashes likewise.
SECRET_CONFIG_PARAMETERS = frozenset({
    b"requirepass", b"masterauth", b"primaryauth", b"tls-key-file-pass", b"tls-client-key-file-pass",
})
_REDACTED = resp.BulkString(model.REDACTED.encode())
_PASSWORD_HASH = re.compile(rb"#[0-9a-f]{64}")


@dataclass(frozen=True)
class CommandResult:
    reply: Any  # a typed eve.redis.resp value
    role: str
    address: str


class Coordinator:
    def __init__(self, store: Store, interlays: InterlaySupervisor | None = None) -> None:
        self.store = store
        self.interlays = interlays
        self._flags: dict[tuple[str, str, str], tuple[frozenset[str], str]] = {}
        self._flags_lock = threading.Lock()

    # -- endpoints ----------------------------------------------------------------

    def create_endpoint(self, name: str, kind: str, config: Mapping[str, Any], description: str = "") -> EndpointRecord:
        model.validate_name(name)
        kind = model.validate_kind(kind)
        model.parse_config(config)
        record = self.store.create_endpoint(name, kind, dict(config), description)
        log.info("endpoint created name=%s config=%s", name, model.redact_config(config))
        return record

    def get_endpoint(self, name: str) -> EndpointRecord:
        return self.store.get_endpoint(model.validate_name(name))

    def list_endpoints(self) -> list[EndpointRecord]:
        return self.store.list_endpoints()

    def update_endpoint(self, name: str, kind: str, config: Mapping[str, Any], description: str = "") -> EndpointRecord:
        old = self.get_endpoint(name)
        kind = model.validate_kind(kind)
        config = model.merge_redacted(config, old.config)
        model.parse_config(config)
        # A run from approval until it ends works from its snapshot of the endpoint: changing
        # the endpoint then would leave the record saying one thing and the run doing another.
        record = self.store.update_endpoint(name, kind, config, description,
                                            refuse_in_run_states={state.value for state in EXECUTING})
        self._forget_flags()
        log.info("endpoint updated name=%s config=%s", name, model.redact_config(config))
        return record

    def delete_endpoint(self, name: str) -> None:
        self.store.delete_endpoint(model.validate_name(name))
        log.info("endpoint deleted name=%s", name)

    def endpoint_config(self, name: str) -> model.EndpointConfig:
        return model.parse_config(self.get_endpoint(name).config)

    # -- direct calls -------------------------------------------------------------

    def read(self, name: str, command: Sequence[bytes | str], *, db: int = 0, timeout: float = 0.0,
             deadline: float | None = None, on_abandon: Callable[[Callable[[], None]], Any] | None = None
             ) -> CommandResult:
        return self._run(name, "read", command, db=db, timeout=timeout, deadline=deadline, on_abandon=on_abandon)

    def write(self, name: str, command: Sequence[bytes | str], *, db: int = 0, timeout: float = 0.0,
              deadline: float | None = None, on_abandon: Callable[[Callable[[], None]], Any] | None = None
              ) -> CommandResult:
        return self._run(name, "write", command, db=db, timeout=timeout, deadline=deadline, on_abandon=on_abandon)

    def _run(self, name: str, role: str, command: Sequence[bytes | str], *, db: int, timeout: float,
             deadline: float | None, on_abandon: Callable[[Callable[[], None]], Any] | None) -> CommandResult:
        """One command on the role's connection, bounded in time: by ``timeout`` (0: the
        default) and by the caller's ``deadline`` (seconds left, None when the caller set none).
        ``on_abandon(close)`` registers what to do when the caller goes away: the connection is
        closed then, so a blocking command (BLPOP, XREAD BLOCK, ...) that nobody waits for any
        more cannot pop an element or take an entry later."""
        if not command:
            raise ConfigError("the command is empty", field="command")
        if not 0 <= db <= 1_000_000:
            raise ConfigError(f"db {db} is out of range", field="db")
        if not math.isfinite(timeout) or timeout < 0:
            raise ConfigError(f"must be a number of seconds, 0 for the default ({DEFAULT_TIMEOUT:g}), got {timeout}",
                              field="timeout_seconds")
        bound = min(timeout or DEFAULT_TIMEOUT, MAX_COMMAND_TIMEOUT)
        if deadline is not None:
            if deadline <= 0:
                raise UnavailableError("the call's deadline passed before the command was sent")
            bound = min(bound, deadline)
        args = [a.encode() if isinstance(a, str) else bytes(a) for a in command]
        verb = args[0].decode("utf-8", "replace").lower()
        if verb in _CONNECTION_STATE_COMMANDS:
            hint = "; use the db field" if verb == "select" else ""
            raise ConfigError(f"{verb.upper()} changes the connection's state and cannot run as one call{hint}",
                              field="command")
        spec = self.endpoint_config(name).for_role(role)
        with RedisConnection(spec, timeout=bound, db=db, client_name=f"eve-{role}") as conn:
            if on_abandon is not None:
                on_abandon(conn.abort)
            flags, full_name = self._command_flags(conn, args)
            if role == "read":
                self._check_read_only(flags, full_name)
            try:
                reply = conn.call(*args)
            except UnavailableError as exc:
                if "blocking" not in flags:
                    raise
                raise UnavailableError(
                    f"{full_name.upper()} was still blocked after {bound:g}s (the call's timeout or deadline); its "
                    "connection was closed, so it takes nothing from the server later") from exc
        return CommandResult(reply=_redacted(full_name, reply), role=role, address=spec.address)

    @staticmethod
    def _check_read_only(flags: frozenset[str], name: str) -> None:
        shown = ", ".join(sorted(flags)) or "none"
        if "write" in flags:
            raise ConfigError(f"{name.upper()} is a write command (the server's COMMAND INFO flags: {shown}); "
                              "run it with Write", field="command")
        if flags and "readonly" not in flags and name not in _READ_INSPECTIONS \
                and name.split("|")[0] not in _READ_INSPECTIONS:
            raise ConfigError(f"{name.upper()} is not a read-only command (the server's COMMAND INFO flags: "
                              f"{shown}); run it with Write", field="command")

    def _command_flags(self, conn: RedisConnection, args: list[bytes]) -> tuple[frozenset[str], str]:
        """The command's flags as the server itself reports them (COMMAND INFO),
        including a container command's subcommand (``CONFIG|SET``)."""
        name = args[0].decode("utf-8", "replace").lower()
        sub = args[1].decode("utf-8", "replace").lower() if len(args) > 1 else ""
        key = (conn.spec.address, name, sub)
        with self._flags_lock:
            cached = self._flags.get(key)
        if cached is not None:
            return cached
        info = resp.to_python(conn.call("COMMAND", "INFO", name))
        flags: frozenset[str] = frozenset()
        full_name = name
        if isinstance(info, list) and info and isinstance(info[0], list):
            entry = info[0]
            flags = _flag_set(entry[2])
            subcommands = entry[9] if len(entry) > 9 and isinstance(entry[9], list) else []
            for subcommand in subcommands:
                if isinstance(subcommand, list) and subcommand and \
                        subcommand[0].lower() == f"{name}|{sub}".encode():
                    flags, full_name = _flag_set(subcommand[2]), f"{name}|{sub}"
        with self._flags_lock:
            self._flags[key] = (flags, full_name)
        return flags, full_name

    def _forget_flags(self) -> None:
        with self._flags_lock:
            self._flags.clear()

    # -- interlays ----------------------------------------------------------------

    def create_interlay(self, id: str, endpoint: str, port: int, settings: Mapping[str, Any]) -> InterlayRecord:
        model.validate_name(id, field="id")
        model.validate_name(endpoint, field="endpoint")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(f"port {port} is outside 1..65535", field="port")
        settings = _interlay_settings(settings)
        record = self.store.create_interlay(id, endpoint, port, settings)
        log.info("interlay created id=%s endpoint=%s port=%d", id, endpoint, port)
        return record

    def get_interlay(self, id: str) -> InterlayRecord:
        return self.store.get_interlay(model.validate_name(id, field="id"))

    def list_interlays(self) -> list[InterlayRecord]:
        return self.store.list_interlays()

    def delete_interlay(self, id: str) -> None:
        self._refuse_if_carrying_a_run(model.validate_name(id, field="id"), "deleted")
        self.store.delete_interlay(id)
        log.info("interlay deleted id=%s", id)

    def _refuse_if_carrying_a_run(self, id: str, doing: str) -> None:
        """An online run that has started tracking writes needs its interlay until it ends."""
        for run in self.store.list_runs():
            setup = guided_setup(run.setup)
            if setup is not None and setup.interlay == id and setup.online and RunState(run.state) in EXECUTING:
                raise StateError(f"interlay {id!r} carries the live traffic of run {run.id!r} ({run.state}); it "
                                 f"cannot be {doing} until the run is completed or rolled back")

    def _supervisor(self) -> InterlaySupervisor:
        if self.interlays is None:
            raise StateError("this coordinator runs no interlays")
        return self.interlays

    def start_interlay(self, id: str, route: Any = None) -> InterlayRecord:
        """``route``: the live run's route to serve under from the first client on (a restart);
        None: the supervisor asks the workflow for the route of the run carrying the interlay's
        traffic (``InterlaySupervisor.run_route``). An interlay that does not start is FAILED with
        the reason as its ``last_error``, whatever went wrong: never left STARTING (issue 19)."""
        record = self.get_interlay(id)
        supervisor = self._supervisor()
        if supervisor.running(id):
            raise StateError(f"interlay {id!r} is already running on port {record.port}")
        config = self.endpoint_config(record.endpoint)
        self.store.set_interlay_state(id, "STARTING")
        try:
            ports = supervisor.start(id, record.port, record.settings.get("listen_host", DEFAULT_LISTEN_HOST), config,
                                     record.settings.get("max_concurrent_connections", DEFAULT_MAX_CONNECTIONS),
                                     proxy_settings(record.settings), route=route)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, EveError) else f"{type(exc).__name__}: {exc}"
            try:
                self.store.set_interlay_state(id, "FAILED", reason or type(exc).__name__)
            except Exception:  # the state file refuses writes (a full disk): the next
                # coordinator start finds it STARTING and starts it again (or records FAILED then)
                log.exception("interlay %s: cannot record that it failed to start", id)
            raise
        log.info("interlay started id=%s ports=%s endpoint=%s", id, ports, record.endpoint)
        return self.store.set_interlay_state(id, "RUNNING")

    def stop_interlay(self, id: str, drain_seconds: float = 5.0) -> InterlayRecord:
        record = self.get_interlay(id)
        self._refuse_if_carrying_a_run(id, "stopped")
        if record.state in ("STOPPED",) and not self._supervisor().running(id):
            raise StateError(f"interlay {id!r} is not running")
        self.store.set_interlay_state(id, "STOPPING")
        self._supervisor().stop(id, drain_seconds=drain_seconds)
        log.info("interlay stopped id=%s", id)
        return self.store.set_interlay_state(id, "STOPPED")

    def interlay_status(self, id: str) -> tuple[Any, dict[str, Any] | None]:
        """The supervisor's view (ports, state) and live stats when it runs."""
        if self.interlays is None:
            return None, None
        status = self.interlays.status(id)
        stats = self.interlays.stats(id) if self.interlays.running(id) else None
        return status, stats

    def interlay_failed(self, id: str, state: str, reason: str) -> None:
        """The supervisor noticed a proxy process die on its own."""
        log.error("interlay %s %s: %s", id, state, reason)
        try:
            self.store.set_interlay_state(id, state, reason)
        except EveError:
            log.exception("cannot record the state of interlay %s", id)

    def restart_interlays(self, routes: Mapping[str, Any] | None = None) -> None:
        """After a coordinator restart: re-attach to the interlays that kept serving (issue 12;
        one stopped or deleted meanwhile is stopped), and start again every other one that was
        running, under ``routes[id]`` when a live run needs it (the target authoritative)."""
        records = self.store.list_interlays()
        wanted = {record.id for record in records if record.state in ("RUNNING", "STARTING")}
        recovered = set(self.interlays.recover(wanted)) if self.interlays is not None else set()
        for record in records:
            if record.id in recovered:
                self.store.set_interlay_state(record.id, "RUNNING")
                try:
                    # How to start one of its processes again should it die (issue 19).
                    self.interlays.adopt(record.id, record.port,
                                         record.settings.get("listen_host", DEFAULT_LISTEN_HOST),
                                         self.endpoint_config(record.endpoint),
                                         record.settings.get("max_concurrent_connections", DEFAULT_MAX_CONNECTIONS),
                                         proxy_settings(record.settings))
                except EveError as exc:
                    log.error("interlay %s: its processes cannot be restarted should they die: %s", record.id, exc)
            elif record.id in wanted:
                try:
                    self.start_interlay(record.id, (routes or {}).get(record.id))
                except Exception as exc:  # recorded FAILED with the reason; the others start
                    log.error("interlay %s could not be restarted: %s", record.id, exc)

    def shutdown_interlays(self) -> None:
        """Stop the proxy processes; the store keeps them RUNNING so the next start brings them back."""
        if self.interlays is not None:
            self.interlays.stop_all(drain_seconds=2.0)


def _flag_set(raw: Any) -> frozenset[str]:
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(f.decode("utf-8", "replace").lower() for f in raw if isinstance(f, bytes))


def _interlay_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - {"max_concurrent_connections", "listen_host"} - PROXY_SETTINGS
    if unknown:
        raise ConfigError("unknown field", field=f"settings.{sorted(unknown)[0]}")
    limit = settings.get("max_concurrent_connections", DEFAULT_MAX_CONNECTIONS)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1_000_000:
        raise ConfigError(f"must be between 1 and 1000000, got {limit!r}",
                          field="settings.max_concurrent_connections")
    host = settings.get("listen_host") or DEFAULT_LISTEN_HOST
    if not isinstance(host, str) or any(ch.isspace() or ch in "/@" for ch in host):
        raise ConfigError(f"{str(host)[:80]!r} is not a valid listen address", field="settings.listen_host")
    proxy_settings(settings)
    return {"max_concurrent_connections": limit, "listen_host": host,
            **{name: settings[name] for name in PROXY_SETTINGS if settings.get(name) not in (None, "")}}


def _redacted(command: str, reply: Any) -> Any:
    """The reply without credentials: CONFIG GET's secret parameters, ACL password hashes."""
    if command == "config|get":
        if isinstance(reply, resp.Map):
            return resp.Map([(name, _REDACTED if _secret_parameter(name) else value) for name, value in reply.items])
        if isinstance(reply, resp.Array):
            items = list(reply.items)
            for i in range(0, len(items) - 1, 2):
                if _secret_parameter(items[i]):
                    items[i + 1] = _REDACTED
            return resp.Array(items)
    if command in ("acl|list", "acl|getuser"):
        return _without_hashes(reply)
    return reply


def _secret_parameter(name: Any) -> bool:
    return isinstance(name, (resp.BulkString, resp.SimpleString)) and name.value.lower() in SECRET_CONFIG_PARAMETERS


def _without_hashes(reply: Any) -> Any:
    if isinstance(reply, (resp.BulkString, resp.SimpleString)):
        return type(reply)(_PASSWORD_HASH.sub(b"#<redacted>", reply.value))
    if isinstance(reply, (resp.Array, resp.Set)):
        return type(reply)([_without_hashes(item) for item in reply.items])
    if isinstance(reply, resp.Map):
        return resp.Map([(key, _without_hashes(value)) for key, value in reply.items])
    return reply
