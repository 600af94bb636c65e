"""An OpenAI-compatible chat completions server on 127.0.0.1 backed by a local model (SmolLM2-135M-
Instruct through `LocalChatClient`), so the `openai` labeler path (the official SDK, HTTP, retries,
concurrency) is measured end to end with real answers and no network.

    python benchmarks/local_openai_server.py --port 8011     # serves http://127.0.0.1:8011/v1

One generation at a time (a lock around the model): requests the client sends concurrently queue here,
as they would at a single-GPU vLLM or llama.cpp server.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from latent_atlas.labels.llm import LocalChatClient


def make_server(port: int = 0, max_new_tokens: int = 48) -> ThreadingHTTPServer:
    client = LocalChatClient(max_new_tokens=max_new_tokens)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            with lock:
                done = client.complete_many([body.get("messages", [])], int(body.get("max_tokens") or max_new_tokens))[0]
            if done.error:
                return self._send(500, {"error": {"message": done.error, "type": "server_error"}})
            self._send(200, {
                "id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()), "model": client.model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": done.text}}],
                "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                          "total_tokens": done.prompt_tokens + done.completion_tokens}})

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def serve_in_background(port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """(server, base_url) with the server running in a daemon thread; `server.shutdown()` stops it."""
    server = make_server(port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    print(f"serving SmolLM2-135M-Instruct at http://127.0.0.1:{args.port}/v1")
    make_server(args.port).serve_forever()
