"""battle against MAgent2 0.3.4 (agent-steps per CPU-second with and without observations, at
equal observation content and at MAgent2's default, and memory per agent): a thin wrapper of the
fair harness (benchmarks/run.py), kept so that old commands still work.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/battle_vs_magent2.py [--quick] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

if __name__ == "__main__":
    run.main([*sys.argv[1:], "--only", "battle"])
