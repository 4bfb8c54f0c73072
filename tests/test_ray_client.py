"""``--ray ray://HOST:PORT`` (issue 22): the coordinator outside the Ray cluster, through Ray
Client, on a cluster of its own (test_ray.py keeps one for its whole module)."""

from __future__ import annotations

import socket

import pytest
from eve_process import migrate, summary
from keyspace import assert_same, fill

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 - after importorskip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NODE = {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024}
HEAD = {**NODE, "include_dashboard": False}


def url(server) -> str:
    return f"redis://127.0.0.1:{server.port}"


@pytest.mark.slow
def test_a_copy_through_ray_client(server_factory, tmp_path, monkeypatch):
    """``--ray ray://HOST:PORT``: the coordinator outside the cluster, through Ray Client."""
    # A cluster started earlier in this process left its address in the environment, which
    # the Ray Client server (started from here) would hand to its sessions.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={**HEAD, "ray_client_server_port": port})
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
        fill(source.client(), 1000, binary=False)
        result = migrate("--source", url(source), "--target", url(target), "--ray", f"ray://127.0.0.1:{port}",
                         "--json", "--restorers", "1", state=tmp_path / "s.db")
        assert result.returncode == 0, result.stderr
        assert summary(result)["restored"] == 1000
        assert assert_same(source.client(), target.client()) == 1000
    finally:
        cluster.shutdown()
