"""Which backends may serve a request, in which order.

Order: an explicitly named backend first (if it is available), then tiers from low to high; inside a
tier, least outstanding requests per unit of weight (ties broken at random). Backends whose breaker is
open or whose health probe failed are skipped -- unless nothing else is left, in which case they are
tried anyway (a probe may be stale; refusing outright helps nobody).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from serve_apps.router.backends.base import Backend
from serve_apps.router.health import BreakerState, CircuitBreaker


@dataclass(slots=True)
class BackendState:
    backend: Backend
    breaker: CircuitBreaker
    healthy: bool | None = None  # None until the first probe answers
    outstanding: int = 0
    latency_ewma: float | None = None
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=100))
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    def available(self) -> bool:
        return self.healthy is not False and self.breaker.available()

    def record(self, ok: bool, latency: float | None = None, error: str | None = None) -> None:
        self.outcomes.append(ok)
        if ok:
            self.breaker.record_success()
            if latency is not None:
                self.latency_ewma = latency if self.latency_ewma is None else 0.8 * self.latency_ewma + 0.2 * latency
        else:
            self.breaker.record_failure()
            self.last_error = error

    def status(self) -> dict[str, object]:
        total = len(self.outcomes)
        return {
            "name": self.name,
            "kind": self.backend.kind,
            "tier": self.backend.config.tier,
            "healthy": self.healthy,
            "breaker": self.breaker.state.name.lower(),
            "outstanding": self.outstanding,
            "latency_ms": None if self.latency_ewma is None else round(self.latency_ewma * 1000, 2),
            "error_rate": round(1 - sum(self.outcomes) / total, 4) if total else 0.0,
            "recent_requests": total,
            "last_error": self.last_error,
            "can_resume": self.backend.can_resume,
            **self.backend.describe(),
        }


@dataclass(slots=True, frozen=True)
class Route:
    """One candidate: the backend and the model name to send it (aliases resolved)."""

    state: BackendState
    model: str | None


class UnknownBackend(LookupError):
    pass


class BackendPool:
    def __init__(self, states: Iterable[BackendState]) -> None:
        self.states = {s.name: s for s in states}
        self._by_model: dict[str, list[Route]] = {}
        self._wildcards: list[BackendState] = []
        self.created = int(time.time())
        for state in self.states.values():
            entries = state.backend.config.model_entries
            if not entries:
                self._wildcards.append(state)
            for entry in entries:
                for public in (entry.name, *entry.aliases):
                    self._by_model.setdefault(public, []).append(Route(state, entry.name))

    def knows_model(self, model: str | None) -> bool:
        return model is None or model in self._by_model or bool(self._wildcards)

    def plan(self, model: str | None, path: str, explicit: str | None = None) -> list[Route]:
        """Candidate routes, best first. Raises ``UnknownBackend`` for an unknown explicit name."""
        if model is None:
            routes = [Route(s, None) for s in self.states.values()]
        else:
            routes = list(self._by_model.get(model, ())) + [Route(s, model) for s in self._wildcards]
        routes = [r for r in routes if path in r.state.backend.paths]
        first: list[Route] = []
        if explicit is not None:
            state = self.states.get(explicit)
            if state is None:
                raise UnknownBackend(explicit)
            chosen = [r for r in routes if r.state is state] or [Route(state, model)]
            routes = [r for r in routes if r.state is not state]
            if chosen[0].state.available():
                first = chosen[:1]
            else:
                routes.append(chosen[0])
        ordered = sorted(routes, key=_rank)
        available = [r for r in ordered if r.state.available()]
        if first or available:
            return first + available
        return ordered  # last resort: everything is marked down, try anyway

    def status(self) -> list[dict[str, object]]:
        return [s.status() for s in self.states.values()]

    def readiness(self) -> Readiness:
        """Can every configured model be generated right now? A backend counts once its last health
        probe passed and its breaker is not open; a pool whose backends name no models needs one such
        backend."""
        can = {name: s.healthy is True and s.breaker.state is not BreakerState.OPEN for name, s in self.states.items()}
        models = {model: sorted({r.state.name for r in routes if can[r.state.name]} |
                                {s.name for s in self._wildcards if can[s.name]})
                  for model, routes in self._by_model.items()}
        ready = all(models.values()) if models else any(can.values())
        return Readiness(ready, models, sorted(name for name, ok in can.items() if ok))


@dataclass(slots=True, frozen=True)
class Readiness:
    """``ready``: every configured model has a backend that can generate; ``models``: which ones do."""

    ready: bool
    models: dict[str, list[str]]
    backends: list[str]

    def payload(self) -> dict[str, object]:
        waiting = sorted(model for model, names in self.models.items() if not names)
        return {"status": "ready" if self.ready else "not_ready", "models": self.models,
                "backends_ready": self.backends, "models_waiting": waiting}


def _rank(route: Route) -> tuple[int, float, float]:
    state = route.state
    config = state.backend.config
    return (config.tier, state.outstanding / config.weight, random.random())


__all__ = ["BackendPool", "BackendState", "BreakerState", "Readiness", "Route", "UnknownBackend"]
