"""Interlays: the RESP proxy that application clients use instead of the source.

A proxy process (``main``, spawned by ``eve.live.interlays``) listens on
the interlay's port(s) and forwards every client's requests to the endpoint,
multiplexing stateless commands onto a few backend connections and pinning a
client to a connection of its own while it is in a stateful mode
(DESIGN.md section 5). ``ProxyOptions`` is everything a process is told;
``CommandTable`` reads the keys of a command from the backend's own key specs.

Modules, from the bottom up: ``options``, ``messages`` (supervisor <-> proxy),
``stats``, ``commands``, ``dirty`` (the keys a write changes), ``cluster``
(rewriting for cluster sources); ``parts`` (what the pieces of one process
share); ``backend`` (backend connections), ``routing`` (a live run's route
and dual writes), ``client`` (one application client); ``server`` (the
process, which ties them together). The RESP codec and framing live in
``eve.redis.resp`` and ``eve.redis.framing``.

``import proxy`` stays light: ``main`` and ``run_proxy`` load the asyncio
server (and uvloop) only when they are asked for.
"""

from __future__ import annotations

from typing import Any

from proxy.commands import CommandTable
from proxy.options import ProxyOptions

__all__ = ["CommandTable", "ProxyOptions", "main", "run_proxy"]


def __getattr__(name: str) -> Any:
    if name in ("main", "run_proxy"):
        from proxy import server

        return getattr(server, name)
    raise AttributeError(f"module 'proxy' has no attribute {name!r}")
