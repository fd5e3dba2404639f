"""The gateway through the official OpenAI Node SDK: runs tests/sdk/node/ with `node --test`
against this session's stack. tests/sdk/run installs the SDK there (`npm ci`) first."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Key, Stack

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_TIMEOUT_S = 120


def test_openai_node_sdk_suite_passes(stack: Stack, key: Key):
    node = shutil.which("node")
    assert node, "node is not on PATH; the Node SDK tests need Node.js 20 or later"
    assert (NODE_DIR / "node_modules" / "openai" / "package.json").is_file(), (
        f"the OpenAI Node SDK is not installed in {NODE_DIR}; run tests/sdk/run (it runs npm ci)"
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))
    }
    env.update(
        GATEWAY_BASE_URL=stack.base_url,
        GATEWAY_API_KEY=key.secret,
        GATEWAY_RATE_LIMITED_KEY=stack.create_key("node-sdk-tpm-1", "--tpm", "1").secret,
    )
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", "openai_sdk.test.mjs"],
        cwd=NODE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert result.returncode == 0, f"node --test failed:\n{result.stdout}\n{result.stderr}"
    # Every test ran and passed: a file that fails to load reports no tests at all.
    assert "ℹ pass 6" in result.stdout and "ℹ fail 0" in result.stdout, result.stdout
