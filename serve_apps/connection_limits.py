"""What one client connection may hold on a listener (``serve_apps.listener``): the bounds on a slow
client, in the router config's ``router.listen`` section (engine workers' ports use the defaults).

Without them a client that sends part of a request head, or part of a body, and then nothing, holds its
connection for ever. The defaults follow the servers in front of which this one usually sits:

- ``header_timeout`` 10 s: the whole request head (request line and headers), counted from the first
  byte of the request, and on a new connection from its accept (as HAProxy's ``timeout http-request``,
  10 s in its examples; nginx's ``client_header_timeout`` is 60 s). A total, not between reads: a
  slowloris client sends a header line every few seconds for ever. A real client sends its head in one
  write; 10 s is many round trips even on a bad mobile link.
- ``body_timeout`` 60 s: between two reads of a body, not for the whole body (nginx's
  ``client_body_timeout``, same default), so a slow upload of a large batch file is never cut while it
  moves; a body that stops moving for a minute is a stalled link or a stalled client. Time during which
  the app is not reading (flow control paused the socket, or ``Expect: 100-continue`` awaits the app)
  is not counted.
- ``keep_alive_timeout`` 75 s: an idle kept-alive connection between requests (nginx's
  ``keepalive_timeout``; it was the listener's value before these bounds). Longer than the usual
  client pools' own idle expiry (httpx 5 s, aiohttp 15 s, the router's wire pool 4 s), so a client
  never sends on a connection the server is closing; uvicorn's 5 s would race httpx's 5 s.
- ``max_connections`` 4096: open connections at once; one more is answered at once with a 503
  (OpenAI-style JSON, ``Connection: close``, ``Retry-After: 1``), its request unhandled. Capped at
  half the process's open-file limit (each routed request also opens a backend connection), so a
  crowd meets 503s instead of ``accept()`` failing with ``EMFILE`` for everyone.
"""

from __future__ import annotations

from pydantic import Field

from serve_apps.validation import StrictModel


class ConnectionLimits(StrictModel):
    """Seconds, and connections; see the module docstring for the defaults."""

    header_timeout: float = Field(10.0, gt=0, description="seconds for a whole request head, from its first byte "
                                  "(from accept on a new connection); then 408 and close (no answer if nothing came)")
    body_timeout: float = Field(60.0, gt=0, description="seconds between two reads of a request body (not the "
                                "whole body: a slow upload that moves is never cut); then 408 and close")
    keep_alive_timeout: float = Field(75.0, gt=0, description="seconds an idle kept-alive connection stays open "
                                      "between requests")
    max_connections: int = Field(4096, ge=1, description="open connections at once (at most half the open-file "
                                 "limit); one more gets an immediate 503 and is closed")
