"""Session fixtures: a mock upstream (`mock-provider`) and the gateway (`gateway-local`) in front
of it, both on free loopback ports, plus helpers to create and revoke API keys through the CLI.

Binaries come from `$GATEWAY_BIN_DIR` (default `<repo>/target/debug`). Both processes write their
output to log files in a per-session temp dir; the tail of those logs is shown when start-up fails.
They are terminated at the end of the session, on failure and on Ctrl-C; on Linux they also get
SIGTERM if the pytest process itself dies (PR_SET_PDEATHSIG), so none is ever left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("GATEWAY_BIN_DIR") or REPO / "target" / "debug")
START_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 30.0

_live: list[subprocess.Popen] = []


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM when the pytest process dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort on non-Linux systems
        pass


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process in _live:
        _live.remove(process)


@atexit.register
def _stop_all() -> None:
    for process in list(_live):
        _stop(process)


def _binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.exit(
            f"{path} not found; build it (cargo build -p local -p gateway-tests) "
            "or set GATEWAY_BIN_DIR",
            returncode=2,
        )
    return path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def _spawn(
    args: list[str], env: dict[str, str], log_dir: Path, name: str, banner: re.Pattern[str]
) -> tuple[subprocess.Popen, str]:
    """Starts a server and waits for its banner on stdout; returns it and the printed address."""
    stdout_path = log_dir / f"{name}.stdout.log"
    stderr_path = log_dir / f"{name}.stderr.log"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=log_dir,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    _live.append(process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        first_line = stdout_path.read_text(errors="replace").partition("\n")
        if first_line[1]:
            match = banner.search(first_line[0])
            if match:
                return process, match.group(1)
            _stop(process)
            raise RuntimeError(f"{name}: unexpected first line {first_line[0]!r}")
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode} before listening:\n{_tail(stderr_path)}"
            )
        time.sleep(0.02)
    _stop(process)
    raise RuntimeError(f"{name} did not print its address in {START_TIMEOUT_S}s:\n{_tail(stderr_path)}")


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = error
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready in {START_TIMEOUT_S}s: {last}")


def free_port() -> int:
    """A loopback port free now, for servers that cannot take port 0 and print theirs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_only(address: str) -> str:
    host = address.rsplit(":", 1)[0]
    assert host in ("127.0.0.1", "[::1]"), f"server bound to non-loopback address {address}"
    return address


@dataclasses.dataclass(frozen=True)
class Key:
    id: str
    secret: str


@dataclasses.dataclass
class Stack:
    """The running servers, and how to reach and manage them."""

    mock_url: str  # http://127.0.0.1:PORT of the mock upstream
    gateway_url: str  # http://127.0.0.1:PORT of the gateway
    data_dir: Path
    upstream_key: str  # the credential the mock upstream demands
    _env: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"{self.gateway_url}/v1"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(_binary("gateway-local")), *args, "--data-dir", str(self.data_dir)],
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"gateway-local {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def create_key(self, name: str, *options: str) -> Key:
        """`gateway-local keys create --name NAME OPTIONS...`: the new key's id and secret."""
        result = self.cli("keys", "create", "--name", name, *options)
        secret = result.stdout.strip()
        assert secret and "\n" not in secret, f"unexpected stdout {result.stdout!r}"
        match = re.search(r"created key (\S+) \(", result.stderr)
        assert match, f"no key id in stderr {result.stderr!r}"
        return Key(id=match.group(1), secret=secret)

    def revoke_key(self, key_id: str) -> None:
        self.cli("keys", "revoke", key_id)

    def key_status(self, key_id: str) -> str:
        """The STATUS column of `keys list` for `key_id`."""
        for line in self.cli("keys", "list").stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == key_id:
                return next(f for f in fields if f in ("active", "revoked", "expired"))
        raise KeyError(key_id)

    def mock_stats(self) -> dict:
        with urllib.request.urlopen(f"{self.mock_url}/_mock/stats", timeout=5) as response:
            return json.load(response)

    def mock_reset(self) -> None:
        request = urllib.request.Request(f"{self.mock_url}/_mock/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5):
            pass


CONFIG_TEMPLATE = """\
[providers.mock]
kind = "mock"

[providers.anthropic]
kind = "anthropic"
base_url = "{mock_url}"
api_key_env = "MOCK_ANTHROPIC_KEY"

[providers.openai]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "MOCK_OPENAI_KEY"

[models.mock]
deployments = [{{ provider = "mock", model = "mock" }}]
price = {{ input_per_mtok = 0.1, output_per_mtok = 0.4 }}

[models.mock-embed]
kind = "embedding"
deployments = [{{ provider = "mock", model = "mock-embed" }}]

[models.claude]
deployments = [{{ provider = "anthropic", model = "claude-test" }}]

[models.upstream-gpt]
deployments = [{{ provider = "openai", model = "gpt-test" }}]

# mock-provider answers these upstream model names with the vendor's real error responses.
[models.upstream-ratelimited]
deployments = [{{ provider = "openai", model = "error-429" }}]

# The same upstream for the other SDKs' tests: each model has its own deployments and so its own
# circuit breaker, which the OpenAI test's 429s must not have opened for them (nor theirs for it).
[models.upstream-ratelimited-anthropic]
deployments = [{{ provider = "openai", model = "error-429" }}]

[models.upstream-ratelimited-responses]
deployments = [{{ provider = "openai", model = "error-429" }}]

[models.upstream-too-long]
deployments = [{{ provider = "openai", model = "error-context" }}]

# Twenty tokens, the connection cut after the fifth: past the first token, so no retry.
[models.upstream-cut]
deployments = [{{ provider = "openai", model = "fault:tokens=20;cut_after=5" }}]

# test_prometheus_alerts.py: streams whose first token takes 2.6 s (over the 2 s p95 alert), and a
# model priced at 1 USD a token, so a few requests cross the 10 USD-an-hour cost alert.
[models.slow-first-token]
deployments = [{{ provider = "openai", model = "fault:first_token_ms=2600" }}]

# The same broken stream as upstream-cut, with a circuit breaker of its own: the alert test's
# broken streams must not open the one test_prometheus_dashboard.py's stream goes through.
[models.upstream-cut-alerts]
deployments = [{{ provider = "openai", model = "fault:tokens=20;cut_after=5" }}]

[models.pricey]
deployments = [{{ provider = "mock", model = "mock" }}]
price = {{ input_per_mtok = 1000000, output_per_mtok = 1000000 }}

# test_nginx.py: six tokens with a 0.8 s pause after the third, to see chunks pass a proxy unbuffered.
[models.paced]
deployments = [{{ provider = "openai", model = "fault:tokens=6;stall_after=3;stall_ms=800" }}]
"""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("sdk-e2e")
    data_dir = root / "data"
    data_dir.mkdir()
    upstream_key = "mock-upstream-" + secrets.token_hex(12)

    base_env = {
        k: v
        for k, v in os.environ.items()
        # Keep the servers deterministic: no real vendor keys or gateway settings leak in.
        if not k.startswith(("GATEWAY_", "OPENAI_", "ANTHROPIC_", "MOCK_", "AZURE_"))
    }
    base_env.setdefault("RUST_LOG", "info")

    mock_env = dict(base_env, MOCK_PROVIDER_REQUIRE_KEY=upstream_key)
    gateway_env = dict(base_env, MOCK_ANTHROPIC_KEY=upstream_key, MOCK_OPENAI_KEY=upstream_key)

    processes: list[subprocess.Popen] = []
    try:
        mock, mock_address = _spawn(
            [str(_binary("mock-provider")), "--listen", "127.0.0.1:0"],
            mock_env,
            root,
            "mock-provider",
            re.compile(r"^listening on http://(\S+)$"),
        )
        processes.append(mock)
        mock_url = f"http://{_loopback_only(mock_address)}"
        _wait_ready(f"{mock_url}/_mock/stats")

        config = root / "gateway.toml"
        config.write_text(CONFIG_TEMPLATE.format(mock_url=mock_url))
        gateway, gateway_address = _spawn(
            [
                str(_binary("gateway-local")),
                "--listen",
                "127.0.0.1:0",
                "--config",
                str(config),
                "--data-dir",
                str(data_dir),
            ],
            gateway_env,
            root,
            "gateway",
            re.compile(r"^AI gateway listening on http://(\S+) "),
        )
        processes.append(gateway)
        gateway_url = f"http://{_loopback_only(gateway_address)}"
        _wait_ready(f"{gateway_url}/health")

        yield Stack(
            mock_url=mock_url,
            gateway_url=gateway_url,
            data_dir=data_dir,
            upstream_key=upstream_key,
            _env=gateway_env,
        )
    finally:
        for process in reversed(processes):
            _stop(process)
        _stop_all()


@pytest.fixture(scope="session")
def key(stack: Stack) -> Key:
    """An unrestricted key shared by the tests that do not test key policy."""
    return stack.create_key("sdk-e2e")


@pytest.fixture(scope="session")
def client(stack: Stack, key: Key) -> Iterator[openai.OpenAI]:
    # No retries: a test must see the gateway's first answer, not a retried one.
    with openai.OpenAI(base_url=stack.base_url, api_key=key.secret, max_retries=0) as c:
        yield c


@pytest.fixture
def make_client(stack: Stack) -> Iterator[Callable[..., openai.OpenAI]]:
    """Builds extra sync clients (other keys, options); all are closed after the test."""
    made: list[openai.OpenAI] = []

    def make(api_key: str, **options) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        c = openai.OpenAI(base_url=stack.base_url, api_key=api_key, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@contextlib.contextmanager
def prometheus_scraping(
    stack: Stack, credentials: str, work: Path, interval_s: int, rule_file: Path | None = None
) -> Iterator[str]:
    """Debian's Prometheus scraping the stack's gateway every `interval_s` with `credentials` (a
    key with the metrics scope), evaluating `rule_file` at the same interval when given; yields
    its URL once it is ready and stops it after. Its log is `work`/prometheus.log."""
    address = f"127.0.0.1:{free_port()}"
    config = ["global:", f"  scrape_interval: {interval_s}s"]
    if rule_file is not None:
        config += [f"  evaluation_interval: {interval_s}s", f"rule_files: ['{rule_file}']"]
    config += [
        "scrape_configs:",
        "  - job_name: gateway",
        "    authorization:",
        f"      credentials: {credentials}",
        "    static_configs:",
        f"      - targets: ['{stack.gateway_url.removeprefix('http://')}']",
    ]
    (work / "prometheus.yml").write_text("\n".join(config) + "\n")
    with open(work / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address={address}",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=work,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    _live.append(prometheus)
    try:
        url = f"http://{address}"
        _wait_ready(f"{url}/-/ready")
        yield url
    finally:
        _stop(prometheus)
