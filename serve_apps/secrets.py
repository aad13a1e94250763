"""``SecretRef``: where a secret lives (an env var or a file), never the secret itself.

Shared by every app's config (router backend keys, client API keys, the Matrix bot's credentials) so
configs and their reprs can be logged and committed safely.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import model_validator

from serve_apps.validation import StrictModel


class SecretRef(StrictModel):
    """Where a secret lives: an environment variable or a file (first non-empty wins)."""

    env: str | None = None
    file: Path | None = None

    def resolve(self) -> str | None:
        if self.env and os.environ.get(self.env, "").strip():
            return os.environ[self.env].strip()
        if self.file is not None:
            path = self.file.expanduser()
            if path.is_file():
                return path.read_text().strip() or None
        return None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if not self.env and self.file is None:
            raise ValueError("give env or file")
        return self
