"""CML job ``setup_environment``: a venv in the project with this package installed. Idempotent.

The venv lives in the project (``/home/cdsw/.venv``) so every later job and the Ray node
applications share it. A stamp records what was installed (hash of pyproject.toml plus the
extras); a rerun with the same stamp only verifies the import and exits.

Environment: RAY_SERVE_CAI_EXTRAS (e.g. "gpu", default none), SETUP_FORCE=true to reinstall.
Runs with the runtime's Python and only the standard library.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path


def stamp_for(root: Path, extras: str) -> str:
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes())
    digest.update(extras.encode())
    return digest.hexdigest()


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    root = Path(os.environ.get("HOME") or "/home/cdsw")
    venv_dir = Path(os.environ.get("RAY_SERVE_CAI_VENV") or root / ".venv")
    extras = os.environ.get("RAY_SERVE_CAI_EXTRAS", "").strip()
    stamp_file = venv_dir / ".ray-serve-cai-stamp"
    python = venv_dir / "bin" / "python"
    wanted = stamp_for(root, extras)
    force = os.environ.get("SETUP_FORCE", "").lower() == "true"
    if not force and python.exists() and stamp_file.exists() and stamp_file.read_text().strip() == wanted:
        print(f"environment in {venv_dir} is up to date; verifying")
    else:
        if not python.exists():
            print(f"creating venv {venv_dir}", flush=True)
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        target = f"{root}[{extras}]" if extras else str(root)
        run([str(python), "-m", "pip", "install", "--upgrade", "pip"])
        run([str(python), "-m", "pip", "install", target])
        stamp_file.write_text(wanted + "\n")
    run([str(python), "-c", "import ray, ray_serve_cai, launchers.cai; print('ray', ray.__version__)"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"setup_environment failed: {exc}", file=sys.stderr)
        sys.exit(exc.returncode or 1)
