"""The REST/JSON API (``eve serve --http``): the product brief's curl commands as written, the
routes declared once in the protos, the transcoding both ways, the status table, auth, and the
event stream as JSON Lines and server-sent events; against a real coordinator and real servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from eve_process import EveServer
from google.api import annotations_pb2

from eve.api.convert import reply_to_dict
from eve.api.http import API_PREFIX, HTTP_STATUS, build_app, http_routes
from eve.v1 import endpoints_pb2, interlays_pb2, workflows_pb2
from eve.v1 import workflows_pb2 as wpb

pytestmark = [pytest.mark.timeout(120)]

TOKEN = "http-test-token"
SERVICES = (endpoints_pb2.DESCRIPTOR.services_by_name["EndpointService"],
            interlays_pb2.DESCRIPTOR.services_by_name["InterlayService"],
            workflows_pb2.DESCRIPTOR.services_by_name["MigrationService"])

# The product brief's commands, copied as the brief writes them (Redis Endpoint page: "Create it",
# "Interlay Setup", "Start it"). The credentials shape is only a JSON block there; it is sent
# with the same curl line.
BRIEF_CREATE_ENDPOINT = """curl -sS -X POST "$EDEN/endpoints" \\
  -H "$AUTH_HEADER" \\
  -H "Content-Type: application/json" \\
  -d '{
    "endpoint": "redis-source",
    "kind": "redis",
    "config": {
      "read_conn": {
        "host": "redis-source.internal",
        "port": 6379,
        "tls": false,
        "protocol_version": 2
      },
      "write_conn": {
        "host": "redis-source.internal",
        "port": 6379,
        "tls": false,
        "protocol_version": 2
      },
      "connection_pool": {
        "multiplexed_connections": 1
      }
    },
    "description": "Current Redis source"
  }'
"""
BRIEF_CREDENTIALS_SHAPE = """{
  "endpoint": "redis-target",
  "kind": "redis",
  "config": {
    "target": {
      "host": "redis-target.internal",
      "port": 6380,
      "tls": true,
      "protocol_version": 2
    },
    "read_credentials": {
      "username": "reader",
      "password": "<read-password>"
    },
    "write_credentials": {
      "username": "writer",
      "password": "<write-password>"
    },
    "admin_credentials": {
      "username": "admin",
      "password": "<admin-password>"
    },
    "connection_pool": {
      "multiplexed_connections": 1
    }
  }
}"""
BRIEF_CREATE_INTERLAY = """curl -sS -X POST "$EDEN/interlays" \\
  -H "$AUTH_HEADER" \\
  -H "Content-Type: application/json" \\
  -d '{
    "id": "redis-live-interlay",
    "endpoint": "redis-source",
    "port": 6200,
    "settings": {
      "max_concurrent_connections": 512
    }
  }'
"""
BRIEF_START_INTERLAY = """curl -sS -X POST "$EDEN/interlays/redis-live-interlay/start" \\
  -H "$AUTH_HEADER"
"""


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def eve_http(tmp_path: Path):
    server = EveServer(state=tmp_path / "eve.db", log_path=tmp_path / "eve.log", token=TOKEN,
                       extra_args=["--http", "127.0.0.1:0"]).start()
    yield server
    server.stop()


def call(method: str, url: str, body: object = None, *, token: str | None = TOKEN,
         headers: dict[str, str] | None = None, raw: bytes | None = None, timeout: float = 30):
    """(status, headers, JSON body or bytes) of one request; error statuses are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, content = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, head, content = exc.code, exc.headers, exc.read()
    if head.get("Content-Type", "").startswith("application/json"):
        return status, head, json.loads(content)
    return status, head, content


def bash(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def endpoint_body(name: str, port: int) -> dict:
    return {"endpoint": name, "kind": "redis", "config": {"target": {"host": "127.0.0.1", "port": port}}}


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- the routes, declared once ----------------------------------------------------------------------


def test_every_rpc_declares_its_route_and_the_app_serves_it_under_both_prefixes():
    for service in SERVICES:
        for method in service.methods:
            assert method.GetOptions().HasExtension(annotations_pb2.http), f"{method.full_name} has no route"
    servicers = [(service, _Named()) for service in SERVICES]
    routes = http_routes(servicers)
    assert len(routes) == sum(len(s.methods) for s in SERVICES)
    table = {(r.verb, r.template): r.rpc for r in routes}
    # The brief's routes, verbatim.
    assert table[("POST", "/api/v1/endpoints")] == "eve.v1.EndpointService/CreateEndpoint"
    assert table[("POST", "/api/v1/endpoints/{endpoint}/read")] == "eve.v1.EndpointService/Read"
    assert table[("POST", "/api/v1/endpoints/{endpoint}/write")] == "eve.v1.EndpointService/Write"
    assert table[("POST", "/api/v1/interlays")] == "eve.v1.InterlayService/CreateInterlay"
    assert table[("POST", "/api/v1/interlays/{id}/start")] == "eve.v1.InterlayService/StartInterlay"
    for verb, path in [("GET", "/endpoints/{endpoint}"), ("PUT", "/endpoints/{endpoint}"),
                       ("DELETE", "/endpoints/{endpoint}"), ("POST", "/interlays/{id}/stop"),
                       ("GET", "/interlays/{id}"), ("POST", "/runs"), ("GET", "/runs/{run}"),
                       ("GET", "/runs/{run}/events"), ("GET", "/runs/{run}/metrics")]:
        assert (verb, API_PREFIX + path) in table
    for step in ("setup", "prepare", "approve", "traffic", "verify", "complete", "rollback", "cancel"):
        assert ("POST", f"{API_PREFIX}/runs/{{run}}/{step}") in table
    app = build_app(servicers)
    paths = {route.path for route in app.routes}
    for _, template in table:
        assert template in paths and template[len(API_PREFIX):] in paths


class _Named:
    """A stand-in servicer for the route table: any rpc name is an attribute."""

    def __getattr__(self, name: str):
        return lambda request, context: None


def test_the_status_table_follows_the_documented_mapping():
    wanted = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 409,
              "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
              "INTERNAL": 500}
    assert {code.name: HTTP_STATUS[code] for code in grpc.StatusCode if code.name in wanted} == wanted
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


# -- the brief's commands, as written ---------------------------------------------------------------


@pytest.mark.integration
def test_brief_curl_commands_as_written(eve_http):
    if not port_is_free(6200):
        pytest.skip("port 6200, the brief's interlay port, is taken on this machine")
    env = {"EDEN": eve_http.http_url, "AUTH_HEADER": f"Authorization: Bearer {TOKEN}"}
    created = bash(BRIEF_CREATE_ENDPOINT, **env)
    assert created.returncode == 0, created.stderr
    endpoint = json.loads(created.stdout)
    assert endpoint["endpoint"] == "redis-source" and endpoint["description"] == "Current Redis source"
    assert endpoint["config"]["read_conn"] == {
        "host": "redis-source.internal", "port": 6379, "tls": False, "protocol_version": 2, "username": "",
        "password": "", "tls_ca_file": "", "tls_insecure_skip_verify": False, "tls_server_name": ""}
    assert endpoint["config"]["connection_pool"] == {"multiplexed_connections": 1}

    credentials = bash(BRIEF_CREATE_ENDPOINT.split("-d '")[0] + f"-d '{BRIEF_CREDENTIALS_SHAPE}'\n", **env)
    assert credentials.returncode == 0, credentials.stderr
    target = json.loads(credentials.stdout)
    assert target["config"]["target"]["tls"] is True and target["config"]["target"]["port"] == 6380
    assert target["config"]["write_credentials"] == {"username": "writer", "password": "<redacted>"}
    assert "<read-password>" not in credentials.stdout and "<admin-password>" not in credentials.stdout

    interlay = bash(BRIEF_CREATE_INTERLAY, **env)
    assert interlay.returncode == 0, interlay.stderr
    created_interlay = json.loads(interlay.stdout)
    assert created_interlay["id"] == "redis-live-interlay" and created_interlay["port"] == 6200
    assert created_interlay["settings"]["max_concurrent_connections"] == 512
    assert created_interlay["state"] == "INTERLAY_STOPPED"

    started = bash(BRIEF_START_INTERLAY, **env)
    assert started.returncode == 0, started.stderr
    running = json.loads(started.stdout)
    assert running["state"] == "INTERLAY_RUNNING" and running["listener_ports"] == [6200]
    # Clients connect to redis://<eden-host>:6200/; the brief's hosts do not resolve here, so the
    # interlay answers with an error rather than hanging up.
    with socket.create_connection(("127.0.0.1", 6200), timeout=10) as client:
        client.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert client.recv(4096).startswith(b"-")

    # $EDEN may also be the API's /api/v1: the same routes, the brief's /api/v1/endpoints/... form.
    env["EDEN"] = eve_http.http_url + API_PREFIX
    again = bash(BRIEF_CREATE_ENDPOINT, **env)
    assert json.loads(again.stdout)["error"]["status"] == "ALREADY_EXISTS"
    listed = bash('curl -sS -H "$AUTH_HEADER" "$EDEN/interlays/redis-live-interlay"', **env)
    assert json.loads(listed.stdout)["state"] == "INTERLAY_RUNNING"
    stopped = bash('curl -sS -X POST -H "$AUTH_HEADER" "$EDEN/interlays/redis-live-interlay/stop"', **env)
    assert json.loads(stopped.stdout)["state"] == "INTERLAY_STOPPED"
    assert port_is_free(6200)


@pytest.mark.integration
def test_direct_read_and_write_through_api_v1(eve_http, server_factory):
    redis_server = server_factory("redis-7.0")
    base = eve_http.http_url + API_PREFIX
    assert call("POST", f"{base}/endpoints", endpoint_body("direct", redis_server.port))[0] == 200
    status, _, written = call("POST", f"{base}/endpoints/direct/write", {"command": ["SET", "greeting", "hello"]})
    assert status == 200 and written["reply"]["simple_string"] == "OK" and written["role"] == "write"
    status, _, read = call("POST", f"{base}/endpoints/direct/read", {"command": ["GET", "greeting"]})
    assert read["reply"]["text"] == "hello" and read["address"] == f"127.0.0.1:{redis_server.port}"
    status, _, counted = call("POST", f"{base}/endpoints/direct/write", {"command": ["INCRBY", "n", "5"]})
    assert counted["reply"]["integer"] == 5  # int64 as a JSON number
    status, _, refused = call("POST", f"{base}/endpoints/direct/read", {"command": ["DEL", "greeting"]})
    assert status == 400 and refused["error"]["status"] == "INVALID_ARGUMENT" and "write" in refused["error"]["message"]
    # A path that names another endpoint than the body is refused rather than guessed.
    status, _, conflict = call("POST", f"{base}/endpoints/direct/read", {"endpoint": "other", "command": ["PING"]})
    assert status == 400 and conflict["error"]["message"].startswith("endpoint:")
    # PUT replaces the config; GET shows it; DELETE removes the endpoint.
    body = endpoint_body("direct", redis_server.port) | {"description": "edited"}
    assert call("PUT", f"{base}/endpoints/direct", body)[2]["description"] == "edited"
    assert call("GET", f"{base}/endpoints/direct")[2]["description"] == "edited"
    status, _, deleted = call("DELETE", f"{base}/endpoints/direct")
    assert status == 200 and deleted == {}
    status, _, gone = call("GET", f"{base}/endpoints/direct")
    assert status == 404 and gone["error"] == {"code": 404, "status": "NOT_FOUND", "message": gone["error"]["message"]}


# -- requests, replies and errors ---------------------------------------------------------------------


@pytest.mark.integration
def test_errors_are_json_with_the_mapped_status(eve_http):
    base = eve_http.http_url + API_PREFIX
    status, head, body = call("GET", f"{base}/runs", token=None)
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED" and head["WWW-Authenticate"] == "Bearer"
    assert call("GET", f"{base}/runs", token="wrong")[0] == 401
    assert call("GET", f"{eve_http.http_url}/metrics", token=None)[0] == 401

    status, _, body = call("POST", f"{base}/endpoints", {"endpont": "typo"})
    assert status == 400 and "'endpont'" in body["error"]["message"]
    status, _, body = call("POST", f"{base}/endpoints", {"endpoint": "x", "config": {"target": {"hots": "h"}}})
    assert status == 400 and "'config.target.hots'" in body["error"]["message"]
    secret = "s3cret-never-echoed"
    status, _, body = call("POST", f"{base}/endpoints", {"endpoint": "x", "config": {"target": {
        "port": "not-a-port", "password": secret}}})
    assert status == 400 and "port" in body["error"]["message"] and secret not in json.dumps(body)
    status, _, body = call("POST", f"{base}/endpoints", raw=b"{not json")
    assert status == 400 and "not JSON" in body["error"]["message"]
    status, _, body = call("POST", f"{base}/endpoints", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]["message"]

    assert call("POST", f"{base}/runs", {"id": "err-1"})[0] == 200
    status, _, body = call("POST", f"{base}/runs", {"id": "err-1"})
    assert status == 409 and body["error"]["status"] == "ALREADY_EXISTS"
    status, _, body = call("POST", f"{base}/runs/err-1/approve", {"notes": "too early"})
    assert status == 409 and body["error"]["status"] == "FAILED_PRECONDITION"
    status, _, body = call("GET", f"{base}/runs/nope")
    assert (status, body["error"]["status"], body["error"]["code"]) == (404, "NOT_FOUND", 404)
    status, _, body = call("GET", f"{base}/runs/err-1/error-keys?page_size=1&bogus=2")
    assert status == 400 and body["error"]["message"].startswith("bogus:")
    status, _, body = call("GET", f"{base}/runs/err-1/error-keys?page_size=many")
    assert status == 400 and body["error"]["message"].startswith("page_size:")
    status, _, body = call("POST", f"{base}/runs/err-1/cancel?reason=x", {})
    assert status == 400 and "JSON body" in body["error"]["message"]
    status, head, body = call("DELETE", f"{base}/runs")
    assert status == 405 and set(head["Allow"].split(", ")) >= {"GET", "POST"}
    status, _, body = call("GET", f"{eve_http.http_url}/no/such/route")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


@pytest.mark.integration
def test_replies_show_zero_values_and_match_grpc(eve_http):
    base = eve_http.http_url + API_PREFIX
    call("POST", f"{base}/runs", {"id": "zeros", "description": "zero values"})
    status, _, metrics = call("GET", f"{base}/runs/zeros/metrics")
    assert status == 200
    # Every field, zero or not, and int64 as numbers: the JSON reads as the documentation does.
    assert metrics["keys_failed"] == 0 and metrics["dirty_backlog"] == 0 and metrics["authoritative"] == ""
    assert set(metrics) == {f.name for f in wpb.RunMetrics.DESCRIPTOR.fields}
    stub = eve_http.migrations()
    over_grpc = stub.GetRun(wpb.GetRunRequest(run="zeros"), metadata=eve_http.metadata())
    assert call("GET", f"{base}/runs/zeros")[2] == reply_to_dict(over_grpc)
    assert call("GET", f"{base}/runs")[2]["runs"][0]["id"] == "zeros"
    status, _, index = call("GET", base)
    assert status == 200 and {"method": "GET", "path": "/api/v1/runs/{run}", "rpc": "eve.v1.MigrationService/GetRun", "body": "",
            "stream": False} in index["routes"]


@pytest.mark.integration
def test_events_as_json_lines_and_server_sent_events_resume_after_a_seq(eve_http):
    base = eve_http.http_url + API_PREFIX
    call("POST", f"{base}/runs", {"id": "ev-1"})
    # A stream that follows: it is open before the run ends and sees the cancel arrive.
    lines: list[dict] = []

    def follow() -> None:
        request = urllib.request.Request(f"{base}/runs/ev-1/events?after_seq=0",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Type"] == "application/x-ndjson"
            for line in response:
                lines.append(json.loads(line))

    follower = threading.Thread(target=follow)
    follower.start()
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines and lines[0]["state"] == "CREATED"
    call("POST", f"{base}/runs/ev-1/cancel", {"reason": "no longer needed"})
    follower.join(timeout=20)
    assert not follower.is_alive(), "the stream did not end with the run"
    assert [event["seq"] for event in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["state"] == "CANCELLED" and lines[-1]["message"] == "no longer needed"

    status, _, resumed = call("GET", f"{base}/runs/ev-1/events?after_seq=1")
    assert [json.loads(line)["seq"] for line in resumed.splitlines()] == [e["seq"] for e in lines[1:]]

    # Server-sent events: the seq is the event id, and Last-Event-ID resumes after it.
    status, head, sse = call("GET", f"{base}/runs/ev-1/events",
                             headers={"Accept": "text/event-stream", "Last-Event-ID": "1"})
    assert status == 200 and head["Content-Type"].startswith("text/event-stream")
    blocks = [block for block in sse.decode().split("\n\n") if block]
    assert [block.splitlines()[0] for block in blocks] == [f"id: {e['seq']}" for e in lines[1:]]
    assert json.loads(blocks[-1].splitlines()[1][len("data: "):])["state"] == "CANCELLED"

    status, _, body = call("GET", f"{base}/runs/missing/events")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


@pytest.mark.integration
def test_a_direct_call_ends_when_its_http_client_goes(eve_http, server_factory):
    """As over gRPC: the caller's going away shuts the command's connection, so a BLPOP nobody
    waits for any more takes nothing later."""
    server = server_factory("redis-7.0")
    base = eve_http.http_url + API_PREFIX
    call("POST", f"{base}/endpoints", endpoint_body("blocking", server.port))
    with pytest.raises(TimeoutError):
        call("POST", f"{base}/endpoints/blocking/write", {"command": ["BLPOP", "jobs", "0"], "timeout_seconds": 60},
             timeout=1.5)
    client = server.client()
    deadline = time.monotonic() + 10
    while int(client.info("clients")["blocked_clients"]):
        assert time.monotonic() < deadline, "Eve's BLPOP is still blocked after its HTTP client left"
        time.sleep(0.05)
    client.rpush("jobs", "payload")
    assert client.lrange("jobs", 0, -1) == [b"payload"]
    status, _, body = call("POST", f"{base}/endpoints/blocking/write",
                           {"command": ["BLPOP", "other", "0"], "timeout_seconds": 0.5})
    assert status == 503 and body["error"]["status"] == "UNAVAILABLE" and "still blocked" in body["error"]["message"]


class _FollowingServicer:
    """A server stream that follows until its caller goes, like SubscribeEvents."""

    def __init__(self) -> None:
        self.ended = threading.Event()

    def SubscribeEvents(self, request, context):
        seq = request.after_seq
        try:
            while context.is_active():
                seq += 1
                yield wpb.Event(seq=seq, run=request.run, type="progress")
                time.sleep(0.05)
        finally:
            self.ended.set()

    def __getattr__(self, name: str):
        return lambda request, context: None


def test_a_stream_stops_following_when_its_client_goes(tmp_path):
    from eve.api.http import HttpServer

    servicer = _FollowingServicer()
    app = build_app([(SERVICES[2], servicer)])
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"GET /api/v1/runs/r/events?after_seq=41 HTTP/1.1\r\nHost: x\r\n"
                           b"Accept: text/event-stream\r\n\r\n")
            received = b""
            while b"id: 43" not in received:
                received += client.recv(4096)
            assert b"200 OK" in received and b"id: 42\ndata: " in received
        assert servicer.ended.wait(10), "the servicer kept following after the client left"
    finally:
        server.stop()


def test_serve_refuses_an_http_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "eve", "serve", "--listen", "127.0.0.1:0", "--http",
                                 f"127.0.0.1:{port}", "--state", str(tmp_path / "eve.db")],
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and f"--http: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "eve: listening on" not in result.stdout


@pytest.mark.integration
def test_a_body_past_the_limit_is_refused(eve_http, tmp_path):
    from eve.api.http import MAX_BODY_BYTES

    huge = tmp_path / "huge.json"
    huge.write_bytes(b'{"endpoint": "x", "description": "' + b"a" * MAX_BODY_BYTES + b'"}')
    # curl sends "Expect: 100-continue" with a large body, so the refusal arrives before the body is sent.
    result = bash('curl -sS -X POST "$EDEN/endpoints" -H "$AUTH_HEADER" -H "Content-Type: application/json" '
                  f'--data-binary @{huge} -w "\\n%{{http_code}}"', EDEN=eve_http.http_url,
                  AUTH_HEADER=f"Authorization: Bearer {TOKEN}")
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "413" and json.loads(body)["error"] == {
        "code": 413, "status": "RESOURCE_EXHAUSTED", "message": "the body is larger than 8 MiB"}
    assert call("GET", f"{eve_http.http_url}/endpoints/x")[0] == 404


@pytest.mark.integration
@pytest.mark.parametrize("depth", [65, 50_000], ids=["past-the-limit", "50000-deep"])
def test_a_body_nested_past_the_limit_is_a_400(eve_http, depth):
    """Issue 19: a 50,000-deep body was a plain-text 500 (a RecursionError in the log)."""
    from eve.api.http import MAX_JSON_DEPTH

    nested = b"[" * (depth - 1) + b"]" * (depth - 1)
    raw = b'{"endpoint": "deep", "kind": "redis", "config": {"target": {"host": "127.0.0.1", "port": 1}}, ' \
          b'"description": ' + nested + b"}"
    status, _, body = call("POST", f"{eve_http.http_url}/endpoints", raw=raw)
    assert status == 400 and body["error"] == {
        "code": 400, "status": "INVALID_ARGUMENT",
        "message": f"the body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels, the limit"}
    assert call("GET", f"{eve_http.http_url}/endpoints/deep")[0] == 404
