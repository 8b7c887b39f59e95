"""scripts/relay-guard.py, the relay throughput guard CI runs: it fails when the best of its short
relay runs falls below half of the figure the documentation gives, after a second chance, and
only then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "scripts" / "relay-guard.py"


def guard(doc: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, GUARD, "--doc", doc, "--runs", "1", "--messages", "300", "--pause-s", "0"],
        capture_output=True, text=True, timeout=120)


def test_the_guard_fails_below_half_the_documented_figure_and_passes_above(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("Figure: relay-guard debug: 1 000 000 000 msg/s, far beyond any machine.\n")
    low = guard(doc)
    assert low.returncode == 1, low.stdout + low.stderr
    assert "REGRESSION" in low.stdout
    # Under the bound, the runs are made once more before it fails.
    assert low.stdout.count("300 messages at") == 2 and "runs again" in low.stdout, low.stdout
    doc.write_text("relay-guard debug: 2 msg/s\n")
    high = guard(doc)
    assert high.returncode == 0, high.stdout + high.stderr
    assert high.stdout.count("300 messages at") == 1, high.stdout


def test_the_guard_refuses_to_run_without_a_documented_figure(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("relay-guard release: 10000 msg/s\n")
    r = guard(doc)
    assert r.returncode == 2
    assert "no 'relay-guard debug: N msg/s' line" in r.stderr
