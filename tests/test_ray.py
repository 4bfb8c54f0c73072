"""The bulk copy and Verify on a Ray cluster (issue 22): a local multi-node cluster on this
machine (``ray.cluster_utils.Cluster``), kept small: few CPUs per node, no dashboard, a
100 MB object store, no worker logs on the driver. Every test leaves no Ray process behind.

Only the first test runs in the fast step; a Ray cluster costs seconds to start, and the
fault and end-to-end tests are marked slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from eve_process import migrate, summary
from keyspace import assert_same, fill

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NODE = {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024}
HEAD = {**NODE, "include_dashboard": False}


def url(server, db: int | None = None) -> str:
    return f"redis://127.0.0.1:{server.port}" + (f"/{db}" if db is not None else "")


def start_ray(nodes: int) -> Cluster:
    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """Three Ray nodes on this machine, shared by the tests that do not change it."""
    cluster = start_ray(3)
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def own_ray_cluster():
    """Three Ray nodes a test may take apart."""
    clusters: list[Cluster] = []

    def start(nodes: int = 3) -> Cluster:
        clusters.append(start_ray(nodes))
        return clusters[-1]

    try:
        yield start
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for cluster in clusters:
            cluster.shutdown()


def test_standalone_to_three_master_cluster_on_ray(ray_cluster, server_factory, cluster_factory, tmp_path):
    source = server_factory("redis-7.0")
    target = cluster_factory("valkey-9.1", masters=3)
    fill(source.client(), 1200, binary=False)
    result = migrate("--source", url(source), "--target", target.url, "--ray", ray_cluster.address, "--json",
                     "--scan-count", "100", state=tmp_path / "s.db")
    assert result.returncode == 0, result.stderr
    report = summary(result)
    assert report["scanned"] == 1200 and report["restored"] == 1200 and report["error_keys"] == 0
    assert report["restarts"] == 0
    assert assert_same(source.client(), target.client()) == 1200
