"""Run every benchmark in bench/ one after the other (`--quick` passes through).

    python bench/run_all.py --quick          # each benchmark's quick form, a few minutes in all
    python bench/run_all.py --only gdpa,mfu  # a subset, by script name
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run each benchmark's --quick form")
    parser.add_argument("--only", default="", help="comma-separated script names (without .py) to run")
    args = parser.parse_args()
    scripts = [s for s in sorted(HERE.glob("[a-z]*.py")) if s.name != "run_all.py"]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.stem for s in scripts}
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {[s.stem for s in scripts]}")
        scripts = [s for s in scripts if s.stem in wanted]
    extra = ["--quick"] if args.quick else []
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} {' '.join(extra)}", flush=True)
        if subprocess.call([sys.executable, str(script), *extra]) != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
