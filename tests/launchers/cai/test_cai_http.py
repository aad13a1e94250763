"""What a real gateway does that a happy path never shows, each as one readable ``CAIError`` line:
redirects, an HTML page with 200, unusable Retry-After, a server repeating its page token, hosts
with an /api/v2 suffix or without a scheme; and a non-idempotent call that is never blindly resent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from cml_emulator import RUNTIME, CMLEmulator

from launchers.cai.client import CMLClient
from launchers.cai.errors import CAIError, CMLAPIError
from launchers.cai.http import RetryPolicy, retry_after


def _calls(cml: CMLEmulator, fragment: str) -> list[str]:
    return [c for c in cml.app.calls if fragment in c]


def _one_line(exc: BaseException, key: str) -> str:
    text = str(exc)
    assert "\n" not in text and key not in text and len(text) < 600, text
    return text


def test_a_redirect_is_an_error_not_an_empty_answer(emulator: CMLEmulator, client: CMLClient) -> None:
    emulator.add_project("p")
    emulator.inject("GET /api/v2/projects", status=308, body=b"", content_type="text/plain",
                    headers={"Location": "https://ml.example.site/api/v2/projects"})
    with pytest.raises(CMLAPIError, match=r"redirected \(HTTP 308\) to https://ml\.example\.site/api/v2/projects; "
                                          r"redirects are not followed") as info:
        client.find_projects("p")
    _one_line(info.value, emulator.api_key)
    assert len(_calls(emulator, "-> 308")) == 1  # not retried, not followed


def test_an_html_page_with_200_is_a_readable_error(emulator: CMLEmulator, client: CMLClient) -> None:
    emulator.inject("GET /api/v2/projects", status=200, content_type="text/html",
                    body=b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n")
    with pytest.raises(CMLAPIError, match="answered HTTP 200 with text/html, not a JSON object") as info:
        client.find_projects("p")
    _one_line(info.value, emulator.api_key)
    emulator.inject("GET /api/v2/projects", status=200, body=b"[1, 2]")
    with pytest.raises(CMLAPIError, match="with application/json, not a JSON object"):
        client.find_projects("p")


def test_an_html_error_page_is_one_line(emulator: CMLEmulator, client: CMLClient) -> None:
    emulator.inject("GET /api/v2/projects", status=502, count=4, content_type="text/html",
                    body=b"<html>\n  <head><title>502 Bad Gateway</title></head>\n</html>\n")
    with pytest.raises(CMLAPIError, match=r"returned HTTP 502: <html> <head><title>502 Bad Gateway") as info:
        client.find_projects("p")
    _one_line(info.value, emulator.api_key)


@pytest.mark.parametrize("header", ["-1", "nan", "soon", "-inf"])
def test_unusable_retry_after_falls_back_to_backoff(emulator: CMLEmulator, client: CMLClient, header: str) -> None:
    emulator.add_project("p")
    emulator.inject("GET /api/v2/projects", status=503, retry_after=header)
    assert [p.name for p in client.find_projects("p")] == ["p"]  # retried once, did not crash
    emulator.inject("GET /api/v2/projects", status=503, count=4, retry_after=header)
    with pytest.raises(CMLAPIError, match="returned HTTP 503"):
        client.find_projects("p")


def test_retry_after_forms() -> None:
    assert retry_after("2.5") == 2.5 and retry_after("0") == 0
    assert retry_after("-1") is None and retry_after("nan") is None and retry_after("garbage") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: now
    assert 50 < (retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) or 0) <= 60
    assert RetryPolicy(max_delay=3).delay(0, None) <= 0.5


def test_a_repeated_page_token_stops_the_listing(emulator: CMLEmulator, client: CMLClient) -> None:
    page = json.dumps({"projects": [], "next_page_token": "MTA="}).encode()
    emulator.inject("GET /api/v2/projects", status=200, count=5, body=page)
    with pytest.raises(CMLAPIError, match="returned page token 'MTA=' a second time; stopped paging") as info:
        client.find_projects("p")
    _one_line(info.value, emulator.api_key)
    assert len(_calls(emulator, "GET /api/v2/projects ->")) == 2


@pytest.mark.parametrize("suffix", ["/api/v2", "/api/v2/", "/", "/api/v1"])
def test_host_with_api_suffix_is_normalized(emulator: CMLEmulator, suffix: str) -> None:
    emulator.add_project("p")
    with CMLClient(emulator.url + suffix, emulator.api_key) as client:
        assert client.host == emulator.url
        assert [p.name for p in client.find_projects("p")] == ["p"]
    assert _calls(emulator, "GET /api/v2/projects -> 200")


def test_host_without_scheme_fails_at_once(emulator: CMLEmulator) -> None:
    host = emulator.url.split("://", 1)[1]
    started = time.monotonic()
    with pytest.raises(CAIError, match=rf"^CML host '{host}' is not an http\(s\) URL: use https://{host}$"):
        CMLClient(host, emulator.api_key)
    assert time.monotonic() - started < 1 and emulator.app.calls == []


def test_cli_host_errors_are_one_line(emulator: CMLEmulator) -> None:
    env = {**os.environ, "CML_API_KEY": emulator.api_key, "CML_HOST": "ml.example.site"}
    done = subprocess.run([sys.executable, "-m", "ray_serve_cai", "cai", "setup-project", "--name", "x"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "ray-serve-cai: error: CML host 'ml.example.site' is not an http(s) URL: use https://ml.example.site")
    assert emulator.api_key not in done.stderr + done.stdout


def test_a_non_idempotent_call_without_lookup_is_never_resent(emulator: CMLEmulator, client: CMLClient) -> None:
    """``:restart`` has no way to tell whether it happened: after a 502 it is reported, not repeated."""
    project = emulator.add_project("restart")
    emulator.write(project, "idle.py", content="import time\ntime.sleep(60)\n")
    app = client.create_application(project, name="web", subdomain="web", script="idle.py",
                                    runtime_identifier=RUNTIME)
    emulator.inject(":restart", status=502, after=True)
    with pytest.raises(CMLAPIError, match=r":restart on .* failed \(HTTP 502\) after the request was sent; "
                                          "not retried because the server may have applied it"):
        client.restart_application(project, app.id)
    assert len(_calls(emulator, ":restart")) == 1
    emulator.inject(":restart", status=429)  # refused, not acted on: retried
    client.restart_application(project, app.id)
    assert [c.rsplit(" ", 1)[1] for c in _calls(emulator, ":restart")][1:] == ["429", "200"]
    client.stop_application(project, app.id)
