"""A real HTTP server on loopback for the HTTP backends' tests: each POST is answered by `respond`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def choices(path: str, n: int, text: Callable[[int, bool], str]) -> list[dict]:
    """N OpenAI choices that finished, chat messages or completion texts by PATH; sample i says text(i, chat)."""
    chat = path.endswith("/chat/completions")
    return [{"index": i, "finish_reason": "stop",
             **({"message": {"role": "assistant", "content": text(i, chat)}} if chat else {"text": text(i, chat)})}
            for i in range(n)]


class JsonServer:
    def respond(self, path: str, body: dict, headers: Any) -> tuple[int, dict[str, str], dict]:
        """(status, response headers, JSON body) for one POST."""
        raise NotImplementedError

    def __init__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, data = server.respond(self.path, json.loads(raw) if raw else {}, self.headers)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data if isinstance(data, bytes) else json.dumps(data).encode())  # bytes: as they are

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> JsonServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> str:
        self.start()
        return self.url

    def __exit__(self, *a) -> None:
        self.close()
