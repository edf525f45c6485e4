"""Exact exploitability against MFGLib and OpenSpiel, and the crowd_1d simulator: a thin wrapper of
the fair harness (benchmarks/run.py), kept so that old commands still work.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_libraries.py [--quick] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

if __name__ == "__main__":
    run.main([*sys.argv[1:], "--only", "mfglib", "openspiel", "simulator"])
