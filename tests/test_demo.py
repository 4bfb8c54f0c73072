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
    if not offline:
        assert "in sync" in result.stdout and "cutover" in result.stdout and "none lost" in result.stdout
        assert "refused" not in result.stdout + result.stderr, "the reverse sync copied everything back"
    assert list(tmp_path.iterdir()) == [], "the demo leaves nothing behind"
