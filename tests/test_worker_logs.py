"""Worker processes log through their parent, repeated warnings collapsed (issue 24): the
scanners' and restorers' lines reach ``eve migrate``'s logging (above its progress bar), and a
warning repeated per batch is one line when it first happens and one line with its count."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from eve.core.worker_logs import WorkerLogs, forward_to

pytestmark = [pytest.mark.timeout(120)]


def _noisy_worker(log_queue, reasons: int, repeats: int) -> None:
    forward_to(log_queue, logging.INFO)
    log = logging.getLogger("eve.restorer")
    log.info("starting")
    for i in range(repeats):
        for reason in range(reasons):
            log.warning("batch seq=%d: 3 error keys (first: %s)", i, f"OOM {reason}",
                        extra={"reason": f"error keys: OOM {reason}"})
    log.warning("a line of its own, with seq=%d", 7)
    log.error("an error is never collapsed")
    log.error("an error is never collapsed")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_repeated_warnings_of_worker_processes_become_one_line_per_reason_with_a_count():
    context = multiprocessing.get_context("spawn")
    lines = _Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    logs = WorkerLogs()
    try:
        queue = logs.follow(context.Queue())
        workers = [context.Process(target=_noisy_worker, args=(queue, 2, 150)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        logs.unfollow(queue)
        during = list(lines.lines)
        logs.close()
    finally:
        root.removeHandler(lines)
        root.setLevel(level)
    # While the workers ran: each reason once (whichever worker said it first), the rest as they came.
    assert sorted(line for line in during if "error keys" in line) == [
        "batch seq=0: 3 error keys (first: OOM 0)", "batch seq=0: 3 error keys (first: OOM 1)"]
    assert during.count("starting") == 2
    assert during.count("a line of its own, with seq=7") == 1  # the same template: one reason
    assert during.count("an error is never collapsed") == 4
    # Then one line per repeated reason, with its count over both workers.
    summary = lines.lines[len(during):]
    assert sorted(summary) == sorted([
        "batch seq=0: 3 error keys (first: OOM 0) (300 times in all, the same reason; shown once)",
        "batch seq=0: 3 error keys (first: OOM 1) (300 times in all, the same reason; shown once)",
        "a line of its own, with seq=7 (2 times in all, the same reason; shown once)"])


def _run_in_pty(args: list[str], timeout: float = 90) -> tuple[int, str]:
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                               env={**os.environ, "TERM": "xterm", "COLUMNS": "160"})
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), b"".join(chunks).decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


@pytest.mark.integration
@pytest.mark.slow  # eve migrate as a process on a terminal (CI's second step)
def test_migrate_progress_bar_stays_whole_under_a_warning_repeated_per_batch(tmp_path, server_factory):
    """A target out of memory (maxmemory below what it uses) refuses every RESTORE: every batch
    has error keys, and its restorer a warning. On a terminal, the warning shows once above the
    bar, then once with its count; no raw worker line lands on the bar."""
    source, target = server_factory("redis-7.0"), server_factory("redis-7.0")
    source.client().mset({f"key:{i}": i for i in range(400)})
    target.client().config_set("maxmemory", "1")
    status, screen = _run_in_pty([sys.executable, "-m", "eve", "migrate", "--source", source.url,
                                  "--target", target.url, "--scan-count", "10", "--state", str(tmp_path / "job.db")])
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert status == 1, text  # error keys: the job finished with failures
    assert "errors 400" in text
    flat = re.sub(r"\s+", " ", text)  # rich wraps long log lines to the terminal's width
    assert flat.count("error keys (first") == 2, text[-6000:]  # one batch's warning, then the summary
    (count,) = re.findall(r"\((\d+) times in all, the same reason; shown once\)", flat)
    assert int(count) >= 20  # 400 keys in batches of about 10: one warning per batch
    # Neither is a raw worker line (asctime first): both went through the bar's handler.
    assert not re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING", text), text[-3000:]
