"""A full disk under the state file (issue 19, item 4): calls that write state answer
RESOURCE_EXHAUSTED naming the file, nothing of them is written, and the coordinator
works again once there is space. The disk is a small tmpfs of the test's own
(mounting needs root: skipped where it is not allowed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
from eve_process import EveServer

from eve.core.errors import StorageFullError
from eve.core.store import Store
from eve.v1 import endpoints_pb2
from eve.v1 import workflows_pb2 as wpb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs, unmounted at teardown."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30, check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; the file to delete to give them back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    os.close(fd)
    return filler


def _endpoint(name: str) -> endpoints_pb2.CreateEndpointRequest:
    return endpoints_pb2.CreateEndpointRequest(endpoint=name, kind="redis", config=endpoints_pb2.EndpointConfig(
        target=endpoints_pb2.Connection(host="127.0.0.1", port=1),
        write_credentials=endpoints_pb2.Credentials(password="disk-full-secret")))


def test_store_on_a_full_disk_writes_nothing_and_recovers(small_disk) -> None:
    store = Store(small_disk / "eve.db")
    try:
        store.create_endpoint("before", "redis", {}, "")
        filler = _fill(small_disk)
        with pytest.raises(StorageFullError) as caught:
            for i in range(200):  # the first write that needs a new block fails
                store.create_endpoint(f"e{i}", "redis", {}, "x" * 1000)
        assert str(small_disk / "eve.db") in str(caught.value)
        assert caught.value.path == str(small_disk / "eve.db")
        written = [e.name for e in store.list_endpoints()]
        filler.unlink()
        store.create_endpoint("after", "redis", {}, "")
        # What failed is not there; what succeeded before it is, and the store works again.
        assert [e.name for e in store.list_endpoints()] == sorted([*written, "after"])
        assert f"e{len(written) - 1}" not in written
    finally:
        store.close()


def test_api_on_a_full_disk(small_disk, tmp_path) -> None:
    eve = EveServer(state=small_disk / "eve.db", log_path=tmp_path / "eve.log").start()
    try:
        endpoints = eve.endpoints()
        runs = eve.migrations()
        endpoints.CreateEndpoint(_endpoint("before"), metadata=eve.metadata())
        filler = _fill(small_disk)
        failed: list[tuple[str, grpc.RpcError]] = []
        for call in (lambda name: endpoints.CreateEndpoint(_endpoint(name), metadata=eve.metadata()),
                     lambda name: runs.CreateRun(wpb.CreateRunRequest(id=name, description="y" * 4000),
                                                 metadata=eve.metadata())):
            for i in range(100):  # the first write that needs a new block fails
                try:
                    call(f"full-{i}")
                except grpc.RpcError as exc:
                    failed.append((f"full-{i}", exc))
                    break
        assert len(failed) == 2
        for _, failure in failed:
            assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failure.details()
            assert f"the state file {small_disk / 'eve.db'} cannot be written: its disk is full" in failure.details()
            assert "disk-full-secret" not in failure.details()
        filler.unlink()
        # Space again: the coordinator works, and nothing of the failed calls was written.
        endpoints.CreateEndpoint(_endpoint("after"), metadata=eve.metadata())
        runs.CreateRun(wpb.CreateRunRequest(id="after"), metadata=eve.metadata())
        names = [e.endpoint for e in endpoints.ListEndpoints(endpoints_pb2.ListEndpointsRequest(),
                                                             metadata=eve.metadata()).endpoints]
        assert "before" in names and "after" in names and failed[0][0] not in names
        run_ids = [r.id for r in runs.ListRuns(wpb.ListRunsRequest(), metadata=eve.metadata()).runs]
        assert "after" in run_ids and failed[1][0] not in run_ids
        assert "disk-full-secret" not in eve.log()
    finally:
        eve.stop()
