"""Inference engines behind one small protocol, and the registry that names them."""

from serve_apps.engines.base import Engine, EngineResponse
from serve_apps.engines.registry import EngineRegistry, UnknownEngineError, get_registry, register_engine

__all__ = ["Engine", "EngineRegistry", "EngineResponse", "UnknownEngineError", "get_registry", "register_engine"]
