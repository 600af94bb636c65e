"""A small real HTTP server on 127.0.0.1 speaking OpenAI's POST /v1/chat/completions, for tests.

It records every request (body and headers), counts them, tracks the most requests in flight at
once, and serves a scripted queue of faults before answering normally. A normal answer is
deterministic: the label names the first marked token of the last user message
("Label: <token> words"), so a test can tell which cluster an answer belongs to.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Faults a test can queue: each is consumed by one request, in order.
FAULTS = ("500", "429", "slow", "malformed", "empty", "401")


@dataclass
class Recorded:
    body: dict
    headers: dict[str, str]  # names lower-cased
    time: float  # time.monotonic() on arrival


@dataclass
class ServerState:
    faults: list[str] = field(default_factory=list)  # served first, one per request
    fail_matching: dict[str, str] = field(default_factory=dict)  # substring of the prompt -> fault, every time
    slow_seconds: float = 2.0  # the 'slow' fault's delay (longer than the client's timeout)
    answer_delay: float = 0.0  # every normal answer waits this long (lets requests overlap)
    requests: list[Recorded] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def count(self) -> int:
        return len(self.requests)


def answer_for(messages: list[dict]) -> str:
    """The deterministic answer to a chat: a label from the first marked token, or a detection
    answer (every window whose marked token is capitalized fits)."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if last.startswith("Explanation:"):
        windows = re.findall(r"^\d+\. (.*)$", last, re.MULTILINE)
        fits = [int(bool(re.search(r"<<[A-Z]", w))) for w in windows]
        return f"Fits: {fits}"
    marked = re.search(r"<<(.+?)>>", last)
    token = marked.group(1) if marked else "nothing"
    return f"Label: {token} words\nExplanation: The feature fires on {token}. It is a test answer."


def _completion(text: str, messages: list[dict]) -> dict:
    prompt_tokens = sum(len(m["content"].split()) for m in messages)
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                  "total_tokens": prompt_tokens + len(text.split())},
    }


def _handler(state: ServerState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  content_type: str = "application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to deliver

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, b'{"error": {"message": "not found"}}')
            messages = body.get("messages", [])
            prompt = "\n".join(m.get("content", "") for m in messages)
            with state.lock:
                state.requests.append(Recorded(body, {k.lower(): v for k, v in self.headers.items()}, time.monotonic()))
                fault = state.faults.pop(0) if state.faults else None
                fault = fault or next((f for s, f in state.fail_matching.items() if s in prompt), None)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                self._serve(fault, messages)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _serve(self, fault: str | None, messages: list[dict]):
            error = b'{"error": {"message": "scripted failure", "type": "server_error"}}'
            if fault == "500":
                return self._send(500, error)
            if fault == "429":
                return self._send(429, error, {"Retry-After": "0.1"})
            if fault == "401":
                return self._send(401, b'{"error": {"message": "bad key", "type": "invalid_request_error"}}')
            if fault == "malformed":
                return self._send(200, b'{"id": "chatcmpl-test", "choices": [')
            if fault == "empty":
                return self._send(200, json.dumps(_completion("", messages)).encode())
            time.sleep(state.slow_seconds if fault == "slow" else state.answer_delay)
            self._send(200, json.dumps(_completion(answer_for(messages), messages)).encode())

    return Handler


class OpenAITestServer:
    """`with OpenAITestServer() as server:` serves on a free port; `server.base_url` ends in /v1."""

    def __init__(self):
        self.state = ServerState()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "OpenAITestServer":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
