"""Credentials sealed at rest (issue 19, item 5): with a key (``eve serve --key-file`` or
``EVE_STATE_KEY``) no password is in the state file's bytes, the coordinator still reaches
the endpoints with them after a restart, a clear-text file is sealed once a key is given,
a wrong or missing key is a clear error, and ``eve state rotate-key`` changes the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from eve_process import EveServer

from eve.core.errors import ConfigError, StateError
from eve.core.secrets import KEY_ENV, StateKey, write_new_key
from eve.core.store import Store
from eve.v1 import endpoints_pb2 as pb

pytestmark = [pytest.mark.timeout(120)]

PASSWORD = "sealed-s3cret-pass"


def _state_bytes(state: Path) -> bytes:
    """Every byte of the state file and its WAL/shared-memory files."""
    return b"".join(path.read_bytes() for path in state.parent.glob(state.name + "*") if path.is_file())


def _key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    write_new_key(path)
    return path


def _create(eve: EveServer, name: str, port: int) -> None:
    eve.endpoints().CreateEndpoint(pb.CreateEndpointRequest(endpoint=name, kind="redis", config=pb.EndpointConfig(
        target=pb.Connection(host="127.0.0.1", port=port, password=PASSWORD))), timeout=15)


def _ping(eve: EveServer, name: str) -> str:
    return eve.endpoints().Read(pb.CommandRequest(endpoint=name, command=["PING"]), timeout=15).reply.simple_string


def _serve(tmp_path: Path, state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``eve serve`` expected to stop at startup: its exit code and stderr."""
    return subprocess.run([sys.executable, "-m", "eve", "serve", "--listen", "127.0.0.1:0", "--state", str(state),
                           *args], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


@pytest.mark.integration
def test_sealed_state_file(tmp_path, server_factory) -> None:
    server = server_factory("redis-7.0", password=PASSWORD)
    state = tmp_path / "eve.db"
    key = _key(tmp_path, "state.key")
    # First without a key: a warning at startup, the password in clear.
    eve = EveServer(state=state, log_path=tmp_path / "clear.log").start()
    try:
        _create(eve, "before", server.port)
    finally:
        eve.stop()
    assert "endpoint passwords are stored in clear" in (tmp_path / "clear.log").read_text()
    assert PASSWORD.encode() in _state_bytes(state)
    # With the key: the clear-text file is sealed at startup; new endpoints are sealed too.
    eve = EveServer(state=state, log_path=tmp_path / "sealed.log", extra_args=["--key-file", str(key)]).start()
    try:
        _create(eve, "after", server.port)
        assert _ping(eve, "before") == "PONG" and _ping(eve, "after") == "PONG"
    finally:
        eve.stop()
    assert "stored in clear" not in (tmp_path / "sealed.log").read_text()
    assert PASSWORD.encode() not in _state_bytes(state)
    # A restart with the key (from the environment this time) opens them again.
    key_text = key.read_text().strip()
    eve = EveServer(state=state, log_path=tmp_path / "env.log")
    os.environ[KEY_ENV] = key_text
    try:
        eve.start()
        assert _ping(eve, "before") == "PONG" and _ping(eve, "after") == "PONG"
    finally:
        del os.environ[KEY_ENV]
        eve.stop()
    assert key_text not in (tmp_path / "env.log").read_text()
    # No key, or a wrong one: a clear error at startup, nothing served.
    refused = _serve(tmp_path, state)
    assert refused.returncode == 5, refused.stderr
    assert f"the state file {state} holds sealed credentials: give its key (--key-file or {KEY_ENV})" \
        in refused.stderr
    wrong = _key(tmp_path, "wrong.key")
    refused = _serve(tmp_path, state, "--key-file", str(wrong))
    assert refused.returncode == 2, refused.stderr
    assert f"the key file {wrong} does not open the credentials in the state file {state}: a wrong key" \
        in refused.stderr
    not_a_key = tmp_path / "not-a.key"
    not_a_key.write_text("password123\n")
    refused = _serve(tmp_path, state, "--key-file", str(not_a_key))
    assert refused.returncode == 2 and f"the key file {not_a_key} does not hold a state key" in refused.stderr
    assert "password123" not in refused.stderr


def test_rotate_key(tmp_path) -> None:
    state = tmp_path / "eve.db"
    old, new = _key(tmp_path, "old.key"), _key(tmp_path, "new.key")
    store = Store(state, StateKey.from_file(old))
    store.create_endpoint("e", "redis", {"target": {"host": "h", "port": 1, "password": PASSWORD}}, "")
    store.snapshot_run_endpoints("none")
    store.close()
    result = subprocess.run([sys.executable, "-m", "eve", "state", "rotate-key", "--state", str(state),
                             "--old-key-file", str(old), "--new-key-file", str(new)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "1 stored configs sealed with the key file" in result.stdout
    assert PASSWORD.encode() not in _state_bytes(state)
    with pytest.raises(ConfigError, match="a wrong key"):
        Store(state, StateKey.from_file(old))
    store = Store(state, StateKey.from_file(new))
    assert store.get_endpoint("e").config["target"]["password"] == PASSWORD
    store.close()
    with pytest.raises(StateError, match="holds sealed credentials"):
        Store(state)
    # A wrong old key changes nothing.
    result = subprocess.run([sys.executable, "-m", "eve", "state", "rotate-key", "--state", str(state),
                             "--old-key-file", str(old), "--new-key-file", str(old)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "a wrong key" in result.stderr
    store = Store(state, StateKey.from_file(new))
    assert store.get_endpoint("e").config["target"]["password"] == PASSWORD
    store.close()


def test_new_key_never_overwrites(tmp_path) -> None:
    key = tmp_path / "k"
    result = subprocess.run([sys.executable, "-m", "eve", "state", "new-key", str(key)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and key.stat().st_mode & 0o777 == 0o600
    StateKey.from_file(key)
    before = key.read_bytes()
    result = subprocess.run([sys.executable, "-m", "eve", "state", "new-key", str(key)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "never overwritten" in result.stderr
    assert key.read_bytes() == before


def test_sealed_values_are_not_readable_without_the_key(tmp_path) -> None:
    key = StateKey.from_file(_key(tmp_path, "k"))
    sealed = key.seal(PASSWORD)
    assert PASSWORD not in sealed and key.open(sealed, "here") == PASSWORD
    assert sealed != key.seal(PASSWORD)  # a random IV per value
    with pytest.raises(ConfigError, match="a wrong key"):
        StateKey.from_file(_key(tmp_path, "other")).open(sealed, "here")
