"""The benchmarks still run (a smoke run at small sizes). They print timings; nothing is timed here."""

import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_benchmarks_run_and_print_side_by_side_tables():
    proc = subprocess.run([sys.executable, "-m", "tests.benchmarks", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio gradient / closed form" in proc.stdout
    assert "Stacked experts vs a loop over experts on cpu" in proc.stdout
    assert "Sparse dispatch on cpu, forward + backward" in proc.stdout and "The w[e] pitfall" in proc.stdout
