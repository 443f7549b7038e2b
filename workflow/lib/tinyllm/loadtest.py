"""Load test of `tinyllm serve`: streaming clients over loopback, every loop bounded in count and time.

`start_server` runs `tinyllm serve` as a child process on 127.0.0.1 (a free port) so that the clients of
this process do not share its interpreter; `run_clients` starts N clients at once, each streaming
`rounds` completions one after another (a client may hang up after some tokens), and `summary` turns what
they saw into figures: aggregate tokens/s, time to first token, and how many answers were complete, refused
with 429, dropped on purpose or failed (anything else: an error, a broken stream, a timeout).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from tinyllm.errors import ConfigError

HOST = "127.0.0.1"  # loopback only
REQUEST_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    kind: str  # "complete", "refused" (429), "dropped" (the client hung up on purpose), "failed"
    tokens: int = 0
    first_token_s: float | None = None
    detail: str = ""


def stream_completion(port: int, body: dict, hang_up_after: int | None = None) -> Outcome:
    """One streamed completion; hang_up_after: close the connection after that many tokens."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    outcome = Outcome("failed")
    try:
        connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}))
        response = connection.getresponse()
        if response.status != 200:
            kind = "refused" if response.status == 429 else "failed"
            return Outcome(kind, detail=f"{response.status} {response.read()[:200]!r}")
        while True:
            line = response.readline()
            if not line:
                return Outcome("failed", outcome.tokens, outcome.first_token_s, "the stream ended early")
            if line == b"data: [DONE]\n":
                outcome.kind = "complete"
                return outcome
            if line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Outcome("failed", outcome.tokens, outcome.first_token_s, chunk["error"]["message"])
                outcome.first_token_s = outcome.first_token_s or time.perf_counter() - start
                outcome.tokens += 1
                if hang_up_after is not None and outcome.tokens >= hang_up_after:
                    outcome.kind = "dropped"
                    return outcome
    except (OSError, http.client.HTTPException, ValueError) as err:
        return Outcome("failed", outcome.tokens, outcome.first_token_s, f"{type(err).__name__}: {err}")
    finally:
        connection.close()


def run_clients(port: int, clients: int, rounds: int, body: dict, hang_up_every: int = 0, hang_up_after=16):
    """clients threads at once, each streaming rounds completions; every hang_up_every-th client (0: none)
    hangs up after hang_up_after tokens. Returns (outcomes, seconds from the first start to the last end)."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        hang_up = hang_up_after if hang_up_every and number % hang_up_every == 0 else None
        for _ in range(rounds):
            outcome = stream_completion(port, body, hang_up)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S * rounds)
    return outcomes, time.perf_counter() - start


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else float("nan")


def summary(outcomes: list[Outcome], seconds: float, prefix: str) -> dict[str, float]:
    """Figures of one run of clients, each named prefix_...; failed counts what was neither answered nor
    refused cleanly."""
    first = [o.first_token_s for o in outcomes if o.first_token_s is not None]
    figures = {f"{prefix}_tokens_per_s": sum(o.tokens for o in outcomes) / seconds}
    figures[f"{prefix}_ttft_p50_ms"] = percentile(first, 0.5) * 1e3
    figures[f"{prefix}_ttft_p99_ms"] = percentile(first, 0.99) * 1e3
    for kind in ("complete", "refused", "dropped", "failed"):
        figures[f"{prefix}_{kind}"] = sum(o.kind == kind for o in outcomes)
    failures = [o.detail for o in outcomes if o.kind == "failed"]
    if failures:
        print(f"bench serve: {prefix}: {len(failures)} failed, first: {failures[0]}", file=sys.stderr)
    return figures


class ServerProcess:
    """`tinyllm serve` in a child process on 127.0.0.1; stopped with SIGTERM (then killed) on exit."""

    def __init__(self, checkpoint, tokenizer, threads: int, options: tuple[str, ...] = ()):
        command = [sys.executable, "-m", "tinyllm.cli", "serve", str(checkpoint),
                   "--tokenizer", str(tokenizer),
                   "--host", HOST, "--port", "0", "--threads", str(threads), *options]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.port = self._wait_for_port(timeout=120.0)

    def _wait_for_port(self, timeout: float) -> int:
        deadline, lines = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if f"http://{HOST}:" in line:
                threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep it drained
                return int(line.split(f"http://{HOST}:")[1].split("/")[0])
        self.process.kill()
        raise ConfigError(f"tinyllm serve did not start: {''.join(lines)[-500:]}")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
