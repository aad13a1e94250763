"""Seed-compatible import path for the engine registry (``serve_apps.engines``)."""

from serve_apps.engines import Engine, EngineResponse, get_registry, register_engine

__all__ = ["Engine", "EngineResponse", "get_registry", "register_engine"]
