"""infra/nginx/gateway.conf with Debian's nginx in front of a real gateway-local: a stream's chunks
pass as the gateway writes them (not held until the answer ends, also when the gateway's answer
is not chunked: `proxy_buffering off` is tested on its own), the request id goes through in
both directions and reaches Nginx's access log, a plain request works, and a body over the limit
gets the gateway's error shape. Needs Debian's `nginx` (tests/sdk/run installs it).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import REPO, Stack, _stop, _wait_ready, free_port

CONFIG = REPO / "infra" / "nginx" / "gateway.conf"
TIMEOUT_S = 30
# The `paced` model's upstream pauses 0.8 s after its third token.
PAUSE_S = 0.8


def _render(stack: Stack, port: int, access_log: Path, upstream_http: str = "1.1") -> str:
    """The committed site with this test's listen port, upstream and access log; `upstream_http`
    "1.0" swaps the upstream protocol line, so the gateway answers without chunked framing."""
    site = CONFIG.read_text()
    site, listens = re.subn(r"^(\s*)listen\s+[^;]+;", rf"\1listen 127.0.0.1:{port};", site, flags=re.M)
    site, servers = re.subn(
        r"^(\s*)server\s+127\.0\.0\.1:8080\b",
        rf"\1server {stack.gateway_url.removeprefix('http://')}", site, flags=re.M,
    )
    site, logs = re.subn(r"access_log\s+\S+", f"access_log {access_log}", site)
    site, versions = re.subn(
        r"^(\s*)proxy_http_version\s+1\.1;", rf"\1proxy_http_version {upstream_http};", site, flags=re.M
    )
    assert (listens, servers, logs, versions) == (1, 1, 1, 1), (
        "gateway.conf no longer has the lines rendered here"
    )
    return site


@contextlib.contextmanager
def _nginx(stack: Stack, prefix: Path, upstream_http: str = "1.1") -> Iterator[tuple[str, Path]]:
    """Nginx on a free loopback port with the committed config in front of the session's
    gateway; yields its URL and its access log, and stops it on the way out."""
    assert shutil.which("nginx"), "nginx not installed (tests/sdk/run installs Debian's nginx)"
    port = free_port()
    access_log = prefix / "gateway.access.log"
    (prefix / "gateway.conf").write_text(_render(stack, port, access_log, upstream_http))
    (prefix / "nginx.conf").write_text(
        # As root, Nginx's workers would otherwise run as `nobody`, which cannot read the temp dir.
        "user root;\n"
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"  client_body_temp_path {prefix}/client_body;\n"
        f"  proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fastcgi;\n"
        f"  uwsgi_temp_path {prefix}/uwsgi;\n"
        f"  scgi_temp_path {prefix}/scgi;\n"
        f"  include {prefix}/gateway.conf;\n"
        "}\n"
    )
    log = open(prefix / "nginx.stderr.log", "wb")
    process = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=prefix,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{url}/health")
        yield url, access_log
    finally:
        _stop(process)
        log.close()


@pytest.fixture(scope="module")
def nginx(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    with _nginx(stack, tmp_path_factory.mktemp("nginx")) as running:
        yield running


def _stream_arrivals(url: str, secret: str, request_id: str) -> list[tuple[float, str]]:
    """Streams the `paced` model through Nginx; returns each token with when it arrived."""
    arrivals: list[tuple[float, str]] = []
    with httpx.Client(timeout=TIMEOUT_S) as client:
        with client.stream(
            "POST", f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}", "X-Request-Id": request_id},
            json={"model": "paced", "stream": True,
                  "messages": [{"role": "user", "content": "tokens with a pause"}]},
        ) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["x-request-id"] == request_id
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                for choice in json.loads(line.removeprefix("data: "))["choices"]:
                    if choice["delta"].get("content"):
                        arrivals.append((time.monotonic(), choice["delta"]["content"]))
    assert "".join(text for _, text in arrivals).split() == ["w1", "w2", "w3", "w4", "w5", "w6"]
    return arrivals


def _assert_unbuffered(arrivals: list[tuple[float, str]]) -> None:
    """The tokens before the upstream's pause reached the client before the pause ended: a
    buffering proxy would deliver them all at once, with the end of the answer."""
    across_pause = arrivals[3][0] - arrivals[2][0]
    assert across_pause >= PAUSE_S * 0.75, f"the pause shrank to {across_pause:.3f}s: buffered"


def test_stream_through_nginx_arrives_chunk_by_chunk(stack: Stack, key, nginx):
    url, access_log = nginx
    request_id = "nginx-test-stream-1"
    _assert_unbuffered(_stream_arrivals(url, key.secret, request_id))
    assert _logged(access_log, request_id)


def test_stream_through_nginx_is_unbuffered_whatever_the_upstream_framing(
    stack: Stack, key, tmp_path_factory: pytest.TempPathFactory
):
    """`proxy_buffering off` is what keeps streams unbuffered. Over HTTP/1.1 (the committed
    config) Nginx forwards each complete chunk of a chunked body even while buffering, so the
    test above would pass without it; a body without chunked framing (HTTP/1.0 to the gateway)
    is held until a buffer fills or the answer ends, unless buffering is off."""
    with _nginx(stack, tmp_path_factory.mktemp("nginx-http10"), upstream_http="1.0") as (url, _):
        _assert_unbuffered(_stream_arrivals(url, key.secret, "nginx-test-stream-http10"))


def test_plain_request_through_nginx_keeps_the_gateway_answer(stack: Stack, key, nginx):
    url, access_log = nginx
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for _ in range(3):  # several requests on kept-alive connections
            response = client.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key.secret}"},
                json={"model": "mock", "messages": [{"role": "user", "content": "through nginx"}]},
            )
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]
            assert response.headers["x-gateway-model"]
            # Without the caller's id the gateway answers with Nginx's, which its log line has.
            generated = response.headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
            assert _logged(access_log, generated)

        refused = client.post(f"{url}/v1/chat/completions", json={"model": "mock", "messages": []})
        assert refused.status_code == 401
        assert refused.json()["error"]["type"]

        too_large = client.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key.secret}", "Content-Type": "application/json"},
            content=b" " * (5 * 1024 * 1024),
        )
        assert too_large.status_code == 413
        assert too_large.json()["error"]["type"] == "invalid_request_error"
        assert too_large.headers["x-request-id"]


def _logged(access_log: Path, request_id: str) -> bool:
    """Nginx writes the line when the response ends: wait for it briefly."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if access_log.exists() and f"request_id={request_id} " in access_log.read_text():
            return True
        time.sleep(0.05)
    return False
