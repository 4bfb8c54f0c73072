"""Helpers for worker processes started by the coordinator."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

__all__ = ["die_with_parent", "ignore_interrupts", "outlive_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies.

    A coordinator killed with SIGKILL runs no cleanup; without this its workers
    would live on, blocked on queues nobody reads. Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect.
    if os.getppid() == 1:
        os._exit(1)


def outlive_parent() -> None:
    """Leave the coordinator's session, for a worker meant to outlive it (an interlay's
    proxy, issue 12): the hangup of the coordinator's terminal, and signals sent to its
    process group, no longer reach this process; the coordinator's death does not either."""
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader


def ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group; the coordinator decides how workers stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
