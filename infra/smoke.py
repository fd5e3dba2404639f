"""Smoke test of a running gateway through the official OpenAI Python SDK: health, a chat, a
stream, a 401 for a wrong key and a cache hit. Run it through `infra/smoke` (which picks the SDK
virtualenv); see there for the arguments.

Each check prints one line (`ok` or `FAIL` and what was seen); the exit status is 1 when any
check fails, 2 when the gateway cannot be reached or started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0


class Smoke:
    def __init__(self, base_url: str, key: str, model: str):
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.model = model
        self.failures: list[str] = []
        # No SDK retries: a smoke test reports what the first attempt got.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=TIMEOUT_S, max_retries=0)

    def check(self, name: str, passed: bool, seen: str) -> None:
        print(f"{'ok  ' if passed else 'FAIL'}  {name}: {seen}", flush=True)
        if not passed:
            self.failures.append(name)

    def run(self, check) -> None:
        """Runs one check; an exception is that check's failure, not the end of the run."""
        try:
            check()
        except Exception as error:  # noqa: BLE001 - reported as the check's failure
            self.check(check.__name__, False, f"{type(error).__name__}: {error}")

    def health(self) -> None:
        root = re.sub(r"/v1$", "", self.base_url)
        with urllib.request.urlopen(f"{root}/health", timeout=TIMEOUT_S) as response:
            body = json.load(response)
            self.check("health", response.status == 200 and body.get("status") == "ok",
                       f"GET /health -> {response.status} {body}")

    def chat(self) -> None:
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16)
        completion = raw.parse()
        content = completion.choices[0].message.content or ""
        request_id = raw.headers.get("x-request-id")
        self.check("chat", bool(content) and bool(request_id),
                   f"{len(content)} characters from {raw.headers.get('x-gateway-model') or completion.model}, "
                   f"x-request-id {request_id}")

    def stream(self) -> None:
        chunks, text, finish = 0, "", None
        with self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "Count to three."}],
                max_tokens=16, stream=True) as events:
            for chunk in events:
                chunks += 1
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
        self.check("stream", chunks > 1 and bool(text) and finish is not None,
                   f"{chunks} chunks, {len(text)} characters, finish_reason {finish}")

    def unauthorized(self) -> None:
        wrong = openai.OpenAI(base_url=self.base_url, api_key="sk-smoke-" + secrets.token_hex(16),
                              timeout=TIMEOUT_S, max_retries=0)
        try:
            wrong.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "hi"}])
        except openai.AuthenticationError as error:
            self.check("unauthorized", error.status_code == 401,
                       f"a wrong key -> {error.status_code} {type(error).__name__}")
            return
        self.check("unauthorized", False, "a wrong key was answered")

    def cache_hit(self) -> None:
        # A prompt of its own, so that an earlier run's answer cannot be the first one's hit.
        messages = [{"role": "user", "content": f"Smoke test {secrets.token_hex(8)}: say hello."}]
        seen = []
        for _ in range(2):
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, max_tokens=16, temperature=0)
            raw.parse()
            seen.append(raw.headers.get("x-gateway-cache"))
        self.check("cache hit", seen == ["MISS", "HIT"], f"x-gateway-cache {seen[0]} then {seen[1]}")

    def all(self) -> int:
        for check in (self.health, self.chat, self.stream, self.unauthorized, self.cache_hit):
            self.run(check)
        if self.failures:
            print(f"smoke: FAILED: {', '.join(self.failures)}")
            return 1
        print("smoke: all checks passed")
        return 0


def local_gateway(bin_dir: Path, work: Path) -> tuple[subprocess.Popen, str, str]:
    """gateway-local with its built-in mock models on a free loopback port and a key of its own."""
    binary = bin_dir / "gateway-local"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} not found: build it (cargo build -p local) or set GATEWAY_BIN_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "ANTHROPIC_"))}
    data_dir = work / "data"
    data_dir.mkdir()
    created = subprocess.run([str(binary), "keys", "create", "--name", "smoke", "--data-dir", str(data_dir)],
                             env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    key = created.stdout.strip()
    if created.returncode != 0 or not key:
        raise RuntimeError(f"gateway-local keys create failed: {created.stderr.strip()}")
    stdout = work / "gateway.stdout.log"
    stderr = work / "gateway.stderr.log"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen([str(binary), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
                                   env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"^AI gateway listening on http://(\S+) ", stdout.read_text(errors="replace"))
        if match:
            return process, f"http://{match.group(1)}/v1", key
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError(f"gateway-local did not start in {START_TIMEOUT_S:.0f}s: "
                       f"{stderr.read_text(errors='replace')[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("SMOKE_BASE_URL"),
                        help="the OpenAI base_url: the stack output OpenAIBaseUrl (…/api/v1)")
    parser.add_argument("--key", default=os.environ.get("SMOKE_KEY"), help="a gateway key allowed the model")
    parser.add_argument("--model", default=os.environ.get("SMOKE_MODEL", "mock"), help="default: mock")
    parser.add_argument("--local", action="store_true",
                        help="start gateway-local from $GATEWAY_BIN_DIR (default target/debug) with its "
                        "built-in models and a new key, and check it")
    args = parser.parse_args()

    if args.local:
        bin_dir = Path(os.environ.get("GATEWAY_BIN_DIR") or REPO / "target" / "debug")
        with tempfile.TemporaryDirectory(prefix="gateway-smoke.") as work:
            try:
                process, base_url, key = local_gateway(bin_dir, Path(work))
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                print(f"smoke: {error}", file=sys.stderr)
                return 2
            try:
                print(f"smoke: gateway-local at {base_url}")
                return Smoke(base_url, key, args.model).all()
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
    if not args.base_url or not args.key:
        parser.error("give --base-url and --key (or SMOKE_BASE_URL and SMOKE_KEY), or --local")
    try:
        urllib.request.urlopen(re.sub(r"/v1/?$", "", args.base_url.rstrip("/")) + "/health", timeout=TIMEOUT_S)
    except urllib.error.HTTPError:
        pass  # it answers: the health check reports the status
    except (urllib.error.URLError, OSError) as error:
        print(f"smoke: the gateway at {args.base_url} cannot be reached: {error}", file=sys.stderr)
        return 2
    return Smoke(args.base_url, args.key, args.model).all()


if __name__ == "__main__":
    sys.exit(main())
