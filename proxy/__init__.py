"""Interlays: the RESP proxy that application clients use instead of the source.

A proxy process (``main``, spawned by ``eve.live.interlays``) listens on
the interlay's port(s) and forwards every client's requests to the endpoint,
multiplexing stateless commands onto a few backend connections and pinning a
client to a connection of its own while it is in a stateful mode
(DESIGN.md section 5). ``ProxyOptions`` is everything a process is told;
``CommandTable`` reads the keys of a command from the backend's own key specs.

Modules: ``resp`` (the RESP codec), ``framing`` (request and reply
boundaries), ``commands``, ``client`` (routing), ``backend`` (backend
connections), ``cluster`` (rewriting for cluster sources), ``server`` (the
process), ``messages`` (supervisor <-> proxy), ``stats``, ``options``.
"""

from proxy.commands import CommandTable
from proxy.options import ProxyOptions
from proxy.server import main, run_proxy

__all__ = ["CommandTable", "ProxyOptions", "main", "run_proxy"]
