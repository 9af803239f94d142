"""`python -m benchmarks` (`make bench`): run every benchmark module, one process each.

Each `benchmarks/<name>.py` with a `main()` (not starting with "_") runs as
`python -m benchmarks.<name>` in turn, the broker's first; extra arguments are not passed on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_FIRST = ("broker", "functions", "airflow")


def _modules() -> list[str]:
    found = sorted(
        path.stem
        for path in _HERE.glob("*.py")
        if not path.stem.startswith("_") and "\ndef main(" in path.read_text()
    )
    return [name for name in _FIRST if name in found] + [n for n in found if n not in _FIRST]


def main() -> int:
    failed = []
    for name in _modules():
        print(f"\n## benchmarks.{name}\n", flush=True)
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=_HERE.parent)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
