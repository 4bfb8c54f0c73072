"""`eve demo` runs a whole live (or offline) migration on embedded engines and says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize("offline", [False, True], ids=["live", "offline"])
def test_demo_runs_end_to_end(tmp_path, offline):
    argv = [sys.executable, "-m", "eve", "demo", "--keys", "5000"] + (["--offline"] if offline else [])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=110, cwd=tmp_path,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED" in result.stdout and "verification clean" in result.stdout
    # The application writes while the test run verifies: keys it changed are said to have changed
    # on the source, never counted as failures (issue 24).
    (testrun,) = [line for line in result.stdout.splitlines() if line.startswith("test run:")]
    assert "failed" not in testrun and "no failure on the target" in testrun, testrun
    if not offline:
        assert "in sync" in result.stdout and "cutover" in result.stdout and "none lost" in result.stdout
        assert "refused" not in result.stdout + result.stderr, "the reverse sync copied everything back"
    assert list(tmp_path.iterdir()) == [], "the demo leaves nothing behind"


def test_the_demos_test_run_line_tells_keys_written_meanwhile_from_failures():
    """Issue 24: the demo's application writes keys while the test run verifies them: they changed
    on the source, which the demo must not call a failure."""
    from eve.cli.demo import demo_testrun_line
    from eve.v1 import workflows_pb2 as wpb

    moving = wpb.TestRunReport(results=[wpb.TypeResult(type="string", keys=200, ok=198, changed=2)],
                               estimated_seconds=1.5)
    line = demo_testrun_line(moving)
    assert line.startswith("test run: 198 keys copied and verified; 2 changed on the source while being verified")
    assert "failed" not in line and "refused" not in line and line.endswith("estimated full copy 1.5s")
    broken = wpb.TestRunReport(results=[wpb.TypeResult(type="set", keys=10, ok=7, failed=3)])
    assert "3 failed: refused or corrupted by the target" in demo_testrun_line(broken)
