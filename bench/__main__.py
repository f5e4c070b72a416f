"""Run every benchmark module (bench/bench_*.py) in its own process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = 0
    for path in sorted(HERE.glob("bench_*.py")):
        print(f"\n## {path.stem}", flush=True)
        done = subprocess.run([sys.executable, "-m", f"bench.{path.stem}"], cwd=HERE.parent)
        failed += done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
