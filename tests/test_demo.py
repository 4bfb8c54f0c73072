"""`eve demo` runs the whole guided workflow on embedded engines and says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "eve", "demo", "--keys", "5000"], capture_output=True, text=True,
                            timeout=110, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED" in result.stdout and "verification clean" in result.stdout
    assert list(tmp_path.iterdir()) == [], "the demo leaves nothing behind"
