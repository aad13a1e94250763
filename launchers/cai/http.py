"""The HTTP layer of the CML client: auth, timeouts, retries with backoff, readable errors.

Kept apart from the endpoint methods so retry policy is decided in one place. Retried: 429, 5xx and
transport errors. A request whose body may already have reached the server (a read timeout on a
POST/PATCH) is *not* retried, because creating twice would duplicate a job or application; callers
reconcile such writes by name instead.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import httpx

from launchers.cai.errors import CMLAPIError, CMLAuthError, CMLConflictError, CMLNotFoundError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After`` up to ``max_delay``."""

    def __init__(self, attempts: int = 5, base_delay: float = 0.5, max_delay: float = 20.0) -> None:
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None and (after := response.headers.get("retry-after")):
            try:
                return min(float(after), self.max_delay)
            except ValueError:
                pass
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


class CMLHTTP:
    """``httpx.Client`` bound to one CML host and key; the key lives only in the auth header."""

    def __init__(self, host: str, api_key: str, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        if not api_key:
            raise CMLAuthError(f"no CML API key for {host}: set cai.api_key or CML_API_KEY")
        self.host = host.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._client = httpx.Client(
            base_url=self.host,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def __repr__(self) -> str:  # never show the key
        return f"CMLHTTP(host={self.host!r})"

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, files: Any = None, raw: bool = False) -> Any:
        """Send with retries; return parsed JSON (or bytes with ``raw``); raise ``CMLAPIError``."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self._client.request(method, path, params=params, json=json, files=files)
            except httpx.TransportError as exc:
                if last or not self._may_retry_transport(method, exc):
                    raise CMLAPIError(f"CML API {method} {path} on {self.host} failed: "
                                      f"{type(exc).__name__}: {exc}", method=method, path=path) from None
                wait = self.retry.delay(attempt)
                log.warning("CML %s %s: %s; retrying in %.1fs", method, path, type(exc).__name__, wait)
                time.sleep(wait)
                continue
            if response.status_code in RETRY_STATUS and not last:
                wait = self.retry.delay(attempt, response)
                log.warning("CML %s %s: HTTP %d; retrying in %.1fs", method, path, response.status_code, wait)
                time.sleep(wait)
                continue
            if response.is_error:
                raise self._error(method, path, response)
            if raw:
                return response.content
            return response.json() if response.content else {}
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _may_retry_transport(method: str, exc: httpx.TransportError) -> bool:
        if method in SAFE_METHODS:
            return True
        # The request never left: connecting failed, so a write cannot have happened.
        return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))

    def _error(self, method: str, path: str, response: httpx.Response) -> CMLAPIError:
        status = response.status_code
        try:
            body = response.json()
            detail = body.get("message") or body.get("error") or ""
        except ValueError:
            detail = response.text[:200]
        kwargs = {"status_code": status, "method": method, "path": path}
        if status == 401:
            return CMLAuthError(f"CML API key rejected for {self.host}", **kwargs)
        if status == 403:
            return CMLAuthError(f"CML API key for {self.host} may not {method} {path}: {detail}", **kwargs)
        if status == 404:
            return CMLNotFoundError(f"not found on {self.host}: {method} {path}: {detail}", **kwargs)
        if status == 409 or "already exists" in str(detail).lower():
            return CMLConflictError(f"conflict on {self.host}: {method} {path}: {detail}", **kwargs)
        return CMLAPIError(f"CML API {method} {path} on {self.host} returned HTTP {status}: {detail}", **kwargs)
