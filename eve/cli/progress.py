"""A progress bar on a terminal for the CLI's long jobs (``eve migrate``, ``eve verify``).

rich draws it on stderr, and while it shows, log lines go through the bar's console so none
lands on the bar; nothing is drawn when stderr is not a terminal (pipes, CI, ``--json``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """One bar: ``description``, a bar, done/total, ``rate`` keys/s, one more field (``extra``),
    elapsed and time left. ``update`` takes the numbers; ``close`` puts the log handlers back."""

    def __init__(self, enabled: bool, description: str, extra: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._handler: logging.Handler | None = None
        self._replaced: list[logging.Handler] = []
        if not self.enabled:
            return
        from rich.console import Console
        from rich.logging import RichHandler
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        console = Console(stderr=True)
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]:>10} keys/s"), TextColumn("{task.fields[extra]}"),
                        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                        console=console, transient=True)
        self._task = self._bar.add_task(description, total=None, rate="-", extra=extra)
        root = logging.getLogger()
        self._replaced = list(root.handlers)
        self._handler = RichHandler(console=console, show_path=False, show_time=False)
        for handler in self._replaced:
            root.removeHandler(handler)
        root.addHandler(self._handler)
        self._bar.start()

    def update(self, *, completed: int, total: int | None, rate: float, extra: str,
               description: str | None = None) -> None:
        if self._bar is None:
            return
        fields: dict[str, Any] = {"completed": completed, "total": total, "rate": f"{rate:,.0f}", "extra": extra}
        if description is not None:
            fields["description"] = description
        self._bar.update(self._task, **fields)

    def close(self) -> None:
        if self._bar is None:
            return
        self._bar.stop()
        self._bar = None
        root = logging.getLogger()
        if self._handler is not None:
            root.removeHandler(self._handler)
        for handler in self._replaced:
            root.addHandler(handler)
