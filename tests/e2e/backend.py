"""A real server process for end-to-end tests: ``python -m tests.e2e.backend LABEL HOST PORT``.

Answers every request with ``LABEL METHOD PATH BODY-LENGTH`` (keep-alive, HTTP/1.1) and
``/health`` with 200 "OK". Runs until killed.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(label: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body_in = self.rfile.read(length) if length else b""
            body = f"{label} {self.command} {self.path} {len(body_in)}\n".encode()
            if self.path == "/health":
                body = b"OK\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Served-By", label)
            self.send_header("X-Seen-XFF", self.headers.get("X-Forwarded-For", "-"))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class Server(ThreadingHTTPServer):
    # The standard library's listen backlog is 5: a burst of new connections from the proxy
    # would wait for SYN retransmits (a second and more) instead of being served.
    request_queue_size = 128


def main() -> None:
    label, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = Server((host, port), make_handler(label))
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
