"""Worker processes log through their parent (issue 24).

A scanner or restorer that logs straight to stderr writes over ``eve migrate``'s progress
bar, and a warning repeated per batch (the same refused payload in every batch) fills the
terminal with hundreds of the same line. Instead each worker process sends its records
over a queue (``forward_to``), and the parent (``WorkerLogs``) hands them to its own
logging, where the progress bar's handler prints them above the bar. Warnings repeated
with the same reason are collapsed: the first is logged when it happens, the others
counted, and ``close`` says once per reason how many there were::

    logs = WorkerLogs()                                     # parent
    queue = logs.follow(context.Queue())
    Process(target=main, kwargs={"log_queue": queue}).start()
    forward_to(log_queue, level)                            # first thing in the worker
    ...
    logs.unfollow(queue)                                    # the workers have exited
    logs.close()                                            # "... (312 times in all, ...)"

A record's reason is its ``reason`` attribute (``log.warning(..., extra={"reason": ...})``),
else its logger and message template: the same line with other numbers is the same reason.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerLogs", "forward_to"]

log = logging.getLogger("eve.workers")

# Records of this level and above that repeat a reason are collapsed; errors always pass.
COLLAPSED_LEVELS = (logging.WARNING,)


class _Reasoned(logging.Filter):
    """Gives every record its collapse key before the queue handler flattens its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        reason = getattr(record, "reason", None)
        record.collapse_key = f"{record.name}: {reason}" if reason else f"{record.name}: {record.msg}"
        return True


def forward_to(log_queue: Any, level: int) -> None:
    """In a worker process: send every record of ``level`` and above to the parent's queue
    instead of printing it."""
    handler = logging.handlers.QueueHandler(log_queue)
    handler.addFilter(_Reasoned())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)


@dataclass
class _Reason:
    first: str          # the first record's message, as it was logged
    level: int
    name: str
    count: int = 1


class WorkerLogs:
    """In the parent: reads the workers' records from the queues it ``follow``s, on a thread
    per queue, and logs them through this process's logging, collapsing repeated warnings by
    reason across every queue it followed (a pipeline restarted from its checkpoint gets a new
    queue: a worker terminated while writing may leave one unusable)."""

    def __init__(self) -> None:
        self._reasons: dict[str, _Reason] = {}
        self._lock = threading.Lock()
        self._readers: dict[int, threading.Thread] = {}

    def follow(self, log_queue: Any) -> Any:
        """Start reading ``log_queue``; returns it, for the workers' ``log_queue``."""
        reader = threading.Thread(target=self._read, args=(log_queue,), name="worker-logs", daemon=True)
        self._readers[id(log_queue)] = reader
        reader.start()
        return log_queue

    def unfollow(self, log_queue: Any) -> None:
        """Read what is queued, then stop reading ``log_queue`` (its workers have exited)."""
        try:
            log_queue.put(None)
        except (OSError, ValueError):
            pass
        reader = self._readers.pop(id(log_queue), None)
        if reader is not None:
            reader.join(timeout=5)

    def _read(self, log_queue: Any) -> None:
        while True:
            try:
                record = log_queue.get()
            except (EOFError, OSError, ValueError):
                return
            except Exception as exc:  # noqa: BLE001 - a record cut short by a killed worker: skip it
                log.debug("a worker's log record could not be read: %s", exc)
                continue
            if record is None:
                return
            if isinstance(record, logging.LogRecord):
                self.handle(record)

    def handle(self, record: logging.LogRecord) -> None:
        key = getattr(record, "collapse_key", None)
        if record.levelno in COLLAPSED_LEVELS and key:
            with self._lock:
                seen = self._reasons.get(key)
                if seen is not None:
                    seen.count += 1
                    return
                self._reasons[key] = _Reason(record.getMessage(), record.levelno, record.name)
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)

    def repeated(self) -> dict[str, int]:
        """Reason -> how many records it had, for the reasons seen more than once."""
        with self._lock:
            return {key: reason.count for key, reason in self._reasons.items() if reason.count > 1}

    def close(self) -> None:
        """Log one line per repeated reason with its count, and forget them."""
        with self._lock:
            reasons = [reason for reason in self._reasons.values() if reason.count > 1]
            self._reasons.clear()
        for reason in reasons:
            logging.getLogger(reason.name).log(reason.level, "%s (%d times in all, the same reason; shown once)",
                                               reason.first, reason.count)
