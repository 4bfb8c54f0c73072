"""The runbooks, every bash block as written, against a real coordinator and real engines:
docs/runbook.md and docs/runbook-online.md with the real grpcurl binary, docs/runbook-http.md
with curl against the HTTP listener (``eve serve --http``, with a token)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from eve_process import EveServer, grpcurl_binary
from keyspace import assert_same, fill, keys_of
from servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
DOCS = Path(__file__).resolve().parent.parent / "docs"
RUNBOOK = DOCS / "runbook.md"
ONLINE_RUNBOOK = DOCS / "runbook-online.md"
HTTP_RUNBOOK = DOCS / "runbook-http.md"
HTTP_TOKEN = "runbook-http-token"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def run_runbook(page: Path, min_blocks: int, tmp_path: Path, source, target, *, http: bool = False,
                **env: str) -> None:
    """Every bash block of ``page``, in order, against a fresh coordinator and these servers.
    ``http``: the coordinator also serves HTTP (with a token), as $EDEN and $AUTH_HEADER."""
    blocks = bash_blocks(page.read_text())
    assert len(blocks) >= min_blocks, f"{page.name} lost its commands"
    eve = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", token=HTTP_TOKEN if http else None,
                    extra_args=["--http", "127.0.0.1:0"] if http else ()).start()
    if http:
        env = {"EDEN": f"{eve.http_url}/api/v1", "AUTH_HEADER": f"Authorization: Bearer {HTTP_TOKEN}", **env}
    env = {**os.environ, "EVE": eve.address, "SOURCE_HOST": "127.0.0.1", "SOURCE_PORT": str(source.port),
           "TARGET_HOST": "127.0.0.1", "TARGET_PORT": str(target.port), "WORK": str(tmp_path / "work"),
           "PATH": f"{Path(grpcurl_binary()).parent}{os.pathsep}{os.environ['PATH']}", **env}
    transcript = []
    try:
        for number, block in enumerate(blocks, start=1):
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True,
                                    text=True, timeout=120)
            transcript.append(f"--- block {number} (exit {result.returncode})\n{block}\n{result.stdout}"
                              f"{result.stderr}")
            assert result.returncode == 0, "\n".join(transcript[-2:]) + "\n" + eve.log()[-3000:]
    finally:
        eve.stop()


def test_runbook_commands_as_written(tmp_path, server_factory):
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill(source.client(), 800)
    run_runbook(RUNBOOK, 10, tmp_path, source, target)
    assert_same(source.client(), target.client())


def test_online_runbook_commands_as_written(tmp_path, server_factory):
    source, target = server_factory("valkey-8.1"), server_factory("valkey-8.1")
    fill(source.client(), 500)
    run_runbook(ONLINE_RUNBOOK, 7, tmp_path, source, target, APP_PORT=str(free_port()))
    assert keys_of(target.client()) >= keys_of(source.client())
    assert_same(source.client(), target.client(), keys=keys_of(source.client()) - {b"app:visits"})


def test_http_runbook_commands_as_written(tmp_path, server_factory):
    """A whole live migration with the brief's curl commands against the HTTP listener."""
    source, target = server_factory("redis-7.0"), server_factory("valkey-9.1")
    fill(source.client(), 500)
    run_runbook(HTTP_RUNBOOK, 15, tmp_path, source, target, http=True, APP_PORT=str(free_port()))
    assert keys_of(target.client()) >= keys_of(source.client())
    assert_same(source.client(), target.client(), keys=keys_of(source.client()) - {b"app:visits"})
