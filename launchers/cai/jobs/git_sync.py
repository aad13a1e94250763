"""CML job ``git_sync``: fast-forward the project checkout (/home/cdsw) to its remote branch.

Runs with the runtime's own Python and only the standard library, before any venv exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    root = Path(os.environ.get("HOME") or "/home/cdsw")
    if not (root / ".git").exists():
        print(f"{root} is not a git checkout: nothing to sync")
        return 0
    for command in (["git", "fetch", "--prune"], ["git", "pull", "--ff-only"]):
        print("+", " ".join(command), flush=True)
        done = subprocess.run(command, cwd=root)
        if done.returncode != 0:
            print(f"git sync failed: {' '.join(command)} exited {done.returncode}", file=sys.stderr)
            return done.returncode
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    print(f"project at {head.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
