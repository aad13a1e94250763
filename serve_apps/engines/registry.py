"""Engine registry: engine names in configs map to engine classes.

Built-ins are registered by import path so that importing the registry never imports vLLM or
SGLang (both are heavy, and SGLang is optional).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve_apps.engines.base import Engine

_BUILTINS: dict[str, str] = {
    "vllm": "serve_apps.engines.vllm:VLLMEngine",
    "sglang": "serve_apps.engines.sglang:SGLangEngine",
}


ENTRY_POINT_GROUP = "ray_serve_cai.engines"


def _entry_point_engines() -> dict[str, str]:
    """Engines other packages declare under ``[project.entry-points."ray_serve_cai.engines"]``.

    Why entry points: a serve config is resolved inside Ray replicas, where a ``register_engine``
    call made in the driver never ran; an installed package's entry point is seen everywhere.
    """
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


class UnknownEngineError(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown engine {self.name!r}; known engines: {', '.join(self.known)}"


class EngineRegistry:
    """Names to engine classes (or ``"module:Class"`` paths, resolved on first use)."""

    def __init__(self) -> None:
        self._entries: dict[str, type | str] = dict(_BUILTINS)
        self._entries.update(_entry_point_engines())

    def register(self, name: str, engine: type | str, *, replace: bool = False) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("engine name must be a non-empty string")
        if name in self._entries and not replace:
            raise ValueError(f"engine {name!r} is already registered (pass replace=True to override)")
        self._entries[name] = engine

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> type[Engine]:
        """The engine class for ``name``. ``"package.module:Class"`` also works without registering,
        so a serve config can name a custom engine that lives in the user's own package."""
        entry = self._entries.get(name)
        if entry is None and ":" in name:
            entry = name
        if entry is None:
            raise UnknownEngineError(name, self.names())
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            try:
                entry = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise ImportError(f"engine {name!r} ({module_name}:{attr}) cannot be imported: {exc}") from exc
            if name in self._entries:
                self._entries[name] = entry
        return entry  # type: ignore[return-value]


_registry = EngineRegistry()


def get_registry() -> EngineRegistry:
    return _registry


def register_engine(name: str, engine: type | str, *, replace: bool = False) -> None:
    """Register a custom engine class (or ``"module:Class"`` path) under ``name``."""
    _registry.register(name, engine, replace=replace)
