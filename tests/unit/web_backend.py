"""A small web app for the router's tests and benchmark, run as a process of its own:
``python tests/unit/web_backend.py PORT NAME``. ``/`` answers NAME; ``/slow?s=N`` after
N seconds; ``POST /echo`` its body; ``/count`` how many requests it has served; ``/headers`` the
request's headers as it got them."""

from __future__ import annotations

import http.server
import sys
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served = 0

    def _answer(self, body: bytes, status: int = 200) -> None:
        Handler.served += 1
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen-Request-Id", self.headers.get("X-Request-Id", ""))
        self.send_header("X-Seen-Forwarded-For", self.headers.get("X-Forwarded-For", ""))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/slow":
            time.sleep(float(query.get("s", ["1"])[0]))
        if url.path == "/headers":
            self._answer(str(self.headers).encode())
            return
        if url.path == "/count":
            self._answer(str(Handler.served).encode())
            return
        self._answer(NAME.encode())

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self._answer(self.rfile.read(length))

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    PORT, NAME = int(sys.argv[1]), sys.argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    server.serve_forever()
