"""The HTTP layer of the CML client: auth, timeouts, retries with backoff, readable errors.

Kept apart from the endpoint methods so retry policy is decided in one place:

- Idempotent requests (GET, DELETE, and what a caller marks ``idempotent``: the read-only
  ``:download`` POST, ``:stop``, a PATCH that sets fields) are retried on 429, 5xx and transport
  errors.
- A non-idempotent request (a create, a run, an upload) is retried blindly only when the server
  cannot have acted: 429, or a connection that was never made. After any other failure (a 5xx, a
  reset, a read timeout) the server may have done it, so the caller's ``reconcile`` looks it up
  (by name or nonce) first; only if it did not happen is the request sent again. Without a
  ``reconcile`` such a failure is raised, never retried.

Every failure is one readable ``CMLAPIError`` line: redirects (never followed: a 3xx is not success),
a 200 that is not JSON (an SSO page, the wrong host), an unusable ``Retry-After`` (ignored).
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from launchers.cai.errors import CAIError, CMLAPIError, CMLAuthError, CMLConflictError, CMLNotFoundError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
# The request never reached the server: resending cannot do anything twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
API_SUFFIX = re.compile(r"/api/v[12]/*$")


def normalize_host(host: str) -> str:
    """``https://h/``, ``https://h/api/v2`` -> ``https://h``; a host without http(s) scheme fails now."""
    value = (host or "").strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f": use https://{value}" if value and "://" not in value else ""
        raise CAIError(f"CML host {value!r} is not an http(s) URL{hint}")
    if parts.query or parts.fragment:
        raise CAIError(f"CML host {value!r} must not have a query or fragment")
    path = API_SUFFIX.sub("", parts.path).rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After`` up to ``max_delay``."""

    def __init__(self, attempts: int = 5, base_delay: float = 0.5, max_delay: float = 20.0) -> None:
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        after = retry_after(response.headers.get("retry-after")) if response is not None else None
        if after is not None:
            return min(after, self.max_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta or HTTP date); None if absent or unusable
    (negative, not a number, not finite): the backoff applies then."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        return max(0.0, seconds)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


Reconcile = Callable[[], Any]


class CMLHTTP:
    """``httpx.Client`` bound to one CML host and key; the key lives only in the auth header."""

    def __init__(self, host: str, api_key: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None) -> None:
        self.host = normalize_host(host)
        if not api_key:
            raise CMLAuthError(f"no CML API key for {self.host}: set cai.api_key or CML_API_KEY")
        self.retry = retry or RetryPolicy()
        self._client = httpx.Client(
            base_url=self.host,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
        )

    def __repr__(self) -> str:  # never show the key
        return f"CMLHTTP(host={self.host!r})"

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                files: Any = None, raw: bool = False, idempotent: bool | None = None,
                reconcile: Reconcile | None = None) -> Any:
        """Send with retries; return the JSON object (bytes with ``raw``); raise ``CMLAPIError``.

        ``idempotent`` defaults to the method's nature. For a non-idempotent request ``reconcile``
        is called after a failure the server may have acted on: a non-None result is returned as the
        request's result (it happened), None means it did not and the request is sent again."""
        idempotent = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        params = {k: v for k, v in (params or {}).items() if v is not None}
        where = f"CML API {method} {path} on {self.host}"
        for attempt in range(self.retry.attempts):
            response: httpx.Response | None = None
            try:
                response = self._client.request(method, path, params=params, json=json, files=files)
            except httpx.TransportError as exc:
                failure, sent = f"{type(exc).__name__}: {exc}", not isinstance(exc, NOT_SENT)
            else:
                if response.status_code not in RETRY_STATUS:
                    return self._result(where, method, path, response, raw)
                failure, sent = f"HTTP {response.status_code}", response.status_code != 429
            if sent and not idempotent:
                if reconcile is None:
                    raise CMLAPIError(f"{where} failed ({failure}) after the request was sent; not retried "
                                      "because the server may have applied it", method=method, path=path,
                                      status_code=response.status_code if response is not None else None)
                done = self._reconcile(where, failure, reconcile)
                if done is not None:
                    log.warning("%s: %s, but it had been applied: not sent again", where, failure)
                    return done
            if attempt == self.retry.attempts - 1:
                if response is not None:
                    raise self._error(method, path, response)
                raise CMLAPIError(f"{where} failed: {failure}", method=method, path=path)
            wait = self.retry.delay(attempt, response)
            log.warning("CML %s %s: %s; retrying in %.1fs", method, path, failure, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _reconcile(where: str, failure: str, reconcile: Reconcile) -> Any:
        try:
            return reconcile()
        except CAIError as exc:
            raise CAIError(f"{where} failed ({failure}) and looking up whether it was applied failed too: "
                           f"{exc}") from None

    def _result(self, where: str, method: str, path: str, response: httpx.Response, raw: bool) -> Any:
        status = response.status_code
        if 300 <= status < 400:
            target = response.headers.get("location") or "(no location)"
            raise CMLAPIError(f"{where} was redirected (HTTP {status}) to {target}; redirects are not followed: "
                              "set the CML host to the workspace's https:// URL", status_code=status,
                              method=method, path=path)
        if response.is_error:
            raise self._error(method, path, response)
        if raw:
            return response.content
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            kind = response.headers.get("content-type", "").split(";")[0] or "no content type"
            raise CMLAPIError(f"{where} answered HTTP {status} with {kind}, not a JSON object: is the host the "
                              "CML workspace URL (not a login page or proxy)?", status_code=status,
                              method=method, path=path)
        return body

    def _error(self, method: str, path: str, response: httpx.Response) -> CMLAPIError:
        status = response.status_code
        try:
            body = response.json()
            detail = str(body.get("message") or body.get("error") or "") if isinstance(body, dict) else str(body)
        except ValueError:
            detail = response.text
        detail = " ".join(detail.split())[:200]  # one line, bounded (an HTML error page)
        kwargs: dict[str, Any] = {"status_code": status, "method": method, "path": path}
        if status == 401:
            return CMLAuthError(f"CML API key rejected for {self.host}", **kwargs)
        if status == 403:
            return CMLAuthError(f"CML API key for {self.host} may not {method} {path}: {detail}", **kwargs)
        if status == 404:
            return CMLNotFoundError(f"not found on {self.host}: {method} {path}: {detail}", **kwargs)
        if status == 409 or "already exists" in detail.lower():
            return CMLConflictError(f"conflict on {self.host}: {method} {path}: {detail}", **kwargs)
        return CMLAPIError(f"CML API {method} {path} on {self.host} returned HTTP {status}: {detail}", **kwargs)
