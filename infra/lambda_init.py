#!/usr/bin/env python3
"""Times a Lambda function's init: process start to its first Runtime API poll.

    python3 infra/lambda_init.py [--runs N] [--timeout SECS] [--fresh-dir-env VAR] -- COMMAND...

Each start gets a Runtime API stand-in of its own on a loopback port (AWS_LAMBDA_RUNTIME_API) that
records the moment the first request's head, which must be `GET
/2018-06-01/runtime/invocation/next`, has arrived, and never answers it; the process is then
killed. With --fresh-dir-env VAR each start gets a new empty directory in VAR (the function's data
directory). The rest of the environment is the caller's (tests/bench/lambda-env.sh).

Prints one line: the median over the starts, then each start, in milliseconds. Exits 1 when a start
fails (exits early, times out, or its first request is something else), with the reason on stderr.
The same measurement as tests/bench/driver's `coldstart` mode, in the standard library only, so
infra/build need not build the driver.
"""

import argparse
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

POLL = b"GET /2018-06-01/runtime/invocation/next"


def one_start(command, timeout, env, log):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        env = dict(env, AWS_LAMBDA_RUNTIME_API="127.0.0.1:%d" % listener.getsockname()[1])
        started = time.monotonic()
        child = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
        try:
            deadline = started + timeout
            conn = None
            while conn is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, "no poll within %g s" % timeout
                if child.poll() is not None:
                    log.seek(0)
                    return None, "exited with %s before its first poll; its output ends: %s" % (
                        child.returncode, log.read()[-2000:].decode(errors="replace"))
                ready, _, _ = select.select([listener], [], [], min(left, 0.05))
                if ready:
                    conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None, "no complete request within %g s" % timeout
                    conn.settimeout(left)
                    chunk = conn.recv(4096)
                    if not chunk:
                        return None, "connection closed before a request"
                    head += chunk
                    if len(head) > 65536:
                        return None, "request head too large"
                elapsed = time.monotonic() - started
                line = head.split(b"\r\n", 1)[0]
                if not line.startswith(POLL):
                    return None, "first request was `%s`" % line.decode(errors="replace")
                return elapsed, None
        finally:
            child.kill()
            child.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--fresh-dir-env")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="lambda-init-")
    samples = []
    try:
        for run in range(args.runs):
            env = dict(os.environ)
            if args.fresh_dir_env:
                env[args.fresh_dir_env] = os.path.join(scratch, "run-%d" % run)
            with tempfile.TemporaryFile(dir=scratch) as log:
                elapsed, error = one_start(args.command, args.timeout, env, log)
            if error:
                print("lambda_init: %s: start %d: %s" % (" ".join(args.command), run + 1, error),
                      file=sys.stderr)
                return 1
            samples.append(elapsed * 1000)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(" ".join("%.1f" % ms for ms in [statistics.median(samples)] + samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
