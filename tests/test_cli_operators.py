"""What operators reach through the ``eve`` command (issue 24): a flag for every interlay
setting the API takes, with its default and unit in the help, reaching a real coordinator;
the pool size of an endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from eve_process import EveServer
from pki import TestCa
from servers import free_port

from eve.cli.endpoints import INTERLAY_FLAGS
from eve.cli.main import build_parser
from eve.v1 import interlays_pb2

pytestmark = [pytest.mark.timeout(120)]


def _create_parser():
    parser = build_parser()
    interlays = next(action for action in parser._subparsers._group_actions[0].choices.values()
                     if action.prog.endswith(" interlays"))
    return interlays._subparsers._group_actions[0].choices["create"]


def test_every_interlay_setting_has_a_flag_whose_help_states_its_default():
    fields = {field.name for field in interlays_pb2.InterlaySettings.DESCRIPTOR.fields}
    assert {name for name, _kind, _help in INTERLAY_FLAGS.values()} == fields
    create = _create_parser()
    options = {option: action for action in create._actions for option in action.option_strings}
    for flag, (name, _kind, _help) in INTERLAY_FLAGS.items():
        assert flag in options, f"no flag for settings.{name}"
        assert "default" in options[flag].help, f"{flag}'s help does not state its default"
    # Units: the limits in bytes, the times in seconds or milliseconds.
    assert options["--output-buffer-hard-limit"].metavar == "BYTES" and "MB" in options["--output-buffer-hard-limit"].help
    assert options["--stuck-connection-ms"].metavar == "MS"
    assert options["--output-buffer-soft-seconds"].metavar == "SECONDS"


@pytest.mark.integration
def test_every_interlay_flag_reaches_the_api(tmp_path):
    ca = TestCa(tmp_path, "interlay")
    server, clients = ca.issue("interlay-server"), TestCa(tmp_path, "clients")
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log").start()
    env = {**{k: v for k, v in os.environ.items() if k not in ("EVE_TOKEN", "EVE_TLS_CERT", "EVE_TLS_KEY")},
           "EVE_ADDRESS": eve.address}

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "eve", *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=60, check=False)
        return done

    try:
        created = cli("endpoints", "create", "src", "--file", "-", "--pool-size", "4",
                      stdin=json.dumps({"target": {"host": "127.0.0.1", "port": free_port()}}))
        assert created.returncode == 0, created.stderr
        endpoint = json.loads(cli("endpoints", "get", "src", "--json").stdout)
        assert endpoint["config"]["connection_pool"]["multiplexed_connections"] == 4
        port = free_port()
        values = {
            "--max-connections": "77", "--listen-host": "127.0.0.1",
            "--output-buffer-hard-limit": "1048576", "--output-buffer-soft-limit": "65536",
            "--output-buffer-soft-seconds": "2.5", "--stuck-connection-ms": "250",
            "--tls-cert-file": str(server.cert), "--tls-key-file": str(server.key),
            "--tls-ca-file": str(clients.path),
        }
        assert set(values) == set(INTERLAY_FLAGS)
        made = cli("interlays", "create", "app", "--endpoint", "src", "--port", str(port),
                   *[word for pair in values.items() for word in pair], "--json")
        assert made.returncode == 0, made.stderr
        settings = json.loads(cli("interlays", "get", "app", "--json").stdout)["settings"]
        assert settings == {
            "max_concurrent_connections": 77, "listen_host": "127.0.0.1",
            "output_buffer_hard_limit_bytes": 1048576, "output_buffer_soft_limit_bytes": 65536,
            "output_buffer_soft_seconds": 2.5, "stuck_connection_ms": 250,
            "tls_cert_file": str(server.cert), "tls_key_file": str(server.key), "tls_ca_file": str(clients.path),
        }
        # A flag not given leaves the coordinator's default; a bad value is named.
        plain = cli("interlays", "create", "plain", "--endpoint", "src", "--port", str(free_port()), "--json")
        assert plain.returncode == 0, plain.stderr
        assert "output_buffer_hard_limit_bytes" not in json.loads(plain.stdout)["settings"] or \
            json.loads(plain.stdout)["settings"]["output_buffer_hard_limit_bytes"] != 1048576
        bad = cli("interlays", "create", "bad", "--endpoint", "src", "--port", str(free_port()),
                  "--stuck-connection-ms", "-5")
        assert bad.returncode == 2 and "stuck_connection_ms" in bad.stderr
    finally:
        eve.stop()
